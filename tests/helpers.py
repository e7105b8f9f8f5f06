"""Tiny synthetic FineWeb-format shards for tests: documents of a learnable token sequence."""
from pathlib import Path

import numpy as np

import train_gpt as tg
from data.tokenize_text import write_shard

BOS = 50256


def synthetic_tokens(num_tokens: int, seed: int) -> np.ndarray:
    """Documents start with BOS; inside one, each token follows from the last by a fixed rule with some noise,
    so a model can learn it and its loss falls well below the ln(50304) = 10.8 of a fresh model."""
    rng = np.random.default_rng(seed)
    out = np.empty(num_tokens, dtype=np.int64)
    i = 0
    while i < num_tokens:
        length = int(rng.integers(20, 300))
        doc = [BOS, int(rng.integers(0, 64))]
        for _ in range(length):
            nxt = (doc[-1] * 5 + 3) % 64 if rng.random() < 0.9 else int(rng.integers(0, 64))
            doc.append(nxt)
        n = min(len(doc), num_tokens - i)
        out[i:i + n] = doc[:n]
        i += n
    return out


def make_shards(folder: Path, train_tokens: int = 200_000, val_tokens: int = 20_000, num_train: int = 2):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(num_train):
        write_shard(folder / f"fineweb_train_{k + 1:06d}.bin", synthetic_tokens(train_tokens // num_train, seed=k))
    write_shard(folder / "fineweb_val_000000.bin", synthetic_tokens(val_tokens, seed=1000))
    return str(folder / "fineweb_train_*.bin"), str(folder / "fineweb_val_*.bin")


def gradients(model: tg.GPT) -> dict:
    """Parameter name -> the gradient summed so far: .grad, or for a row table's weight its grad_sum (tg.RowTable),
    which autograd never sees."""
    sums = {f"{name}.weight": m.grad_sum for name, m in model.named_modules() if isinstance(m, tg.RowTable)}
    return {name: sums.get(name, p.grad) for name, p in model.named_parameters()}

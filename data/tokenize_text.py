"""Turn local text into FineWeb-format token shards with the GPT-2 encoding.

    python data/tokenize_text.py corpus/*.jsonl.xz --out_dir data/shards --val_docs 600

Inputs are files or directories (searched recursively, sorted): `.jsonl` holds one document a line in its "text"
field; a `.txt` file is one whole document. Either may be compressed (`.gz`, `.xz`). Documents are taken in input
order, each preceded by <|endoftext|> (50256), and encoded as plain text (a literal "<|endoftext|>" inside a
document is not the special token). Validation documents are split off deterministically: `--val_docs K` takes the
first K documents; `--val_fraction F` takes each document whose sha256 falls in the lowest fraction F, so the choice
depends only on the text, not on the order. Output: {prefix}_val_000000.bin, ... and {prefix}_train_000001.bin, ...,
each full shard holding --shard_tokens tokens (a document may continue in the next shard).

The encoding is tiktoken's `gpt2` when it loads (it downloads once, then caches); without internet, pass
--encoder_json (GPT-2's encoder.json) and the same encoding is built offline.
"""
import argparse
import gzip
import hashlib
import json
import lzma
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python data/tokenize_text.py`: make the `data` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.shards import write_shard

# GPT-2's pre-tokenizer regex (tiktoken's r50k_base / gpt2 pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
TIKTOKEN_TIMEOUT_S = 30


def gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2 writes each byte as a printable character: printable Latin-1 bytes as themselves, the other 68 bytes
    (controls, space, 0x7F-0xA0, 0xAD) as chr(256), chr(257), ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def encoding_from_encoder_json(path):
    """The gpt2 tiktoken encoding built offline: in encoder.json a token's id is also its BPE merge rank."""
    import tiktoken

    byte_of = {c: b for b, c in gpt2_byte_alphabet().items()}
    vocab = json.loads(Path(path).read_text(encoding="utf-8"))
    ranks = {bytes(byte_of[c] for c in token): i for token, i in vocab.items() if token != EOT}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: vocab[EOT]})


def tiktoken_gpt2_or_none():
    """tiktoken's own gpt2 encoding, or None when it cannot load (no internet and no cache) within the timeout."""
    import tiktoken

    result = []
    thread = threading.Thread(target=lambda: result.append(tiktoken.get_encoding("gpt2")), daemon=True)
    thread.start()
    thread.join(TIKTOKEN_TIMEOUT_S)
    return result[0] if result else None


def load_encoding(encoder_json):
    if encoder_json is not None:
        return encoding_from_encoder_json(encoder_json)
    encoding = tiktoken_gpt2_or_none()
    if encoding is None:
        raise SystemExit("error: tiktoken could not load its gpt2 encoding (it downloads it once; no internet?). "
                         "Pass --encoder_json PATH to GPT-2's encoder.json to build the same encoding offline.")
    return encoding


def open_text(path: Path):
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def is_text_file(path: Path) -> bool:
    suffixes = path.suffixes[-2:] if path.suffix in (".gz", ".xz") else path.suffixes[-1:]
    return bool(suffixes) and suffixes[0] in (".txt", ".jsonl")


def expand_inputs(inputs) -> list[Path]:
    files = []
    for name in map(Path, inputs):
        if name.is_dir():
            files += sorted(p for p in name.rglob("*") if p.is_file() and is_text_file(p))
        elif name.is_file() and is_text_file(name):
            files.append(name)
        else:
            raise SystemExit(f"error: {name} is not a directory or a .txt / .jsonl file (optionally .gz / .xz)")
    return files


def documents(files):
    """Yields each document's text, in input order."""
    for path in files:
        with open_text(path) as f:
            if ".jsonl" not in path.suffixes:
                yield f.read()
                continue
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise SystemExit(f"error: {path}:{line_no}: expected a JSON object with a string \"text\" field")
                yield record["text"]


def text_hash_fraction(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


_encoding = None  # set in each worker


def init_worker(encoder_json):
    global _encoding
    _encoding = load_encoding(encoder_json)


def encode_document(text: str) -> tuple[np.ndarray, float]:
    """-> (<|endoftext|> followed by the text's tokens, the text's hash as a fraction in [0, 1))."""
    ids = _encoding.encode_ordinary(text)
    tokens = np.empty(len(ids) + 1, dtype=np.uint16)
    tokens[0] = _encoding.eot_token
    tokens[1:] = ids
    return tokens, text_hash_fraction(text)


def batched(items, n):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class ShardWriter:
    """Collects tokens and writes {prefix}_{split}_{index:06d}.bin each time shard_tokens are collected."""

    def __init__(self, out_dir: Path, prefix: str, split: str, first_index: int, shard_tokens: int):
        self.out_dir, self.prefix, self.split, self.index = out_dir, prefix, split, first_index
        self.buffer = np.empty(shard_tokens, dtype=np.uint16)
        self.filled, self.total, self.paths = 0, 0, []

    def add(self, tokens: np.ndarray):
        while len(tokens):
            n = min(len(tokens), len(self.buffer) - self.filled)
            self.buffer[self.filled:self.filled + n] = tokens[:n]
            self.filled, self.total, tokens = self.filled + n, self.total + n, tokens[n:]
            if self.filled == len(self.buffer):
                self.flush()

    def flush(self):
        if self.filled:
            path = self.out_dir / f"{self.prefix}_{self.split}_{self.index:06d}.bin"
            write_shard(path, self.buffer[:self.filled])
            self.paths.append(path)
            self.index, self.filled = self.index + 1, 0


def tokenize(files, out_dir: Path, encoder_json=None, val_docs=None, val_fraction=None,
             shard_tokens=100_000_000, workers=None, prefix="fineweb") -> dict:
    from tqdm import tqdm

    load_encoding(encoder_json)  # fail here, once, rather than in every worker
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = sorted(out_dir.glob(f"{prefix}_train_*.bin")) + sorted(out_dir.glob(f"{prefix}_val_*.bin"))
    if stale:
        raise SystemExit(f"error: {out_dir} already holds {prefix} shards ({stale[0].name}, ...); "
                         "choose an empty --out_dir or remove them, so old and new shards do not mix")
    val = ShardWriter(out_dir, prefix, "val", 0, shard_tokens)
    train = ShardWriter(out_dir, prefix, "train", 1, shard_tokens)
    n_docs = [0, 0]  # val, train

    def add(results):
        for tokens, fraction in results:
            is_val = sum(n_docs) < val_docs if val_docs is not None else fraction < val_fraction
            (val if is_val else train).add(tokens)
            n_docs[not is_val] += 1
            progress.update(len(tokens))

    with mp.get_context("spawn").Pool(workers, initializer=init_worker, initargs=(encoder_json,)) as pool, \
            tqdm(unit="tok", unit_scale=True, desc="tokenizing") as progress:
        # One batch of documents in flight ahead of the one being written: workers stay busy, memory stays bounded.
        pending = None
        for batch in batched(documents(files), 1024):
            submitted = pool.map_async(encode_document, batch, chunksize=16)
            if pending is not None:
                add(pending.get())
            pending = submitted
        if pending is not None:
            add(pending.get())
    val.flush()
    train.flush()
    return dict(val_shards=val.paths, train_shards=train.paths, val_tokens=val.total, train_tokens=train.total,
                val_docs=n_docs[0], train_docs=n_docs[1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help=".txt / .jsonl files (optionally .gz / .xz) or directories")
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--encoder_json", help="GPT-2's encoder.json: build the gpt2 encoding offline")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val_docs", type=int, help="the first K documents (input order) are validation")
    split.add_argument("--val_fraction", type=float, default=0.01,
                       help="documents whose text hash falls in this lowest fraction are validation (default 0.01)")
    parser.add_argument("--shard_tokens", type=int, default=100_000_000)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    parser.add_argument("--prefix", default="fineweb")
    args = parser.parse_args(argv)
    start = time.time()
    stats = tokenize(expand_inputs(args.inputs), args.out_dir, args.encoder_json, args.val_docs,
                     None if args.val_docs is not None else args.val_fraction, args.shard_tokens, args.workers,
                     args.prefix)
    print(f"{len(stats['val_shards'])} val + {len(stats['train_shards'])} train shards in {args.out_dir}: "
          f"val {stats['val_docs']} docs {stats['val_tokens']} tokens, "
          f"train {stats['train_docs']} docs {stats['train_tokens']} tokens, {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()

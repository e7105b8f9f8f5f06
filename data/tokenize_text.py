"""Turn local text into FineWeb-format token shards with the GPT-2 encoding.

    python data/tokenize_text.py corpus/*.jsonl.xz --out_dir data/text --encoder_json path/to/encoder.json

Inputs are files or directories (searched recursively, sorted): `.jsonl` holds one document a line in its "text"
field; a `.txt` file is one whole document. Either may be compressed (`.gz`, `.xz`). The documents of all inputs
are shuffled together with a fixed seed (`--seed`), so every shard mixes the sources; each is preceded by
<|endoftext|> (50256) and encoded as plain text (a literal "<|endoftext|>" inside a document is not the special
token). Validation is the first whole documents of the shuffled order that together hold at least
`--val_tokens` + 1 tokens (the trainer's last target is one token past its val_tokens); a training document
whose text equals a validation document's is dropped, so no validation text is trained on. Output:
{prefix}_val_000000.bin, ... and {prefix}_train_000001.bin, ..., each full shard holding --shard_tokens tokens
(a document may continue in the next shard). The same inputs, in the same order, and seed give byte-identical
shards whatever the number of workers.

The encoding is tiktoken's `gpt2` when it loads (it downloads once, then caches); without internet, pass
--encoder_json (GPT-2's encoder.json) and the same encoding is built offline.
"""
import argparse
import gzip
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
VAL_TOKENS = 32 * 65_536  # 2,097,152: 32 sequences of the trainer's val_seq_len 65,536
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
    seen = {}
    for path in files:
        if path.resolve() in seen:
            raise SystemExit(f"error: {path} is given twice (also as {seen[path.resolve()]}); its documents would "
                             "be counted twice and could land in both validation and training")
        seen[path.resolve()] = path
    return files


def read_documents(path: Path) -> list[str]:
    """The documents of one input file, in file order."""
    with open_text(path) as f:
        if ".jsonl" not in path.suffixes:
            return [f.read()]
        docs = []
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise SystemExit(f"error: {path}:{line_no}: expected a JSON object with a string \"text\" field")
            docs.append(record["text"])
        return docs


_encoding = None  # set in each worker


def init_worker(encoder_json):
    global _encoding
    _encoding = load_encoding(encoder_json)


def encode_document(text: str) -> np.ndarray:
    """<|endoftext|> followed by the text's tokens."""
    ids = _encoding.encode_ordinary(text)
    tokens = np.empty(len(ids) + 1, dtype=np.uint16)
    tokens[0] = _encoding.eot_token
    tokens[1:] = ids
    return tokens


def validation_count(lengths: list[int], val_tokens: int) -> int:
    """How many leading documents it takes to hold at least val_tokens + 1 tokens; 0 when they never do."""
    reached = np.cumsum(lengths) >= val_tokens + 1
    return int(np.argmax(reached)) + 1 if reached.any() else 0


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


SPLITS = ("val", "train", "dropped")  # dropped: a training document whose text is also a validation document


def tokenize(files, out_dir: Path, encoder_json=None, val_tokens=VAL_TOKENS, seed=0, shard_tokens=100_000_000,
             workers=None, prefix="fineweb") -> dict:
    from tqdm import tqdm

    load_encoding(encoder_json)  # fail here, once, rather than in every worker
    stale = sorted(out_dir.glob(f"{prefix}_train_*.bin")) + sorted(out_dir.glob(f"{prefix}_val_*.bin"))
    if stale:
        raise SystemExit(f"error: {out_dir} already holds {prefix} shards ({stale[0].name}, ...); "
                         "choose an empty --out_dir or remove them, so old and new shards do not mix")
    texts, source = [], []  # source[d]: index in files of document d
    for i, path in enumerate(files):
        docs = read_documents(path)
        texts += docs
        source += [i] * len(docs)
    order = np.random.default_rng(seed).permutation(len(texts))
    # imap keeps the input order whatever the number of workers, so the shards do not depend on it.
    with mp.get_context("spawn").Pool(workers, initializer=init_worker, initargs=(encoder_json,)) as pool, \
            tqdm(total=len(texts), unit="doc", desc="tokenizing") as progress:
        tokens = []
        for doc_tokens in pool.imap(encode_document, (texts[d] for d in order), chunksize=64):
            tokens.append(doc_tokens)
            progress.update()
    n_val = validation_count([len(t) for t in tokens], val_tokens)
    total = sum(len(t) for t in tokens)
    if n_val == 0 or n_val == len(order):
        raise SystemExit(f"error: the inputs hold {len(texts)} documents, {total} tokens: not enough for "
                         f"--val_tokens={val_tokens} + 1 validation tokens in whole documents and any training "
                         "documents besides")
    val_texts = {texts[d] for d in order[:n_val]}
    split_of = ["val"] * n_val + ["dropped" if texts[d] in val_texts else "train" for d in order[n_val:]]
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {"val": ShardWriter(out_dir, prefix, "val", 0, shard_tokens),
               "train": ShardWriter(out_dir, prefix, "train", 1, shard_tokens)}
    per_file = [{"file": str(path), **{f"{s}_{k}": 0 for s in SPLITS for k in ("docs", "tokens")}} for path in files]
    for d, split, doc_tokens in zip(order, split_of, tokens):
        if split in writers:
            writers[split].add(doc_tokens)
        per_file[source[d]][f"{split}_docs"] += 1
        per_file[source[d]][f"{split}_tokens"] += len(doc_tokens)
    for writer in writers.values():
        writer.flush()
    totals = {key: sum(row[key] for row in per_file) for key in per_file[0] if key != "file"}
    return dict(val_shards=writers["val"].paths, train_shards=writers["train"].paths, per_file=per_file, **totals)


def summary(stats: dict) -> str:
    """Documents and tokens per split, per input file and in total."""
    header = ["input"] + [f"{s} {k}" for s in SPLITS for k in ("docs", "tokens")]
    rows = [[row["file"]] + [str(row[f"{s}_{k}"]) for s in SPLITS for k in ("docs", "tokens")]
            for row in stats["per_file"]]
    rows.append(["total"] + [str(stats[f"{s}_{k}"]) for s in SPLITS for k in ("docs", "tokens")])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header] + rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help=".txt / .jsonl files (optionally .gz / .xz) or directories")
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--encoder_json", help="GPT-2's encoder.json: build the gpt2 encoding offline")
    parser.add_argument("--val_tokens", type=int, default=VAL_TOKENS,
                        help=f"validation holds whole documents with at least this + 1 tokens (default {VAL_TOKENS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document shuffle (default 0)")
    parser.add_argument("--shard_tokens", type=int, default=100_000_000)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    parser.add_argument("--prefix", default="fineweb")
    args = parser.parse_args(argv)
    if args.val_tokens < 1 or args.shard_tokens < 1:
        parser.error("--val_tokens and --shard_tokens must be positive")
    start = time.time()
    stats = tokenize(expand_inputs(args.inputs), args.out_dir, args.encoder_json, args.val_tokens, args.seed,
                     args.shard_tokens, args.workers, args.prefix)
    print(summary(stats))
    print(f"{len(stats['val_shards'])} val + {len(stats['train_shards'])} train shards in {args.out_dir} "
          f"(seed {args.seed}, {time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()

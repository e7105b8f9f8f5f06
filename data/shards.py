"""The FineWeb token-shard format: 256 little-endian int32 (magic, version, token count, zeros), then uint16 tokens.

train_gpt.py reads shards with its own reader (the trainer is one self-contained file); this module is what the
tools in data/ use to write and verify them.
"""
import os

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def write_shard(path, tokens) -> None:
    """Write tokens (array-like of ints in [0, 65536)) as one shard; written to a temporary name, then renamed."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError(f"{path}: tokens must fit in uint16, found range [{tokens.min()}, {tokens.max()}]")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, VERSION, tokens.size
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())
    os.replace(tmp, path)


def shard_problem(path) -> str | None:
    """None when path is a complete shard, else what is wrong with it (expected vs found)."""
    if not os.path.isfile(path):
        return "file is missing"
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        return f"truncated: {size} bytes, smaller than the {HEADER_BYTES}-byte header"
    magic, version, n_tokens = np.fromfile(path, dtype="<i4", count=3)
    if magic != MAGIC:
        return f"bad magic: expected {MAGIC}, found {magic} (not a token shard)"
    if version != VERSION:
        return f"wrong version: expected {VERSION}, found {version}"
    expected = HEADER_BYTES + 2 * int(n_tokens)
    if size != expected:
        kind = "truncated" if size < expected else "too long"
        return f"{kind}: header says {n_tokens} tokens = {expected} bytes, file has {size} bytes"
    return None

"""data/tokenize_text.py: the offline GPT-2 encoding (checked on a small synthetic encoder.json) and the pipeline
from .txt / .jsonl (optionally .gz / .xz) files to shards."""
import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data import tokenize_text
from data.shards import HEADER_BYTES, shard_problem
from data.tokenize_text import encoding_from_encoder_json, write_shard

ROOT = Path(__file__).resolve().parents[1]
BOS = 50256


def gpt2_alphabet_chars() -> list[str]:
    """GPT-2's 256 single-byte tokens in id order: printable Latin-1 bytes stand for themselves; the rest are
    shifted to U+0100 onwards, in byte order, and come after them."""
    shown = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    hidden = sorted(set(range(256)) - set(shown))
    return [chr(b) for b in shown] + [chr(0x100 + i) for i in range(len(hidden))]


MERGES = ["he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld"]  # ids 256 .. 264, in merge order


@pytest.fixture
def encoder_json(tmp_path):
    vocab = {c: i for i, c in enumerate(gpt2_alphabet_chars())}
    vocab.update({m: 256 + i for i, m in enumerate(MERGES)})
    vocab["<|endoftext|>"] = BOS
    path = tmp_path / "encoder.json"
    path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return path


def read_tokens(path) -> list[int]:
    assert shard_problem(path) is None
    return np.fromfile(path, dtype="<u2", offset=HEADER_BYTES).tolist()


def test_write_shard_writes_fineweb_format(tmp_path):
    write_shard(tmp_path / "s.bin", [5, BOS, 65535])
    data = (tmp_path / "s.bin").read_bytes()
    assert np.frombuffer(data[:12], dtype="<i4").tolist() == [20240520, 1, 3]
    assert data[12:HEADER_BYTES] == bytes(HEADER_BYTES - 12)
    assert np.frombuffer(data[HEADER_BYTES:], dtype="<u2").tolist() == [5, BOS, 65535]
    with pytest.raises(ValueError, match="uint16"):
        write_shard(tmp_path / "t.bin", [65536])


def test_offline_encoding_uses_gpt2_byte_alphabet_and_merges(encoder_json):
    enc = encoding_from_encoder_json(encoder_json)
    assert enc.encode_ordinary("hello world") == [259, 264]
    # Byte ids that real GPT-2 has too: "!" is 0, "\n" is 198, " " is 220.
    assert enc.encode_ordinary("!") == [0] and enc.encode_ordinary("\n") == [198] and enc.encode_ordinary(" ") == [220]
    assert enc.encode_ordinary("é") == [127, 102]  # UTF-8 c3 a9: both printable, ids 106 + 0xc3 - 0xae, 94 + 8
    assert enc.eot_token == BOS
    assert enc.decode(enc.encode_ordinary("hello wörld\t<|endoftext|>")) == "hello wörld\t<|endoftext|>"


def test_missing_tiktoken_download_asks_for_encoder_json(monkeypatch):
    monkeypatch.setattr(tokenize_text, "tiktoken_gpt2_or_none", lambda: None)
    with pytest.raises(SystemExit, match="--encoder_json"):
        tokenize_text.load_encoding(None)


DOCS = ["hello world", "héllo\nwörld ", "hello hello", "world", "x" * 30, "hello <|endoftext|> world", "ok"]


@pytest.fixture
def corpus(tmp_path):
    """DOCS spread over every input kind, in an order expand_inputs keeps: returns the input arguments."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS[:2])))
    (root / "b.txt").write_text(DOCS[2], encoding="utf-8")
    with lzma.open(root / "c.jsonl.xz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": DOCS[3]}) + "\n\n" + json.dumps({"text": DOCS[4]}) + "\n")
    (root / "notes.md").write_text("not an input")
    with gzip.open(root / "sub" / "d.txt.gz", "wt", encoding="utf-8") as f:
        f.write(DOCS[5])
    (tmp_path / "last.jsonl").write_text(json.dumps({"text": DOCS[6]}) + "\n")
    return [str(root), str(tmp_path / "last.jsonl")]


def expected_stream(encoder_json, docs):
    enc = encoding_from_encoder_json(encoder_json)
    return sum(([BOS] + enc.encode_ordinary(d) for d in docs), [])


def test_tokenize_splits_first_docs_to_val_and_fills_train_shards(tmp_path, encoder_json, corpus):
    out = tmp_path / "out"
    tokenize_text.main([*corpus, "--out_dir", str(out), "--encoder_json", str(encoder_json), "--val_docs", "2",
                        "--shard_tokens", "8", "--workers", "2", "--prefix", "fineweb"])
    assert read_tokens(out / "fineweb_val_000000.bin") == expected_stream(encoder_json, DOCS[:2])[:8]
    val = sum((read_tokens(p) for p in sorted(out.glob("fineweb_val_*.bin"))), [])
    assert val == expected_stream(encoder_json, DOCS[:2])
    train_files = sorted(out.glob("fineweb_train_*.bin"))
    assert train_files[0].name == "fineweb_train_000001.bin" and len(train_files) > 2
    train = [read_tokens(p) for p in train_files]
    assert all(len(t) == 8 for t in train[:-1]) and 0 < len(train[-1]) <= 8
    expected = expected_stream(encoder_json, DOCS[2:])
    assert sum(train, []) == expected
    assert expected.count(BOS) == len(DOCS) - 2  # the literal "<|endoftext|>" in a document stays text
    assert expected[:4] == [BOS, 259, 220, 259]  # "hello hello": no "Ġhello" token, so " " then "hello"


def test_tokenize_val_fraction_depends_only_on_text(tmp_path, encoder_json, corpus):
    runs = []
    for name, inputs in (("fwd", corpus), ("rev", corpus[::-1])):
        out = tmp_path / name
        tokenize_text.main([*inputs, "--out_dir", str(out), "--encoder_json", str(encoder_json),
                            "--val_fraction", "0.5", "--workers", "1", "--prefix", "p"])
        runs.append(read_tokens(out / "p_val_000000.bin"))
    chosen = [d for d in DOCS if tokenize_text.text_hash_fraction(d) < 0.5]
    assert 0 < len(chosen) < len(DOCS)
    assert sorted(runs[0]) == sorted(runs[1]) == sorted(expected_stream(encoder_json, chosen))
    assert runs[0] == expected_stream(encoder_json, chosen)


def test_tokenize_script_runs_from_command_line(tmp_path, encoder_json, corpus):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "data" / "tokenize_text.py"), *corpus, "--out_dir", str(out),
                             "--encoder_json", str(encoder_json), "--val_docs", "1", "--workers", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 val + 1 train shards" in result.stdout
    assert read_tokens(out / "fineweb_train_000001.bin") == expected_stream(encoder_json, DOCS[1:])
    again = subprocess.run([sys.executable, str(ROOT / "data" / "tokenize_text.py"), *corpus, "--out_dir", str(out),
                            "--encoder_json", str(encoder_json)], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already holds fineweb shards" in again.stderr


def test_tokenize_rejects_jsonl_line_without_text(tmp_path, encoder_json):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:2: expected a JSON object with a string \"text\" field"):
        tokenize_text.main([str(tmp_path / "bad.jsonl"), "--out_dir", str(tmp_path / "out"),
                            "--encoder_json", str(encoder_json), "--workers", "1"])

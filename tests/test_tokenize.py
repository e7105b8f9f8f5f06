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


def documents_in(encoder_json, paths) -> list[str]:
    """The documents a run of shards holds, in order: split at each <|endoftext|>, decode each."""
    enc = encoding_from_encoder_json(encoder_json)
    tokens = sum((read_tokens(p) for p in paths), [])
    assert tokens and tokens[0] == BOS
    starts = [i for i, t in enumerate(tokens) if t == BOS] + [len(tokens)]
    return [enc.decode(tokens[a + 1:b]) for a, b in zip(starts, starts[1:])]


def tokenize_to(out, inputs, encoder_json, *options) -> tuple[list[str], list[str]]:
    """Run the tool; -> (validation documents, training documents), each in shard order."""
    tokenize_text.main([*map(str, inputs), "--out_dir", str(out), "--encoder_json", str(encoder_json), *options])
    return (documents_in(encoder_json, sorted(out.glob("fineweb_val_*.bin"))),
            documents_in(encoder_json, sorted(out.glob("fineweb_train_*.bin"))))


def two_sources(tmp_path, n=200) -> list[Path]:
    """Two inputs of n documents each, of varied lengths: a.jsonl holds 'hello a<i> ...', b.jsonl.xz 'world b<i>'."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl.xz"
    a.write_text("".join(json.dumps({"text": f"hello a{i}" + " x" * (i % 7)}) + "\n" for i in range(n)))
    with lzma.open(b, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": f"world b{i}" + "!" * (i % 5)}) + "\n" for i in range(n)))
    return [a, b]


def test_validation_count_takes_whole_documents_up_to_val_tokens_plus_one():
    assert tokenize_text.validation_count([3, 4, 5], 6) == 2  # 3 + 4 = 7 = 6 + 1
    assert tokenize_text.validation_count([3, 4, 5], 7) == 3  # 7 tokens leave no last target for 7 inputs
    assert tokenize_text.validation_count([3, 4, 5], 12) == 0


def test_tokenize_shuffles_documents_of_all_inputs_into_mixed_shards(tmp_path, encoder_json):
    inputs = two_sources(tmp_path)
    val, train = tokenize_to(tmp_path / "out", inputs, encoder_json, "--val_tokens", "60", "--seed", "0",
                             "--shard_tokens", "500", "--workers", "2")
    everything = [f"hello a{i}" + " x" * (i % 7) for i in range(200)] + [f"world b{i}" + "!" * (i % 5)
                                                                         for i in range(200)]
    assert sorted(val + train) == sorted(everything) and not set(val) & set(train)
    assert {d[:5] for d in val} == {"hello", "world"}  # validation draws on both inputs
    first_shard = documents_in(encoder_json, [tmp_path / "out" / "fineweb_train_000001.bin"])
    assert {d[:5] for d in first_shard[1:-1]} == {"hello", "world"}  # so does every training shard
    assert train != sorted(train, key=everything.index)  # not the input order
    again = tokenize_to(tmp_path / "same", inputs, encoder_json, "--val_tokens", "60", "--workers", "1")
    other = tokenize_to(tmp_path / "other", inputs, encoder_json, "--val_tokens", "60", "--seed", "1",
                        "--workers", "1")
    assert again == (val, train) and other[1] != train


def test_validation_is_the_fewest_leading_documents_holding_val_tokens_plus_one(tmp_path, encoder_json):
    out = tmp_path / "out"
    val, train = tokenize_to(out, two_sources(tmp_path), encoder_json, "--val_tokens", "300", "--workers", "1",
                             "--shard_tokens", "128")
    val_tokens = sum((read_tokens(p) for p in sorted(out.glob("fineweb_val_*.bin"))), [])
    last_doc = len(val_tokens) - val_tokens[::-1].index(BOS) - 1
    assert len(val_tokens) >= 301 and last_doc < 301  # without its last document it would fall short
    assert sorted(out.glob("fineweb_val_*.bin"))[-1].name == f"fineweb_val_{len(val_tokens) // 128:06d}.bin"


def test_training_copies_of_a_validation_document_are_dropped(tmp_path, encoder_json):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["same"] * 5 + ["hello"] * 5))
    chosen = set()
    for seed in range(4):
        val, train = tokenize_to(tmp_path / str(seed), [tmp_path / "a.jsonl"], encoder_json, "--val_tokens", "1",
                                 "--seed", str(seed), "--workers", "1")
        assert len(val) == 1 and train == ["same" if val == ["hello"] else "hello"] * 5
        chosen.add(val[0])
    assert chosen == {"same", "hello"}  # both ways round were checked


def test_shards_are_identical_for_any_worker_count(tmp_path, encoder_json):
    # Documents of very different lengths: workers finish their batches out of order.
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"hello {i}" + " world" * (i % 9) ** 4}) + "\n"
                                              for i in range(1500)))
    inputs = [tmp_path / "a.jsonl"]
    runs = []
    for workers in ("1", "3"):
        out = tmp_path / workers
        tokenize_text.main([*map(str, inputs), "--out_dir", str(out), "--encoder_json", str(encoder_json),
                            "--val_tokens", "200", "--shard_tokens", "100000", "--workers", workers])
        runs.append({p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))})
    assert len(runs[0]) > 3 and runs[0] == runs[1]


def test_tokenize_refuses_a_corpus_too_small_for_validation_and_writes_nothing(tmp_path, encoder_json):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello"}) + "\n" + json.dumps({"text": "world"}) + "\n")
    with pytest.raises(SystemExit, match="2 documents, 6 tokens: not enough for --val_tokens=3"):
        tokenize_to(tmp_path / "out", [tmp_path / "a.jsonl"], encoder_json, "--val_tokens", "3", "--workers", "1")
    assert not (tmp_path / "out").exists()


def test_tokenize_refuses_an_input_given_twice(tmp_path, encoder_json, corpus):
    with pytest.raises(SystemExit, match="last.jsonl is given twice"):
        tokenize_text.main([*corpus, corpus[1], "--out_dir", str(tmp_path / "out")])


def test_tokenize_script_reads_every_input_kind_and_prints_a_summary(tmp_path, encoder_json, corpus):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "data" / "tokenize_text.py"), *corpus, "--out_dir", str(out),
                             "--encoder_json", str(encoder_json), "--val_tokens", "1", "--workers", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    val = documents_in(encoder_json, [out / "fineweb_val_000000.bin"])
    train = documents_in(encoder_json, [out / "fineweb_train_000001.bin"])
    assert len(val) == 1 and sorted(val + train) == sorted(DOCS)  # the literal "<|endoftext|>" stays text
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["input"] + [w for s in ("val", "train", "dropped") for k in ("docs", "tokens")
                                            for w in (s, k)]
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in lines[1:-1]}
    assert rows[str(Path(corpus[0]) / "a.jsonl")][0:3:2] in ([1, 1], [0, 2])  # a.jsonl's 2 documents: val + train
    assert rows["total"][:4] == [1, len(read_tokens(out / "fineweb_val_000000.bin")), len(DOCS) - 1,
                                 len(read_tokens(out / "fineweb_train_000001.bin"))]
    assert lines[-1].startswith(f"1 val + 1 train shards in {out} (seed 0")
    again = subprocess.run([sys.executable, str(ROOT / "data" / "tokenize_text.py"), *corpus, "--out_dir", str(out),
                            "--encoder_json", str(encoder_json)], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already holds fineweb shards" in again.stderr


def test_tokenize_rejects_jsonl_line_without_text(tmp_path, encoder_json):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:2: expected a JSON object with a string \"text\" field"):
        tokenize_text.main([str(tmp_path / "bad.jsonl"), "--out_dir", str(tmp_path / "out"),
                            "--encoder_json", str(encoder_json), "--workers", "1"])

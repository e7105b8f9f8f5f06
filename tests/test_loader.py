"""Shard reader, TrainLoader and val_batches of train_gpt.py on tiny shards written here."""
import numpy as np
import pytest
import torch

from data.tokenize_text import write_shard
from train_gpt import BOS_ID, Hyperparameters, TrainLoader, doc_max_at, read_shard, read_val_tokens, val_batches


def make_shards(tmp_path, n_shards=3, n_tokens=400, split="train", seed=0):
    """Shards of random documents (BOS then 1..40 tokens); -> the concatenated tokens, in file order."""
    rng = np.random.default_rng(seed)
    all_tokens = []
    for i in range(n_shards):
        docs = [np.concatenate([[BOS_ID], rng.integers(0, 50000, rng.integers(1, 40))]) for _ in range(n_tokens)]
        tokens = np.concatenate(docs)[:n_tokens]
        write_shard(tmp_path / f"fineweb_{split}_{i + int(split == 'train'):06d}.bin", tokens)
        all_tokens.append(tokens)
    return np.concatenate(all_tokens)


def reference_cut(stream, seq_lens, align, num_slices=8):
    """The cut written out plainly on the (repeated) token stream: per step, num_slices slices of seq_len + 1."""
    stream = np.tile(stream, 20)
    steps, cursor = [], 0
    for seq_len in seq_lens:
        step = []
        for _ in range(num_slices):
            if align:
                cursor += int(np.argmax(stream[cursor:] == BOS_ID))
            step.append(stream[cursor:cursor + seq_len + 1])
            cursor += seq_len
        steps.append(step)
    return steps


def reference_truncated_cut(stream, shapes, num_slices=8):
    """The cut with documents truncated, written out plainly: per step (seq_len, doc_max), each slice gathers the
    first doc_max tokens of one document after another; the next slice starts at the first BOS at or after its
    last target."""
    stream = np.tile(stream, 20).tolist()
    out, cursor = [], 0
    for seq_len, doc_max in shapes:
        step = []
        for _ in range(num_slices):
            cursor = stream.index(BOS_ID, cursor)
            positions = []
            while len(positions) < seq_len + 1:
                doc_end = stream.index(BOS_ID, cursor + 1)
                positions += range(cursor, min(doc_end, cursor + doc_max))
                cursor = doc_end
            positions = positions[:seq_len + 1]
            step.append([stream[p] for p in positions])
            cursor = positions[-1]
        out.append(step)
    return out


def pattern(tmp_path, split="train"):
    return str(tmp_path / f"fineweb_{split}_*.bin")


def test_read_shard_returns_tokens(tmp_path):
    write_shard(tmp_path / "a.bin", [1, 2, 65535, BOS_ID])
    tokens = read_shard(tmp_path / "a.bin")
    assert tokens.dtype == torch.uint16 and tokens.to(torch.int32).tolist() == [1, 2, 65535, BOS_ID]


def corrupt(tmp_path, offset, value):
    path = tmp_path / "fineweb_train_000001.bin"
    write_shard(path, range(100))
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = value.to_bytes(4, "little")
    path.write_bytes(data)
    return path


def test_read_shard_rejects_bad_magic(tmp_path):
    path = corrupt(tmp_path, 0, 1234)
    with pytest.raises(ValueError, match="bad magic: expected 20240520, found 1234") as e:
        read_shard(path)
    assert str(path) in str(e.value)


def test_read_shard_rejects_wrong_version(tmp_path):
    path = corrupt(tmp_path, 4, 7)
    with pytest.raises(ValueError, match="wrong version: expected 1, found 7") as e:
        read_shard(path)
    assert str(path) in str(e.value)


def test_read_shard_rejects_truncated(tmp_path):
    path = tmp_path / "fineweb_train_000001.bin"
    write_shard(path, range(100))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated: header says 100 tokens, so expected 1224 bytes, found 1222") as e:
        read_shard(path)
    assert str(path) in str(e.value)
    path.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="truncated: expected a 1024-byte header, found 10 bytes"):
        read_shard(path)


def test_read_shard_rejects_too_long(tmp_path):
    path = corrupt(tmp_path, 8, 99)
    with pytest.raises(ValueError, match="too long: header says 99 tokens") as e:
        read_shard(path)
    assert str(path) in str(e.value)


def test_read_shard_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing") as e:
        read_shard(tmp_path / "nope.bin")
    assert "nope.bin" in str(e.value)


def test_loaders_name_the_download_command_when_no_files_match(tmp_path):
    for make in (lambda: TrainLoader(pattern(tmp_path), 0, 1), lambda: read_val_tokens(pattern(tmp_path, "val"), 8)):
        with pytest.raises(FileNotFoundError) as e:
            make()
        assert "fineweb_" in str(e.value) and "python data/cached_fineweb10B.py 9" in str(e.value)
        assert "data/tokenize_text.py" in str(e.value)


@pytest.mark.parametrize("align", [True, False])
def test_train_loader_matches_reference_cut(tmp_path, align):
    stream = make_shards(tmp_path)
    loader = TrainLoader(pattern(tmp_path), 0, 1, align_to_bos=align)
    for step in reference_cut(stream, [50] * 6, align=align):
        batch = loader.next_batch(50)
        assert len(batch) == 8
        for (inputs, targets), expected in zip(batch, step):
            assert inputs.dtype == torch.int32 and targets.dtype == torch.int64
            assert inputs.shape == targets.shape == (50,)
            assert inputs.tolist() == expected[:-1].tolist() and targets.tolist() == expected[1:].tolist()


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_train_loader_ranks_split_the_eight_slice_cut(tmp_path, world_size):
    make_shards(tmp_path)
    full = TrainLoader(pattern(tmp_path), 0, 1)
    ranks = [TrainLoader(pattern(tmp_path), r, world_size) for r in range(world_size)]
    for _ in range(5):
        expected = [inputs.tolist() for inputs, _ in full.next_batch(40)]
        per_rank = [[inputs.tolist() for inputs, _ in loader.next_batch(40)] for loader in ranks]
        assert all(len(slices) == 8 // world_size for slices in per_rank)
        assert sum(per_rank, []) == expected


def test_train_loader_slices_start_at_bos(tmp_path):
    stream = make_shards(tmp_path)
    loader = TrainLoader(pattern(tmp_path), 0, 1)
    starts = []
    for _ in range(10):
        starts += [inputs[0].item() for inputs, _ in loader.next_batch(30)]
    assert starts == [BOS_ID] * 80
    # Not aligned, most slices would start elsewhere: the check above is not vacuous.
    assert (stream[::30] != BOS_ID).mean() > 0.5


def test_train_loader_wraps_around_to_first_shard(tmp_path):
    stream = make_shards(tmp_path, n_shards=2, n_tokens=100)
    loader = TrainLoader(pattern(tmp_path), 0, 1, align_to_bos=False)
    assert loader.epoch == 0
    loader.next_batch(20)  # tokens 0 .. 160
    assert loader.epoch == 0
    inputs = torch.cat([inputs for inputs, _ in loader.next_batch(20)])  # tokens 160 .. 320 of the 200-token stream
    assert inputs.tolist() == np.concatenate([stream[160:], stream[:120]]).tolist()
    assert loader.epoch == 1


def test_train_loader_seq_len_change_stays_deterministic_with_prefetch(tmp_path):
    stream = make_shards(tmp_path)
    seq_lens = [16, 16, 48, 48, 8, 16, 16]
    prefetching = TrainLoader(pattern(tmp_path), 1, 2)
    prefetching.prefetch = True
    plain = TrainLoader(pattern(tmp_path), 1, 2)
    for seq_len in seq_lens:
        a, b = prefetching.next_batch(seq_len), plain.next_batch(seq_len)
        assert [x.tolist() for pair in a for x in pair] == [x.tolist() for pair in b for x in pair]
        assert all(len(inputs) == seq_len for inputs, _ in a)
    assert prefetching.pending is not None and prefetching.pending[0] == (seq_lens[-1], 0)
    loader = TrainLoader(pattern(tmp_path), 0, 1)
    loader.prefetch = True
    for expected, seq_len in zip(reference_cut(stream, seq_lens, align=True), seq_lens):
        assert [inputs.tolist() for inputs, _ in loader.next_batch(seq_len)] == [s[:-1].tolist() for s in expected]


def val_tokens_seen(tmp_path, world_size, val_tokens=96, val_seq_len=8):
    """-> {sequence index: inputs + last target} over all ranks."""
    seen = {}
    for rank in range(world_size):
        tokens = read_val_tokens(pattern(tmp_path, "val"), val_tokens)
        for j, (inputs, targets) in enumerate(val_batches(tokens, val_seq_len, rank, world_size, "cpu")):
            assert inputs.dtype == torch.int32 and targets.dtype == torch.int64
            assert inputs[1:].tolist() == targets[:-1].tolist()
            seen[rank + j * world_size] = inputs.tolist() + targets[-1:].tolist()
    return seen


def test_val_batches_same_tokens_for_every_world_size(tmp_path):
    stream = make_shards(tmp_path, n_shards=2, n_tokens=60, split="val")  # 96 + 1 tokens span both shards
    expected = {i: stream[8 * i:8 * i + 9].tolist() for i in range(12)}
    for world_size in (1, 2, 4):
        assert val_tokens_seen(tmp_path, world_size) == expected
    assert val_tokens_seen(tmp_path, 4) == expected  # and again: nothing depends on earlier calls


def test_val_batches_eight_ranks(tmp_path):
    stream = make_shards(tmp_path, n_shards=1, n_tokens=200, split="val")
    seen = val_tokens_seen(tmp_path, 8, val_tokens=128, val_seq_len=16)
    assert seen == {i: stream[16 * i:16 * i + 17].tolist() for i in range(8)}


def test_validation_tokens_reject_too_few_tokens(tmp_path):
    make_shards(tmp_path, n_shards=1, n_tokens=100, split="val")
    with pytest.raises(ValueError, match="hold 100 tokens, fewer than --val_tokens=100 \\+ 1") as e:
        read_val_tokens(pattern(tmp_path, "val"), 100)
    assert "fineweb_val_000000.bin" in str(e.value)


def test_token_ids_beyond_the_vocabulary_name_the_shard(tmp_path):
    write_shard(tmp_path / "fineweb_val_000000.bin", [1, 2, 50303, 50304, 7])
    write_shard(tmp_path / "fineweb_train_000001.bin", [BOS_ID, 60000] * 50)
    with pytest.raises(ValueError, match="fineweb_val_000000.bin: holds token id 50304, not below --vocab_size=50304"):
        read_val_tokens(pattern(tmp_path, "val"), 4, vocab_size=50304)
    assert read_val_tokens(pattern(tmp_path, "val"), 4, vocab_size=50305).tolist() == [1, 2, 50303, 50304, 7]
    with pytest.raises(ValueError, match="fineweb_train_000001.bin: holds token id 60000"):
        TrainLoader(pattern(tmp_path), 0, 1, vocab_size=50304)


@pytest.mark.parametrize("align, doc_max", [(True, 0), (False, 0), (True, 5)])
def test_train_loader_resumes_from_state_dict(tmp_path, align, doc_max):
    make_shards(tmp_path, n_shards=3, n_tokens=150)
    loader = TrainLoader(pattern(tmp_path), 1, 4, align_to_bos=align)
    loader.prefetch = True
    for _ in range(3):
        loader.next_batch(24, doc_max)
    state = loader.state_dict()
    expected = [[x.tolist() for pair in loader.next_batch(24, doc_max) for x in pair] for _ in range(6)]  # wraps
    resumed = TrainLoader(pattern(tmp_path), 1, 4, align_to_bos=align)
    resumed.load_state_dict(state)
    assert [[x.tolist() for pair in resumed.next_batch(24, doc_max) for x in pair] for _ in range(6)] == expected
    assert resumed.epoch == loader.epoch >= 2


def shard_variants(tmp_path) -> dict:
    """name -> path of a shard that is whole, or damaged in one way."""
    good = tmp_path / "good.bin"
    write_shard(good, range(100))
    data = good.read_bytes()
    variants = {"good": data, "bad magic": (1234).to_bytes(4, "little") + data[4:],
                "wrong version": data[:4] + (7).to_bytes(4, "little") + data[8:], "truncated": data[:-2],
                "header cut": data[:10], "too long": data + b"\0\0"}
    paths = {}
    for name, content in variants.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.bin"
        paths[name].write_bytes(content)
    paths["missing"] = tmp_path / "missing.bin"
    return paths


def test_both_shard_readers_give_the_same_verdict_on_each_damaged_shard(tmp_path):
    """train_gpt.py reads shards with its own reader and data/shards.py with another (kept apart on purpose):
    they must agree on what is whole and name the same fault."""
    from data.shards import shard_problem
    words = {"bad magic": "bad magic", "wrong version": "wrong version", "truncated": "truncated",
             "header cut": "truncated", "too long": "too long", "missing": "missing"}
    for name, path in shard_variants(tmp_path).items():
        problem = shard_problem(path)
        if name == "good":
            assert problem is None and read_shard(path).tolist() == list(range(100))
            continue
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            read_shard(path)
        assert words[name] in str(e.value) and words[name] in problem, (name, str(e.value), problem)


def test_truncated_documents_keep_their_first_doc_max_tokens(tmp_path):
    B = BOS_ID
    docs = [[B, 1, 2, 3, 4, 5], [B, 6], [B, 7, 8, 9, 10], [B, 11, 12], [B, 13, 14, 15, 16, 17], [B, 18]]
    write_shard(tmp_path / "fineweb_train_000001.bin", sum(docs, []))
    loader = TrainLoader(pattern(tmp_path), 0, 1, num_slices=2)
    # 6 tokens a slice, 3 a document; the second slice starts at the first one's last target, a BOS
    assert [(inputs.tolist(), targets.tolist()) for inputs, targets in loader.next_batch(5, 3)] == [
        ([B, 1, 2, B, 6], [1, 2, B, 6, B]), ([B, 7, 8, B, 11], [7, 8, B, 11, 12])]
    assert [inputs.tolist() + targets[-1:].tolist() for inputs, targets in loader.next_batch(5, 3)] == [
        [B, 13, 14, B, 18, B], [B, 1, 2, B, 6, B]]  # after the last target 12, the next BOS; then wraps around
    whole = TrainLoader(pattern(tmp_path), 0, 1, num_slices=2)
    assert [inputs.tolist() + targets[-1:].tolist() for inputs, targets in whole.next_batch(5)] == [
        [B, 1, 2, 3, 4, 5], [B, 6, B, 7, 8, 9]]


@pytest.mark.parametrize("world_size", [1, 2, 8])
def test_train_loader_truncates_documents_as_the_plain_reference_does(tmp_path, world_size):
    stream = make_shards(tmp_path)  # documents of 2 to 40 tokens, 400 a shard: slices cross shards and wrap
    shapes = [(30, 7), (30, 7), (60, 7), (60, 12), (20, 12), (30, 1), (30, 7)]
    loaders = [TrainLoader(pattern(tmp_path), r, world_size) for r in range(world_size)]
    loaders[-1].prefetch = True
    for shape, expected in zip(shapes, reference_truncated_cut(stream, shapes)):
        got = [inputs.tolist() + targets[-1:].tolist() for loader in loaders
               for inputs, targets in loader.next_batch(*shape)]
        assert got == expected
    assert loaders[0].epoch >= 1


def test_no_document_cap_by_default_and_a_cap_above_every_document_cuts_nothing(tmp_path):
    hp = Hyperparameters(num_iterations=6)
    assert hp.doc_max_tokens == "" and [doc_max_at(step, hp) for step in range(7)] == [0] * 7
    stream = make_shards(tmp_path)
    capped, default = TrainLoader(pattern(tmp_path), 0, 1), TrainLoader(pattern(tmp_path), 0, 1)
    for step in reference_cut(stream, [50] * 6, align=True):
        expected = [s.tolist() for s in step]
        assert [inputs.tolist() + targets[-1:].tolist() for inputs, targets in default.next_batch(50)] == expected
        assert [inputs.tolist() + targets[-1:].tolist() for inputs, targets in capped.next_batch(50, 41)] == expected


def test_document_cap_follows_the_batch_stages():
    hp = Hyperparameters(seq_lens="128,256,256", doc_max_tokens="32,64,96", lr_stage_muls="1,1,1", num_iterations=6)
    assert [doc_max_at(step, hp) for step in range(7)] == [32, 32, 64, 64, 96, 96, 96]

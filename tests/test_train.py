import gzip
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_gpt as tg
from records.logfile import extract_source, parse_log
from tests.helpers import make_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards"))


def tiny_args(shards, tmp_path, run_id, *extra):
    train, val = shards
    return ["--preset=tiny", f"--train_files={train}", f"--val_files={val}", f"--log_dir={tmp_path}",
            f"--checkpoint_dir={tmp_path}", f"--run_id={run_id}", *extra]


def val_losses(log: Path) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^step:(\d+)/\d+ val_loss:(\S+)", log.read_text(), re.M)}


def test_log_states_the_seconds_from_launch_to_the_first_timed_step(shards, tmp_path, monkeypatch):
    """One line, after the warm-up and before the first step (or the benchmark's table), counted from
    train_gpt.LAUNCHED: here set 100 s back, so a count from anything later (the warm-up's start, main's) fails.
    The start-up's parts: `built` (with the imports' seconds, here set to 50, the model's and the optimizers')
    before the warm-up, then a line per warm-up, the validation's compile last."""
    now = tg.time.perf_counter()
    monkeypatch.setattr(tg, "LAUNCHED", now - 100)
    monkeypatch.setattr(tg, "IMPORTED", now - 50)
    for run_id, extra, first in [("ready", "--num_iterations=2", "step:1/2 "),
                                 ("ready_bench", "--bench_steps=2", "info:bench ")]:
        assert tg.main(tiny_args(shards, tmp_path, run_id, extra)) == 0
        lines = (tmp_path / f"{run_id}.txt").read_text().splitlines()
        ready = [i for i, line in enumerate(lines) if line.startswith("info:ready seconds_since_launch:")]
        assert len(ready) == 1, run_id
        assert 100 <= float(lines[ready[0]].split(":")[-1]) < 400
        last_warmup = max(i for i, line in enumerate(lines) if line.startswith("info:warmup "))
        assert last_warmup < ready[0] < min(i for i, line in enumerate(lines) if line.startswith(first))
        built = [i for i, line in enumerate(lines) if line.startswith("info:built seconds_since_launch:")]
        assert len(built) == 1
        parts = re.fullmatch(r"info:built seconds_since_launch:(\S+) imports:(\S+) model:(\S+) optimizers:(\S+)",
                             lines[built[0]])
        since, imports, model, optimizers = map(float, parts.groups())
        assert 100 <= since < 400 and imports == 50  # one decimal: a fast build logs 100.0
        assert imports + model + optimizers <= since + 0.25  # four numbers rounded to 0.1
        assert built[0] < min(i for i, line in enumerate(lines) if line.startswith("info:warmup "))
        assert lines[last_warmup].startswith("info:warmup val_seq_len:512 seconds:")  # the validation's compile


def test_readme_states_the_record_presets_steps_and_tokens():
    """README's count of the record preset's steps and tokens is the preset's: each step takes slices_per_step slices
    of its stage's seq_len."""
    hp = tg.parse_args([])
    tokens = sum(hp.slices_per_step * tg.seq_len_at(step, hp) for step in range(hp.num_iterations))
    stated = re.search(r"The preset trains \*\*(\d+) steps \((\d+)M tokens\)\*\*", (ROOT / "README.md").read_text())
    assert stated and (int(stated[1]), int(stated[2])) == (hp.num_iterations, round(tokens / 1e6))


def test_tiny_preset_loss_falls(shards, tmp_path):
    assert tg.main(tiny_args(shards, tmp_path, "fall", "--num_iterations=30")) == 0
    losses = val_losses(tmp_path / "fall.txt")
    assert losses[0] > 10.0 and losses[30] < 5.0, losses
    text = (tmp_path / "fall.txt").read_text()
    assert re.search(r"^final_val_loss:\S+ train_time:\d+ms steps:30 peak_memory:\d+MiB tokens_seen:30720$",
                     text, re.M)
    assert not re.search(r"^info:val_at_train_windows", text, re.M)  # tiny validates at its last stage's windows


def val_loss_reading_windows(monkeypatch):
    """Validation losses plus the windows and the attention scale's gain: the tiny model's own loss moves by ~1e-5
    between windows, under the log's 4 decimals, so a loss taken at the wrong windows or YaRN state would pass."""
    forward = tg.GPT.forward

    def reading(self, inputs, targets, windows, mtp_weights=None):
        loss = forward(self, inputs, targets, windows, mtp_weights)
        if torch.is_grad_enabled():
            return loss
        return loss + windows["S"] / 1000 + windows["L"] / 100 + self.rotary.attn_scale_gain

    monkeypatch.setattr(tg.GPT, "forward", reading)


def test_final_validation_at_longer_windows_also_logs_the_loss_at_the_last_training_windows(shards, tmp_path,
                                                                                            monkeypatch):
    """--val_window_blocks=2:3 validates the final weights at longer windows than tiny's last stage (1:2), with
    YaRN stretched once more; after the summary, whose value stays that validation's, an info line gives the same
    weights' loss at the last training step's windows and YaRN state."""
    val_loss_reading_windows(monkeypatch)
    args = tiny_args(shards, tmp_path, "both", "--num_iterations=2", "--val_every=0", "--val_window_blocks=2:3",
                     "--save_checkpoint=true")
    assert tg.main(args) == 0
    lines = (tmp_path / "both.txt").read_text().splitlines()
    summary = [i for i, line in enumerate(lines) if line.startswith("final_val_loss:")]
    assert len(summary) == 1 and parse_log(tmp_path / "both.txt").status == "complete"
    at_train = re.fullmatch(r"info:val_at_train_windows val_loss:([\d.]+) window_blocks:1:2", lines[summary[0] + 1])
    assert at_train, lines[summary[0] + 1:]
    hp = tg.parse_args(args)
    model = tg.GPT(hp)
    model.load_state_dict(torch.load(tmp_path / "both_final.pt", weights_only=False)["model"])
    val_tokens = tg.read_val_tokens(hp.val_files, hp.val_tokens, hp.vocab_size)
    final, last_step = (tg.evaluate(model, model, val_tokens, step, hp, 0, 1, torch.device("cpu"))
                        for step in (hp.num_iterations, hp.num_iterations - 1))
    assert final - last_step > 1  # windows of 2:3 blocks, not 1:2: 1.41 more, and the gain grows too
    assert lines[summary[0]].startswith(f"final_val_loss:{final:.4f} ")
    assert at_train[1] == f"{last_step:.4f}"


def test_final_validation_at_the_last_stages_windows_logs_no_second_loss(shards, tmp_path):
    assert tg.main(tiny_args(shards, tmp_path, "same", "--num_iterations=1", "--val_window_blocks=1:2")) == 0
    text = (tmp_path / "same.txt").read_text()
    assert re.search(r"^final_val_loss:", text, re.M) and not re.search(r"^info:val_at_train_windows", text, re.M)


def test_log_starts_with_exact_source_and_its_sha256(shards, tmp_path):
    assert tg.main(tiny_args(shards, tmp_path, "src", "--num_iterations=2")) == 0
    data = (tmp_path / "src.txt").read_bytes()
    source = (ROOT / "train_gpt.py").read_bytes()
    header = f"==== train_gpt.py source begin sha256:{hashlib.sha256(source).hexdigest()} bytes:{len(source)} ====\n"
    assert data.startswith(header.encode() + source + b"\n==== train_gpt.py source end ====\n")
    text = data.decode()
    for key in ("run_id:src", "world_size:1", "gpu:cpu", "hparam:num_iterations=2", "hparam:model_dim=64"):
        assert f"\n{key}\n" in text
    assert re.search(r"^step:2/2 train_loss:[\d.]+ train_time:\d+ms step_avg:[\d.]+ms$", text, re.M)
    # the records tools read it back: the exact source, and a complete run
    assert extract_source(tmp_path / "src.txt") == source
    assert parse_log(tmp_path / "src.txt").status == "complete"


def test_world_size_that_does_not_fit_is_rejected():
    hp = tg.parse_args(["--preset=tiny"])
    with pytest.raises(ValueError, match="world size 3 does not fit: a step is --slices_per_step=8"):
        tg.check_world_size(hp, 3)
    hp = tg.parse_args(["--preset=tiny", "--val_tokens=1536"])
    with pytest.raises(ValueError, match="--val_tokens=1536 / --val_seq_len=512 = 3 sequences"):
        tg.check_world_size(hp, 2)
    tg.check_world_size(tg.parse_args(["--preset=tiny"]), 4)  # 8 slices and 4 validation sequences split


def test_main_checks_the_world_size_before_training(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(tg, "init_distributed", lambda: (0, 3, tg.torch.device("cpu")))
    monkeypatch.setattr(tg, "train", lambda *a: pytest.fail("train ran with a world size that does not fit"))
    assert tg.main(tiny_args(shards, tmp_path, "ws3")) == 1
    assert (tmp_path / "ws3.txt").read_text().splitlines()[-1].startswith("error:world size 3 does not fit")


@pytest.mark.parametrize("flag, off", [("fp8_head", "the bf16 head"), ("fp8_mlp", "the bf16 MLP")])
def test_fp8_on_a_cpu_is_refused_before_training(shards, tmp_path, monkeypatch, flag, off):
    monkeypatch.setattr(tg, "train", lambda *a: pytest.fail(f"train ran with --{flag} on a CPU"))
    assert tg.main(tiny_args(shards, tmp_path, "fp8cpu", f"--{flag}=true")) == 1
    assert (tmp_path / "fp8cpu.txt").read_text().splitlines()[-1] == (
        f"error:--{flag}=True needs a CUDA GPU of compute capability 8.9 or newer (FP8 tensor cores); "
        f"this run's device has a CPU (--{flag}=false: {off})")


def test_the_record_preset_on_a_cpu_is_refused_once_for_both_fp8_flags():
    with pytest.raises(ValueError) as refusal:
        tg.check_device(tg.parse_args([]), tg.torch.device("cpu"))
    assert str(refusal.value) == (
        "--fp8_head=True and --fp8_mlp=True need a CUDA GPU of compute capability 8.9 or newer (FP8 tensor cores); "
        "this run's device has a CPU (--fp8_head=false --fp8_mlp=false: the bf16 head and the bf16 MLP)")


@pytest.mark.parametrize("flag", ["fp8_head", "fp8_mlp"])
@pytest.mark.parametrize("capability, refused", [((8, 0), True), ((8, 6), True), ((8, 9), False), ((9, 0), False)])
def test_fp8_needs_compute_capability_8_9(capability, refused, flag, monkeypatch):
    monkeypatch.setattr(tg, "on_gpu", lambda device: True)
    monkeypatch.setattr(tg.torch.cuda, "get_device_capability", lambda device: capability)
    hp = tg.parse_args(["--preset=tiny", f"--{flag}=true"])
    if refused:
        found = rf"has compute capability {capability[0]}\.{capability[1]}"
        with pytest.raises(ValueError, match=rf"--{flag}=True .* {found}"):
            tg.check_device(hp, tg.torch.device("cuda", 0))
    else:
        tg.check_device(hp, tg.torch.device("cuda", 0))
    tg.check_device(tg.parse_args(["--preset=tiny"]), tg.torch.device("cpu"))  # off: any device


class ModelBuilt(Exception):
    pass


def test_train_builds_the_model_with_its_micro_steps(shards, tmp_path, monkeypatch):
    """The FP8 head's gradient scale counts the micro-steps: 8 slices a step on one rank are 8 of them."""
    def stop(model, *args):
        raise ModelBuilt(model.micro_steps)

    monkeypatch.setattr(tg, "build_optimizers", stop)
    with pytest.raises(ModelBuilt) as built:
        tg.main(tiny_args(shards, tmp_path, "micro"))
    assert built.value.args == (8,)


def test_missing_shards_name_the_download_command(tmp_path):
    args = ["--preset=tiny", f"--train_files={tmp_path}/none_*.bin", f"--log_dir={tmp_path}", "--run_id=missing"]
    assert tg.main(args) == 1
    assert "cached_fineweb10B.py" in (tmp_path / "missing.txt").read_text().splitlines()[-1]


def test_non_finite_loss_stops_the_run_with_a_message(shards, tmp_path):
    assert tg.main(tiny_args(shards, tmp_path, "nan", "--adam_scalar_lr=inf", "--num_iterations=20")) == 1
    last = (tmp_path / "nan.txt").read_text().splitlines()[-1]
    assert last.startswith("error:non-finite") and "step" in last


@pytest.mark.parametrize("save_step, model_flags",
                         [(4, ["--val_window_blocks=1:3"]), (3, ["--adam_every=1", "--rope=plain", "--key_offset=false"]),
                          (4, ["--doc_max_tokens=48"])])
def test_resume_from_checkpoint_continues_exactly(shards, tmp_path, save_step, model_flags):
    """With half_yarn (the record's and tiny's), the checkpoint at step 4 falls a step after tiny's long window grew
    (step 3): the resumed run must stretch the frequencies and grow the attention scale that no checkpoint stores.
    Adam steps on odd steps (--adam_every=2), so a checkpoint falls on an even count of steps."""
    assert tg.main(tiny_args(shards, tmp_path, "full", "--num_iterations=6", f"--save_every={save_step}",
                             *model_flags)) == 0
    ckpt = tmp_path / f"full_step{save_step}.pt"
    assert ckpt.exists()
    assert tg.main(tiny_args(shards, tmp_path, "resumed", "--num_iterations=6", f"--resume={ckpt}", *model_flags)) == 0
    full, resumed = val_losses(tmp_path / "full.txt"), val_losses(tmp_path / "resumed.txt")
    assert resumed[6] == pytest.approx(full[6], abs=1e-6)
    # the resumed log carries the first segment's train time: its total is the whole run's
    first, second = parse_log(tmp_path / "full.txt"), parse_log(tmp_path / "resumed.txt")
    carried = next(s.train_time_ms for s in first.steps if s.step == save_step)
    assert second.resume_step == save_step and second.resume_train_time_ms == pytest.approx(carried, abs=1)
    assert second.status == "complete" and second.final.train_time_ms > carried
    assert second.final.tokens_seen == first.final.tokens_seen


def test_checkpoint_is_written_whole_or_not_at_all(shards, tmp_path, monkeypatch):
    def crash(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(tg.torch, "save", crash)
    assert tg.main(tiny_args(shards, tmp_path, "full", "--num_iterations=4", "--save_every=2")) == 1
    assert not (tmp_path / "full_step2.pt").exists()
    assert (tmp_path / "full.txt").read_text().splitlines()[-1] == "error:No space left on device"


@pytest.fixture(scope="module")
def checkpoint(shards, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    assert tg.main(tiny_args(shards, folder, "base", "--num_iterations=4", "--save_every=2",
                             "--save_checkpoint=true")) == 0
    return folder / "base_step2.pt"


@pytest.mark.parametrize("damage, flags, message", [
    ("truncate", [], "not a readable checkpoint"),
    ("other", [], "not a train_gpt.py checkpoint"),
    (None, ["--num_iterations=4", "--model_dim=128", "--head_dim=64"], "written with other hyperparameters: model_dim=64 there, 128 here"),
    (None, ["--num_iterations=4", "--muon_lr=0.07"], "muon_lr=0.023 there, 0.07 here"),
    ("final", [], "written at step 4, nothing is left before --num_iterations=4"),
])
def test_a_bad_checkpoint_gets_one_clear_error_before_warmup(shards, tmp_path, checkpoint, monkeypatch, damage,
                                                             flags, message):
    path = tmp_path / "ckpt.pt"
    data = (checkpoint.parent / "base_final.pt" if damage == "final" else checkpoint).read_bytes()
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "other":
        tg.torch.save({"weights": 1}, path)
        data = path.read_bytes()
    path.write_bytes(data)
    monkeypatch.setattr(tg, "warmup_kernels", lambda *a: pytest.fail("warm-up ran before the checkpoint was checked"))
    args = tiny_args(shards, tmp_path, "bad", *(flags or ["--num_iterations=4"]), f"--resume={path}")
    assert tg.main(args) == 1
    last = (tmp_path / "bad.txt").read_text().splitlines()[-1]
    assert last.startswith(f"error:--resume={path}: ") and message in last, last


def test_validation_data_is_checked_before_warmup(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(tg, "warmup_kernels", lambda *a: pytest.fail("warm-up ran before the data was checked"))
    assert tg.main(tiny_args(shards, tmp_path, "short", "--val_tokens=1048576", "--val_seq_len=512")) == 1
    assert "fewer than --val_tokens=1048576 + 1" in (tmp_path / "short.txt").read_text().splitlines()[-1]


def test_an_interrupted_run_ends_its_log_with_an_error_line(shards, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tg, "warmup_kernels", interrupted)
    assert tg.main(tiny_args(shards, tmp_path, "ctrl_c")) == 130
    assert (tmp_path / "ctrl_c.txt").read_text().splitlines()[-1] == "error:KeyboardInterrupt: "
    assert parse_log(tmp_path / "ctrl_c.txt").status == "failed"


def test_help_lists_every_flag_with_its_default_and_comment(capsys):
    assert tg.main(["--help"]) == 0
    out = capsys.readouterr().out
    for field in tg.dataclasses.fields(tg.Hyperparameters):
        assert f"--{field.name}={field.default}" in out, field.name
    assert "--val_every=125  validate every this many steps (0: only at the end)" in out
    assert "--preset=record|proxy|tiny" in out


@pytest.mark.parametrize("argv, message", [
    (["--val_every=-1"], "--val_every=-1: must not be negative"),
    (["--muon_lr=-1"], "--muon_lr=-1.0: must be positive"),
    (["--muon_beta2=1.5"], "--muon_beta2=1.5: must be in [0, 1)"),
    (["--num_iterations=3", "--num_iterations=4"], "--num_iterations is given twice"),
    (["--preset=tiny", "--preset=proxy"], "--preset is given twice"),
    (["--seq_lens=128,abc"], "--seq_lens=128,abc: must be comma-separated whole numbers"),
    (["--lr_stage_muls=0,1,1"], "--lr_stage_muls=0,1,1: must be comma-separated positive numbers"),
    (["--lr_stage_muls=1,1"], "--lr_stage_muls=1,1: needs one multiplier per --seq_lens stage"),
    (["--doc_max_tokens=896,0,2048"], "--doc_max_tokens=896,0,2048: must be empty or one positive whole number per "
                                      "--seq_lens stage"),
    (["--doc_max_tokens=896,2048"], "--doc_max_tokens=896,2048: must be empty or one positive whole number per"),
    (["--doc_max_tokens=896,2048,2048", "--align_to_bos=false"],
     "--doc_max_tokens=896,2048,2048: needs --align_to_bos"),
    (["--fp8_head=true", "--vocab_size=50260"], "--fp8_head=True: needs --model_dim and --vocab_size multiples of 16"),
    (["--fp8_mlp=true", "--fused_mlp=false"], "--fp8_mlp=True: needs --fused_mlp=true"),
    (["--fp8_mlp=true", "--fp8_head=false", "--model_dim=776", "--num_heads=8", "--head_dim=97"],
     "--fp8_mlp=True: needs --model_dim a multiple of 16"),
    (["--adam_every=0"], "--adam_every=0: must be positive"),
    (["--adam_every=2", "--save_every=3"], "--save_every=3: must be a multiple of --adam_every=2"),
])
def test_nonsensical_or_repeated_flags_are_refused(argv, message, capsys):
    assert tg.main(argv) == 2
    assert message in capsys.readouterr().err


def test_training_asks_the_loader_for_each_stages_document_cap(shards, tmp_path, monkeypatch):
    asked = []
    next_batch = tg.TrainLoader.next_batch
    monkeypatch.setattr(tg.TrainLoader, "next_batch",
                        lambda self, seq_len, doc_max=0: asked.append(doc_max) or next_batch(self, seq_len, doc_max))
    assert tg.main(tiny_args(shards, tmp_path, "capped", "--num_iterations=4", "--seq_lens=128,256",
                             "--lr_stage_muls=1,1", "--mtp_weights=1,1", "--doc_max_tokens=48,96")) == 0
    assert asked == [48, 48, 96, 96]


def test_two_gloo_ranks_match_one_rank_with_accumulation(shards, tmp_path):
    """Same slices, same math: 2 ranks x 4 micro-steps give the loss of 1 rank x 8 micro-steps."""
    args = tiny_args(shards, tmp_path, "two", "--num_iterations=5", "--val_every=5")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(ROOT / "train_gpt.py"), *args], check=True, cwd=ROOT, env=env, timeout=600)
    assert tg.main(tiny_args(shards, tmp_path, "one", "--num_iterations=5", "--val_every=5")) == 0
    two, one = val_losses(tmp_path / "two.txt"), val_losses(tmp_path / "one.txt")
    assert "world_size:2" in (tmp_path / "two.txt").read_text()
    assert one[0] == pytest.approx(two[0], abs=1e-6)
    assert one[5] == pytest.approx(two[5], abs=2e-3) and one[5] < one[0] - 1.0


@pytest.mark.parametrize("world_size, finalized", [("2", False), ("1", True)])
def test_a_distributed_process_leaves_without_finalizing_the_interpreter(world_size, finalized):
    """A torchrun rank (WORLD_SIZE > 1) exits with main's code through os._exit, so that no gloo worker thread can
    abort it during finalization; an atexit handler shows whether finalization ran. A bad flag: main returns 2
    before any process group is set up."""
    script = ("import atexit, runpy, sys; atexit.register(lambda: print('finalized')); "
              f"sys.argv = [{str(ROOT / 'train_gpt.py')!r}, '--no_such_flag=1']; "
              f"runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WORLD_SIZE": world_size})
    assert result.returncode == 2 and "no_such_flag" in result.stderr
    assert ("finalized" in result.stdout) == finalized


def test_attended_keys_count_own_document_and_window():
    bos = tg.BOS_ID
    inputs = torch.tensor([bos, 5, 6, 7, bos, 8, bos])
    assert tg.attended_keys(inputs, window=3).tolist() == [1, 2, 3, 3, 1, 2, 1]
    # paired heads: token t is positions 2t, 2t + 1; each sees its document's positions up to itself, at most 3
    assert tg.attended_keys(inputs, window=3, paired=True).tolist() == [1.5, 3, 3, 3, 1.5, 3, 1.5]


def test_flops_count_paired_blocks_by_their_two_positions_a_token():
    hp = tg.parse_args(["--preset=tiny", "--paired_head_layers=0", "--xsa_layers="])  # block 0 S, block 1 L
    inputs = torch.tensor([tg.BOS_ID, 5, 6, 7, tg.BOS_ID, 8, tg.BOS_ID, 9])
    _, attention = tg.flops_per_token(tg.GPT(hp), inputs, {"S": 3, "L": 5})
    paired, plain = tg.attended_keys(inputs, 3, paired=True).mean(), tg.attended_keys(inputs, 5).float().mean()
    assert attention == pytest.approx(12 * hp.model_dim * (paired + plain).item())


def test_benchmark_prints_its_table_and_writes_a_trace(shards, tmp_path):
    """--bench_steps: the table's lines, the FLOPs formula with the tiny model's own matmul parameters, phase
    shares summing to 100%, and a readable profiler trace; no training run, so no final line."""
    trace = tmp_path / "trace.json.gz"
    assert tg.main(tiny_args(shards, tmp_path, "bench", "--bench_steps=2", f"--bench_trace={trace}")) == 0
    text = (tmp_path / "bench.txt").read_text()
    bench = dict(kv.split(":", 1) for line in re.findall(r"^info:bench (.*)$", text, re.M) for kv in line.split()
                 if ":" in kv and not kv.startswith(("forward", "backward", "optimizer")))
    assert bench["steps"] == "2" and bench["tokens_per_step"] == str(8 * 128) and bench["accumulation"] == "8"
    assert float(bench["step_ms_min"]) <= float(bench["step_ms_median"]) <= float(bench["step_ms_max"])
    matmul_params = 50304 * 64 + 2 * (4 * 64 * 64 + 2 * 256 * 64)  # LM head + qkvo, fc, proj per block
    formula = re.search(r"flops_per_token:([\d.]+)M = 6\*matmul_params ([\d.]+)M \+ attention ([\d.]+)M", text)
    assert formula and float(formula[2]) == pytest.approx(6 * matmul_params / 1e6, abs=0.05)
    assert float(formula[1]) == pytest.approx(float(formula[2]) + float(formula[3]), abs=0.15)
    shares = [float(x) for x in re.findall(r"(?:forward|backward|optimizer):([\d.]+)%", text)]
    assert len(shares) == 3 and sum(shares) == pytest.approx(100, abs=0.2)
    assert re.search(r"^info:bench profiled_steps:2 step_ms:[\d.]+ kernel_ms_per_step:[\d.]+", text, re.M)
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert any(e.get("name") == "Optimizer.step#NorMuon.step" for e in events)
    assert not re.search(r"^final_val_loss:", text, re.M)


def test_benchmark_times_adam_on_one_step_in_adam_every_as_training_does(monkeypatch, tmp_path):
    """The run's last step always steps Adam; timing only it would charge every benchmark step with Adam's update.
    The steps cycle through the two before it, one an Adam step; the phases and the trace take whole cycles."""
    hp = tg.parse_args(["--preset=tiny", "--adam_every=2", "--num_iterations=40", "--bench_steps=4",
                        f"--bench_trace={tmp_path / 'trace.json.gz'}"])
    model, seen, lines = tg.GPT(hp), [], []
    monkeypatch.setattr(tg, "train_step", lambda model, forward, optimizers, batches, step, *a, **k: seen.append(step))
    tg.benchmark(model, model, [], hp, 1, torch.device("cpu"), lambda line, console=True: lines.append(line), None)
    assert seen == [37, 38] * 4  # 4 timed, a cycle through the phase timer, a cycle profiled
    assert [tg.adam_steps_at(step, hp) for step in (37, 38, 39)] == [True, False, True]
    assert any("steps:4 adam_every:2" in line for line in lines)
    with pytest.raises(ValueError, match="--bench_steps=3: must be a multiple of --adam_every=2"):
        tg.parse_args(["--adam_every=2", "--bench_steps=3"])


def test_a_reused_run_id_names_the_flag_and_keeps_the_old_log(shards, tmp_path, capsys):
    assert tg.main(tiny_args(shards, tmp_path, "taken", "--num_iterations=2")) == 0
    before = (tmp_path / "taken.txt").read_bytes()
    assert tg.main(tiny_args(shards, tmp_path, "taken", "--num_iterations=2")) == 1
    assert "--run_id=taken: cannot write the log" in capsys.readouterr().err
    assert (tmp_path / "taken.txt").read_bytes() == before


def test_a_run_that_wraps_around_its_data_says_so(tmp_path):
    train, val = make_shards(tmp_path / "small", train_tokens=3_000, val_tokens=4_000, num_train=1)
    assert tg.main(tiny_args((train, val), tmp_path, "wrap", "--num_iterations=6", "--val_every=0")) == 0
    lines = (tmp_path / "wrap.txt").read_text().splitlines()
    wraps = [re.fullmatch(r"info:data wrapped around: step (\d+) starts pass (\d+) over (.*)", line) for line in lines
             if line.startswith("info:data")]
    # 8 slices of 129 tokens a step and the tails before BOS dropped: 3,000 tokens last at most 2 steps a pass
    assert len(wraps) >= 2 and all(w and w[3] == train for w in wraps)
    assert [int(w[2]) for w in wraps] == list(range(2, 2 + len(wraps)))
    steps = [int(w[1]) for w in wraps]
    assert steps == sorted(set(steps)) and 2 <= steps[0] and steps[-1] <= 6


def test_compile_cache_folder_receives_inductors_and_tritons_caches(shards, tmp_path, monkeypatch):
    """--compile_cache points both caches at one folder before anything compiles; inductor reads it then (shown
    here by compiling a function on the CPU, where training itself never compiles)."""
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tg.torch._functorch.config, "autograd_cache_allow_custom_autograd_functions", False)
    cache = tmp_path / "cache"
    assert tg.main(tiny_args(shards, tmp_path, "cached", "--num_iterations=1", f"--compile_cache={cache}")) == 0
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(cache / "triton")
    assert tg.torch._functorch.config.autograd_cache_allow_custom_autograd_functions  # RowTable's Function is kept
    compiled = tg.torch.compile(lambda x: (x.sin() * 3).sum())
    assert compiled(tg.torch.ones(8)).item() == pytest.approx(24 * math.sin(1.0), rel=1e-5)
    assert any((cache / "inductor").rglob("*")), "inductor wrote nothing to the stated folder"

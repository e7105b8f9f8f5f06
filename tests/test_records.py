"""Tests of records/: log parsing, source recovery, the record statistics, plots and the records table.

Every log here is written by `write_log` below, directly from the log format train_gpt.py promises."""
import hashlib
import json
import math
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import scipy.stats

from records import plot, recover, summarize, table
from records.logfile import LogFormatError, NotALogError, extract_source, parse_log
from records.stats import betainc, mean_std, one_sided_t_test, student_t_cdf

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "# ----- Source capture -----\nprint('héllo')\n".encode()


def source_block(source: bytes) -> bytes:
    sha = hashlib.sha256(source).hexdigest()
    return (f"==== train_gpt.py source begin sha256:{sha} bytes:{len(source)} ====\n".encode() + source
            + b"\n==== train_gpt.py source end ====\n")


RECORD_HPARAMS = {"val_files": "data/fineweb10B/fineweb_val_*.bin", "val_tokens": "10485760"}


def header_lines(run_id: str, total: int, command: str | None = None, world_size: int = 8,
                 hparams: dict | None = None) -> list[str]:
    command = command or f"torchrun --standalone --nproc_per_node=8 train_gpt.py --num_iterations={total}"
    hparams = {"num_iterations": total, "train_files": "data/fineweb10B/fineweb_train_*.bin", **RECORD_HPARAMS,
               **(hparams or {})}
    return ([f"run_id:{run_id}", "date:2026-11-23T10:00:00Z", f"command:{command}", "python:3.12.3",
             "torch:2.11.0+cu130", "triton:3.6.0", "cuda:13.0", "gpu:8x NVIDIA H100 80GB HBM3",
             f"world_size:{world_size}", "==== nvidia-smi begin ====", "| NVIDIA-SMI 580.82  Driver Version: 580.82 |",
             "", "key:value lines and anything else: free text", "==== nvidia-smi end ===="]
            + [f"hparam:{k}={v}" for k, v in hparams.items()] + ["info:kernels warmed up"])


def step_lines(total: int, final_loss: float, time_ms: int) -> list[str]:
    lines = []
    for s in range(total + 1):
        t = time_ms * s // total
        avg = f"{t / max(s, 1):.2f}"
        val = final_loss + (10.8258 - final_loss) * (1 - s / total) ** 2
        if s > 0:
            train = f" train_loss:{val + 0.05:.4f}" if s % 2 == 0 else ""
            lines.append(f"step:{s}/{total}{train} train_time:{t}ms step_avg:{avg}ms")
        if s % 5 == 0 or s == total:
            lines.append(f"step:{s}/{total} val_loss:{val:.4f} train_time:{t}ms step_avg:{avg}ms")
    return lines


def final_line(total: int, final_loss: float, time_ms: int) -> str:
    return (f"final_val_loss:{final_loss:.4f} train_time:{time_ms}ms steps:{total} peak_memory:30123MiB "
            f"tokens_seen:{total * 524288}")


def log_lines(run_id="run0", final_loss=3.2781, time_ms=83000, total=20, command=None, **header) -> list[str]:
    return (header_lines(run_id, total, command, **header) + step_lines(total, final_loss, time_ms)
            + [final_line(total, final_loss, time_ms)])


def write_log(path: Path, lines=None, source: bytes = SOURCE, **kw) -> Path:
    lines = log_lines(**kw) if lines is None else lines
    path.write_bytes(source_block(source) + "".join(line + "\n" for line in lines).encode())
    return path


def run_script(name: str, *args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "records" / f"{name}.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


# ----- Source recovery -----

@pytest.mark.parametrize("source", [
    SOURCE,
    b"print(1)",  # no final newline: the writer still adds one before the end line
    b"a = 1\r\nb = '\xe2\x82\xac'\r\n\r\n",
    b"",
    b"x = 1\n" + source_block(b"nested") + b"==== train_gpt.py source end ====\n\n",  # the markers inside
], ids=["plain", "no-final-newline", "crlf-utf8", "empty", "holds-markers"])
def test_extract_source_gives_back_the_exact_bytes(tmp_path, source):
    log = write_log(tmp_path / "log.txt", source=source)
    assert extract_source(log) == source
    run = parse_log(log)
    assert run.source == source and run.run_id == "run0" and run.status == "complete"


def test_altered_source_byte_is_refused(tmp_path):
    data = bytearray((write_log(tmp_path / "log.txt")).read_bytes())
    i = data.index(b"print")
    data[i] = ord("P")
    (tmp_path / "log.txt").write_bytes(bytes(data))
    with pytest.raises(LogFormatError, match=r"log\.txt:1: source block is altered: sha256"):
        extract_source(tmp_path / "log.txt")


def test_source_with_a_byte_added_is_refused(tmp_path):
    data = write_log(tmp_path / "log.txt").read_bytes().replace(b"print", b"printt")
    (tmp_path / "log.txt").write_bytes(data)
    with pytest.raises(LogFormatError, match="altered: the end line does not follow the declared"):
        parse_log(tmp_path / "log.txt")


def test_log_cut_inside_the_source_is_refused(tmp_path):
    data = write_log(tmp_path / "log.txt").read_bytes()
    cut = tmp_path / "cut.txt"
    cut.write_bytes(data[:data.index(b"print") + 3])
    with pytest.raises(LogFormatError, match=r"cut\.txt:1: source block is cut"):
        extract_source(cut)


def test_log_without_source_block_is_refused(tmp_path):
    log = tmp_path / "bare.txt"
    log.write_text("run_id:x\nstep:0/10 val_loss:10.8 train_time:0ms step_avg:0.00ms\n")
    with pytest.raises(LogFormatError, match=r"bare\.txt:1: no source block"):
        extract_source(log)


def test_recover_writes_the_verified_source(tmp_path):
    source = b"# train_gpt.py\nimport sys\n\xc3\xa9 = 1\n"
    log = write_log(tmp_path / "run1.txt", source=source)
    out = tmp_path / "out" / "train_gpt.py"
    assert recover.main([str(log), "-o", str(out)]) == 0
    assert out.read_bytes() == source


def test_recover_refuses_an_altered_log_and_writes_nothing(tmp_path, capsys):
    log = write_log(tmp_path / "run1.txt")
    log.write_bytes(log.read_bytes().replace(b"h\xc3\xa9llo", b"hallo"))
    out = tmp_path / "train_gpt.py"
    assert recover.main([str(log), "-o", str(out)]) == 2
    assert "run1.txt:1: source block is altered" in capsys.readouterr().err
    assert not out.exists()


def test_recover_run_launches_the_recovered_file_with_the_logged_command(tmp_path):
    source = b"import sys\nopen(sys.argv[1].split('=')[1], 'w').write(repr(sys.argv[1:]))\n"
    marker = tmp_path / "ran.txt"
    command = shlex.join([sys.executable, "train_gpt.py", f"--out={marker}"])
    log = write_log(tmp_path / "run1.txt", source=source, command=command)
    out = tmp_path / "rec" / "train_gpt.py"
    dry = run_script("recover", log, "-o", out, "--run", "--dry_run", "--run_id=again")
    assert dry.returncode == 0, dry.stderr
    assert f"command: {shlex.join([sys.executable, str(out), f'--out={marker}', '--run_id=again'])}" in dry.stdout
    assert not marker.exists()
    done = run_script("recover", log, "-o", out, "--run", "--run_id=again")
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == repr([f"--out={marker}", "--run_id=again"])


def test_recover_run_from_the_logs_folder_gets_a_fresh_run_id(tmp_path):
    # Like train_gpt.py's Logger: the log <run_id>.txt is created exclusively, so reusing run1 would fail.
    source = (b"import sys\nrun_id = [a for a in sys.argv if a.startswith('--run_id=')][-1][9:]\n"
              b"open(run_id + '.txt', 'x').write('rerun')\n")
    command = shlex.join([sys.executable, "train_gpt.py", "--run_id=run1", "--seed=3"])
    write_log(tmp_path / "run1.txt", source=source, command=command, run_id="run1")
    done = run_script("recover", "run1.txt", "--run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    new_logs = [p for p in tmp_path.glob("*.txt") if p.name != "run1.txt"]
    assert len(new_logs) == 1 and new_logs[0].read_text() == "rerun"
    assert "--seed=3 --run_id=" in done.stdout


def test_rerun_command_replaces_the_script_and_the_run_id(tmp_path):
    new, log = Path("r/train_gpt.py"), Path("x.txt")
    assert recover.rerun_command("torchrun --nproc_per_node=8 ./train_gpt.py --a=1", new, log, "n1") == [
        "torchrun", "--nproc_per_node=8", "r/train_gpt.py", "--a=1", "--run_id=n1"]
    assert recover.rerun_command("python a/copy.py --b='x y' --c=train_gpt.py", new, log, "n2") == [
        "python", "r/train_gpt.py", "--b=x y", "--c=train_gpt.py", "--run_id=n2"]
    assert recover.rerun_command("python train_gpt.py --run_id=old --a=1 --run_id old2 --b=2", new, log, "n3") == [
        "python", "r/train_gpt.py", "--a=1", "--b=2", "--run_id=n3"]
    with pytest.raises(ValueError, match="x.txt: the logged command names no .py script"):
        recover.rerun_command("python -", new, log, "n4")


# ----- Parsing -----

def test_parse_reads_every_field(tmp_path):
    run = parse_log(write_log(tmp_path / "log.txt", run_id="abc", final_loss=3.2712, time_ms=81234, total=20))
    assert (run.run_id, run.gpu, run.torch, run.cuda, run.world_size) == (
        "abc", "8x NVIDIA H100 80GB HBM3", "2.11.0+cu130", "13.0", 8)
    assert run.date.isoformat() == "2026-11-23T10:00:00+00:00"
    assert run.hparams == {"num_iterations": "20", "train_files": "data/fineweb10B/fineweb_train_*.bin",
                           "val_files": "data/fineweb10B/fineweb_val_*.bin", "val_tokens": "10485760"}
    assert run.nvidia_smi[1] == "" and len(run.nvidia_smi) == 3
    assert run.info == ["kernels warmed up"]
    assert [s.step for s in run.steps if s.val_loss is not None] == [0, 5, 10, 15, 20]
    assert [s.step for s in run.steps if s.train_loss is not None] == list(range(2, 21, 2))
    assert run.steps[0].val_loss == 10.8258 and run.steps[-1].train_time_ms == 81234
    assert (run.final.val_loss, run.final.train_time_ms, run.final.steps, run.final.peak_memory_mib,
            run.final.tokens_seen) == (3.2712, 81234, 20, 30123, 20 * 524288)


def test_run_that_stopped_after_a_step_is_incomplete(tmp_path):
    lines = log_lines()[:-5]
    run = parse_log(write_log(tmp_path / "log.txt", lines=lines))
    assert run.status == "incomplete" and run.final is None and run.cut_line is None
    assert run.steps[-1].step == 17


def test_last_line_cut_mid_way_is_set_aside(tmp_path):
    log = write_log(tmp_path / "log.txt", lines=log_lines()[:-5])
    log.write_bytes(log.read_bytes() + b"step:18/20 train_loss:3.3 train_ti")
    run = parse_log(log)
    assert run.status == "incomplete" and run.cut_line == "step:18/20 train_loss:3.3 train_ti"
    assert run.steps[-1].step == 17


def test_cut_line_before_the_end_is_an_error(tmp_path):
    lines = log_lines()
    lines[30] = lines[30][:12]  # "step:10/20 t", at line 36: the source spans lines 2-4, the end line is 5
    with pytest.raises(LogFormatError, match=r"log\.txt:36: expected key:value, got 't'"):
        parse_log(write_log(tmp_path / "log.txt", lines=lines))


def test_error_line_marks_the_run_failed(tmp_path):
    lines = log_lines()[:25] + ["error:non-finite loss nan at step 12"]
    run = parse_log(write_log(tmp_path / "log.txt", lines=lines))
    assert run.status == "failed" and run.errors == ["non-finite loss nan at step 12"]


BAD_LINES = {
    "foo:1": "unknown key 'foo'",
    "": "expected key:value",
    "step:3/20 train_time:10ms": "step line lacks step_avg",
    "step:3/20 val_loss:abc train_time:1ms step_avg:1.00ms": "val_loss must be a number, got 'abc'",
    "step:3/20 train_loss: train_time:1ms step_avg:1.00ms": "expected key:value",
    "step:21/20 train_time:1ms step_avg:1.00ms": "step 21 is beyond the total 20",
    "step:3 train_time:1ms step_avg:1.00ms": "step must be S/N",
    "step:3/20 train_time:10 step_avg:1.00ms": "train_time must end in 'ms'",
    "step:3/20 train_time:1ms step_avg:1.00ms lr:0.1": "unknown key(s) ['lr']",
    "step:3/20 train_time:1ms train_time:1ms step_avg:1.00ms": "key 'train_time' appears twice",
    "step:3/21 train_time:1ms step_avg:1.00ms": "total steps changed from 20",
    "world_size:eight": "world_size must be a non-negative integer",
    "date:2026-11-23T10:00:00+02:00": "date must be an ISO 8601 UTC time",
    "run_id:again": "run_id appears twice",
    "hparam:num_iterations=5": "hparam num_iterations appears twice",
    "hparam:no_equals_sign": "expected hparam:<name>=<value>",
    "final_val_loss:3.2 train_time:5ms steps:3": "summary line must have exactly the keys",
}


@pytest.mark.parametrize("bad, message", BAD_LINES.items(), ids=list(BAD_LINES))
def test_malformed_line_names_the_file_and_line(tmp_path, bad, message):
    # Source "a\nb\nc\n" spans lines 2-4, line 5 is the writer's newline, line 6 the end line: the header
    # starts at line 7 and the step lines at 26; the bad line goes after 9 step lines, at line 35.
    lines = log_lines()
    lines.insert(17 + 11, bad)
    with pytest.raises(LogFormatError) as err:
        parse_log(write_log(tmp_path / "file.txt", lines=lines, source=b"a\nb\nc\n"))
    assert f"file.txt:35: {message}" in str(err.value)


def test_line_numbers_count_a_source_without_final_newline(tmp_path):
    lines = ["run_id:x", "bogus line"]
    with pytest.raises(LogFormatError, match=r"file\.txt:7: expected key:value"):
        parse_log(write_log(tmp_path / "file.txt", lines=lines, source=b"a\nb\nc"))  # end line is line 5


def test_steps_going_backwards_are_an_error(tmp_path):
    lines = log_lines()
    i = next(i for i, line in enumerate(lines) if line.startswith("step:10/20 train_loss:"))
    lines.insert(i + 1, "step:9/20 train_time:41600ms step_avg:4622.22ms")
    with pytest.raises(LogFormatError, match="step went backwards from 10"):
        parse_log(write_log(tmp_path / "log.txt", lines=lines))


def test_step_after_the_summary_is_an_error(tmp_path):
    lines = log_lines() + ["step:20/20 train_time:1ms step_avg:1.00ms"]
    with pytest.raises(LogFormatError, match="step line after the summary line"):
        parse_log(write_log(tmp_path / "log.txt", lines=lines))


def test_two_runs_appended_to_one_log_are_an_error(tmp_path):
    log = write_log(tmp_path / "log.txt")
    log.write_bytes(log.read_bytes() * 2)
    with pytest.raises(LogFormatError, match="a second source block: two runs were written to one log"):
        parse_log(log)


def test_unclosed_nvidia_smi_block_is_an_error(tmp_path):
    lines = [line for line in log_lines() if line != "==== nvidia-smi end ===="]
    with pytest.raises(LogFormatError, match=r"log\.txt:16: nvidia-smi block is never closed"):
        parse_log(write_log(tmp_path / "log.txt", lines=lines, source=b"a\nb\nc\n"))


SHA_A, SHA_B = "a" * 64, "b" * 64


def test_data_fingerprints_and_new_step_lines_are_read(tmp_path):
    lines = log_lines()
    lines[lines.index("info:kernels warmed up"):0] = [f"train_data:{SHA_A}", f"val_data:{SHA_B}"]
    run = parse_log(write_log(tmp_path / "log.txt", lines=lines))
    assert (run.train_data, run.val_data) == (SHA_A, SHA_B)
    assert run.steps[2].train_loss is not None and run.steps[2].step == 2
    assert parse_log(write_log(tmp_path / "old.txt")).val_data is None


def test_data_fingerprint_must_be_a_sha256(tmp_path):
    lines = log_lines()
    lines.insert(3, "val_data:abc")
    with pytest.raises(LogFormatError, match="val_data must be a sha256"):
        parse_log(write_log(tmp_path / "log.txt", lines=lines))


@pytest.mark.parametrize("edit, message", [
    (("final_val_loss:3.2781", "final_val_loss:3.2000"), "summary final_val_loss 3.2000 disagrees with the last val"
                                                         " line (line 50): 3.2781"),
    (("train_time:83000ms steps", "train_time:73000ms steps"), "summary train_time 73000 disagrees"),
    (("steps:20 ", "steps:25 "), "summary steps 25 disagrees with the last val line (line 50): 20"),
])
def test_summary_line_must_agree_with_the_last_val_line(tmp_path, edit, message):
    log = write_log(tmp_path / "log.txt", source=b"a\nb\nc\n")
    log.write_text(log.read_text().replace(*edit))
    with pytest.raises(LogFormatError, match=re.escape(f"log.txt:51: {message}")):
        parse_log(log)


def resumed_lines(resume_step: int, carried_ms: int, total=20, final_loss=3.2781, time_ms=33000, run_id="res"):
    """A run resumed at `resume_step` after `carried_ms` of training: its times include the carried time."""
    steps = [line for line in step_lines(total, final_loss, time_ms)
             if int(line.split(" ")[0].split(":")[1].split("/")[0]) > resume_step]
    header = header_lines(run_id, total, hparams={"resume": f"checkpoints/a_step{resume_step}.pt"})
    return header + [f"resume_step:{resume_step} resume_train_time:{carried_ms}ms"] + steps + [
        final_line(total, final_loss, time_ms)]


def test_resumed_run_counts_the_time_of_every_segment(tmp_path):
    run = parse_log(write_log(tmp_path / "res.txt", lines=resumed_lines(10, 16500)))
    assert (run.resume_step, run.resume_train_time_ms) == (10, 16500) and run.steps[0].step == 11
    s = summarize.summarize([run])
    assert s["n"] == 1 and s["train_time_ms_mean"] == 33000 and "resume" not in s["verdict"]


@pytest.mark.parametrize("resume_line, message", [
    ("resume_step:12 resume_train_time:16500ms", "first step after resume_step:12 is 11, expected 13"),
    ("resume_step:10 resume_train_time:40000ms", "train_time 18150ms is less than the resume_train_time 40000ms"),
    ("resume_step:10", "resume line must be resume_step:<S> resume_train_time:<T>ms"),
])
def test_resume_line_must_fit_the_steps(tmp_path, resume_line, message):
    lines = [resume_line if line.startswith("resume_step:") else line for line in resumed_lines(10, 16500)]
    with pytest.raises(LogFormatError, match=re.escape(message)):
        parse_log(write_log(tmp_path / "res.txt", lines=lines))


def test_old_style_resumed_segment_is_refused_with_a_reason(tmp_path):
    # Before resume lines existed, a resumed log counted only the time after its resume: 13 s of a 33 s run.
    lines = [line for line in resumed_lines(10, 5000, time_ms=13000) if not line.startswith("resume_step:")]
    paths = write_runs(tmp_path, RECORD_LOSSES, [33000] * 3) + [write_log(tmp_path / "seg.txt", lines=lines)]
    s = summarize.summarize([parse_log(p) for p in paths])
    assert s["n"] == 3 and s["train_time_ms_min"] == 33000 and not s["is_record"]
    assert s["verdict"] == ("not comparable: train_time refused: resumed without a resume_step line, so it counts "
                            "only the time after the resume (res)")
    assert "res (resumed segment)" in s["notes"][0]


# ----- Statistics -----

def test_student_t_cdf_matches_scipy():
    for df in (1, 2, 3, 4, 5, 7, 9, 19, 30, 99, 1000, 0.5, 2.5):
        for t in (-1e6, -40.0, -8.3, -3.1, -1.7, -0.9, -0.01, 0.0, 0.2, 1.0, 2.4, 6.0, 25.0, 1e4):
            assert abs(student_t_cdf(t, df) - scipy.stats.t.cdf(t, df)) < 1e-10, (t, df)


def test_student_t_cdf_matches_closed_forms():
    for t in (-12.0, -1.0, -1e-6, 0.3, 4.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-15)  # Cauchy
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-15)


def test_incomplete_beta_matches_scipy():
    for a, b, x in [(0.5, 0.5, 0.3), (2, 3, 0.9), (50, 0.5, 0.99), (10, 10, 0.5), (0.5, 40, 1e-3), (3, 7, 0.0)]:
        assert abs(betainc(a, b, x) - scipy.special.betainc(a, b, x)) < 1e-12


def test_p_value_hand_computed():
    # mean 3.27, sample std 0.01, n 3: t = -0.01 / (0.01 / sqrt 3) = -sqrt 3; with df = 2 the t CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)), so p = 1/2 - sqrt(3) / (2 sqrt 5).
    t, p = one_sided_t_test([3.27, 3.28, 3.26], 3.28)
    assert t == pytest.approx(-math.sqrt(3), rel=1e-12)
    assert p == pytest.approx(0.5 - math.sqrt(3) / (2 * math.sqrt(5)), abs=1e-12)


def test_p_value_matches_scipy_ttest():
    rng = random.Random(0)
    for n in (2, 3, 5, 8, 20, 60):
        for center in (3.27, 3.2795, 3.285):
            losses = [rng.gauss(center, 0.003) for _ in range(n)]
            t, p = one_sided_t_test(losses, 3.28)
            ref = scipy.stats.ttest_1samp(losses, 3.28, alternative="less")
            assert abs(t - ref.statistic) < 1e-9 * max(1.0, abs(ref.statistic))
            assert abs(p - ref.pvalue) < 1e-10


def test_t_test_edge_cases():
    assert one_sided_t_test([3.27], 3.28) == (None, None)
    assert one_sided_t_test([3.27, 3.27], 3.28) == (-math.inf, 0.0)
    assert one_sided_t_test([3.29, 3.29], 3.28) == (math.inf, 1.0)
    assert one_sided_t_test([3.28, 3.28], 3.28) == (None, None)
    assert mean_std([2.0, 4.0, 9.0]) == (5.0, pytest.approx(np.std([2.0, 4.0, 9.0], ddof=1)))


# ----- Summaries -----

def write_runs(folder: Path, losses, times) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_log(folder / f"run{i}.txt", run_id=f"run{i}", final_loss=loss, time_ms=ms)
            for i, (loss, ms) in enumerate(zip(losses, times))]


def test_summary_of_a_record(tmp_path):
    losses, times = [3.2761, 3.2779, 3.2770, 3.2755, 3.2783], [83000, 84100, 82500, 83300, 83900]
    write_runs(tmp_path, losses, times)
    s = summarize.summarize([parse_log(p) for p in sorted(tmp_path.glob("*.txt"))])
    assert s["n"] == 5 and s["is_record"] and s["verdict"].startswith("RECORD")
    assert s["val_loss_mean"] == pytest.approx(np.mean(losses), abs=1e-12)
    assert s["val_loss_std"] == pytest.approx(np.std(losses, ddof=1), abs=1e-12)
    assert abs(s["p_value"] - scipy.stats.ttest_1samp(losses, 3.28, alternative="less").pvalue) < 1e-10
    assert s["train_time_ms_mean"] == pytest.approx(np.mean(times))
    assert s["train_time_ms_std"] == pytest.approx(np.std(times, ddof=1))
    assert (s["train_time_ms_min"], s["train_time_ms_max"]) == (82500, 84100)


def test_summary_rejects_a_record_that_is_not_significant(tmp_path):
    paths = write_runs(tmp_path, [3.2790, 3.2770, 3.2801], [83000] * 3)
    s = summarize.summarize([parse_log(p) for p in paths])
    assert 0.01 < s["p_value"] < 0.5 and not s["is_record"] and s["verdict"].startswith("NOT A RECORD")
    lenient = summarize.summarize([parse_log(p) for p in paths], target=3.30)
    assert lenient["is_record"]


def test_summary_of_one_log_says_the_p_value_is_undefined(tmp_path, capsys):
    (path,) = write_runs(tmp_path, [3.2701], [83000])
    assert summarize.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "std undefined (one run)" in out and "verdict: no verdict: the p-value is undefined" in out
    assert summarize.main([str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 1 and s["val_loss_std"] is None and s["p_value"] is None and not s["is_record"]


def test_summary_leaves_out_unfinished_runs(tmp_path):
    write_runs(tmp_path, [3.2761, 3.2779, 3.2770], [83000] * 3)
    write_log(tmp_path / "crash.txt", lines=log_lines(run_id="crash", final_loss=3.0)[:-4])
    write_log(tmp_path / "nan.txt", lines=log_lines(run_id="nan")[:30] + ["error:non-finite loss nan"])
    s = summarize.summarize([parse_log(p) for p in sorted(tmp_path.glob("*.txt"))])
    assert s["n"] == 3
    assert s["val_loss_mean"] == pytest.approx(np.mean([3.2761, 3.2779, 3.2770]), abs=1e-12)
    assert "crash (incomplete)" in s["notes"][0] and "nan (failed)" in s["notes"][0]


def test_summary_refuses_the_same_run_twice(tmp_path, capsys):
    write_log(tmp_path / "a.txt", run_id="same")
    write_log(tmp_path / "b.txt", run_id="same")
    assert summarize.main([str(tmp_path)]) == 2
    assert "run_id same is also the run_id of" in capsys.readouterr().err


def test_summarize_cli_prints_table_and_verdict(tmp_path):
    write_runs(tmp_path, [3.2761, 3.2779, 3.2770], [83000, 84000, 85000])
    done = run_script("summarize", tmp_path, "--target", "3.29")
    assert done.returncode == 0, done.stderr
    assert "run2.txt  run2    complete  3.2770    20     85.000  8x NVIDIA H100 80GB HBM3" in done.stdout
    assert "val loss: mean 3.2770  std 0.00090" in done.stdout
    assert "t-test for mean < 3.29: t=-25.0185  p=0.0007969  (df=2, one-sided)" in done.stdout
    assert "train time: mean 84.000 s (1.4000 min)  std 1.000 s  min 83.000 s  max 85.000 s" in done.stdout
    assert "verdict: RECORD: mean val loss 3.2770 < 3.29 with p=0.000797 < 0.01 (n=3)" in done.stdout
    assert "verdict: NOT A RECORD" in run_script("summarize", tmp_path).stdout  # p = 0.0144 against 3.28


def test_a_run_that_did_not_finish_makes_the_set_not_comparable(tmp_path):
    write_runs(tmp_path, [3.2761, 3.2779, 3.2770], [83000, 84000, 85000])
    write_log(tmp_path / "crash.txt", lines=log_lines(run_id="crash")[:-4])
    done = run_script("summarize", tmp_path, "--target", "3.29")
    assert done.returncode == 0, done.stderr
    assert "crash.txt  crash   incomplete  -         -      -" in done.stdout
    assert "val loss: mean 3.2770  std 0.00090" in done.stdout and "t-test" not in done.stdout
    assert done.stdout.endswith("verdict: not comparable: status differs: incomplete, a record needs whole runs "
                                "(crash)\n")


def test_summarize_cli_names_a_malformed_log(tmp_path):
    lines = log_lines()
    lines[20] = "step:1/20 val_loss:nope train_time:1ms step_avg:1.00ms"
    write_log(tmp_path / "bad.txt", lines=lines, source=b"a\nb\nc\n")
    done = run_script("summarize", tmp_path / "bad.txt")
    assert done.returncode == 2 and "bad.txt:27: val_loss must be a number" in done.stderr


def summary_of(folder: Path, losses, **header) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_log(folder / f"run{i}.txt", run_id=f"run{i}", final_loss=loss, **header)
             for i, loss in enumerate(losses)]
    return summarize.summarize([parse_log(p) for p in paths])


def test_one_gpu_runs_on_local_text_are_not_comparable(tmp_path):
    # The case: three 1-GPU runs validated on 3M tokens of local text tokenized as fineweb_val_*.bin.
    s = summary_of(tmp_path, RECORD_LOSSES, world_size=1,
                   hparams={"val_files": "data/mytext/fineweb_val_*.bin", "val_tokens": "3145728"})
    assert not s["is_record"] and not s["comparable"] and s["p_value"] is None
    assert s["verdict"] == (
        "not comparable: val_tokens differs: 3145728, a record validates on 10485760 (run0, run1, run2); "
        "world_size differs: 1-GPU accumulation run, not a record time (run0, run1, run2)")
    assert s["n"] == 3 and s["val_loss_mean"] == pytest.approx(np.mean(RECORD_LOSSES), abs=1e-12)
    assert summary_of(tmp_path / "ok", RECORD_LOSSES)["verdict"].startswith("RECORD")


@pytest.mark.parametrize("header, message", [
    ({"hparams": {"val_files": "data/mytext/val_*.bin"}},
     "val_files differs: data/mytext/val_*.bin is not FineWeb validation (*fineweb_val_*)"),
    ({"world_size": 16}, "world_size differs: 16, a record runs on 8"),
    ({"hparams": {"val_tokens": "1048576"}}, "val_tokens differs: 1048576, a record validates on 10485760"),
])
def test_runs_off_the_record_setup_are_not_comparable(tmp_path, header, message):
    s = summary_of(tmp_path, RECORD_LOSSES, **header)
    assert s["verdict"] == f"not comparable: {message} (run0, run1, run2)"


def test_runs_of_different_sources_or_val_sets_are_not_comparable(tmp_path):
    paths = write_runs(tmp_path, RECORD_LOSSES, [83000] * 3)
    write_log(paths[2], run_id="run2", final_loss=RECORD_LOSSES[2], source=b"print('changed')\n")
    s = summarize.summarize([parse_log(p) for p in paths])
    assert s["verdict"].startswith("not comparable: source differs across runs (2 sha256s: ")
    lines = log_lines(run_id="run2", final_loss=RECORD_LOSSES[2])
    write_log(paths[2], lines=lines[:3] + [f"val_data:{SHA_A}"] + lines[3:])
    s = summarize.summarize([parse_log(p) for p in paths])
    assert s["verdict"] == f"not comparable: val_data differs across runs (2 sha256s: {SHA_A[:12]}, none)"


def test_summarize_skips_text_files_that_are_not_logs_and_says_so(tmp_path):
    write_runs(tmp_path, RECORD_LOSSES, [83000] * 3)
    (tmp_path / "a_bench.txt").write_text("current fwd+bwd 5.049 ms\n")
    done = run_script("summarize", tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"skipped {tmp_path / 'a_bench.txt'}: not a train log" in done.stdout
    assert "finished runs: 3" in done.stdout and "verdict: RECORD" in done.stdout
    named = run_script("summarize", tmp_path / "a_bench.txt")
    assert named.returncode == 2 and "a_bench.txt:1: no source block" in named.stderr


# ----- Upstream logs -----

RULE = "=" * 100
BANNER = "\n\n" + "-" * 40 + "\n# {}\n" + "-" * 40 + "\n\n"
KERNELS = "import triton\n\ndef kernel():\n    pass\n"


def upstream_script(writes_with: str) -> str:
    """A stand-in for upstream's train_gpt.py: it reads itself into `code` and logs it with print0 or f.write."""
    log_it = {"print": "print0(code)\nprint0('=' * 100)\n", "write": "    f.write(code)\n"}[writes_with]
    return ("import sys\nwith open(sys.argv[0]) as f:\n    code = f.read()\n" + log_it
            + "print(f'step:{1}/{2} train_time:{3}ms step_avg:{4}ms')\n\n")


def upstream_steps(total: int, final_loss: float, time_ms: int, train_loss: bool) -> str:
    lines = []
    for s in range(total + 1):
        t = time_ms * s // total
        avg = "nan" if s < 2 else f"{t / s:.2f}"
        loss = f" train_loss:{final_loss + 0.1:.4f}" if train_loss else ""
        if s:
            lines.append(f"step:{s}/{total}{loss} train_time:{t}ms step_avg:{avg}ms")
        if s % 5 == 0:
            val = final_loss + (10.8258 - final_loss) * (1 - s / total) ** 2
            lines.append(f"step:{s}/{total} val_loss:{val:.4f} train_time:{t}ms step_avg:{avg}ms")
    return "\n".join(lines) + "\n"


def upstream_log(path: Path, layout: str, final_loss=3.2785, time_ms=180000, total=20) -> dict[str, bytes]:
    """Write a log in one of upstream's layouts; returns the files it holds, as they were on disk."""
    env = ("Running Python 3.12.7 (main, Jan 17 2025) [GCC 13.2.0]\n"
           "Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8\nnvidia-smi:\n| NVIDIA-SMI 580.82 |\n\n")
    if layout == "2024":  # rule, source (f.write), rule, environment, rule, steps with train_loss
        files = {"train_gpt.py": upstream_script("write")}
        text = f"{RULE}\n{files['train_gpt.py']}{RULE}\n{env}{RULE}\n"
    elif layout == "2025-write":  # source (f.write), rule, environment, rule
        files = {"train_gpt.py": upstream_script("write")}
        text = f"{files['train_gpt.py']}{RULE}\n{env}{RULE}\n"
    elif layout == "2025-print":  # source, print's newline, rule, environment, rule
        files = {"train_gpt.py": upstream_script("print")}
        text = f"{files['train_gpt.py']}\n{RULE}\n{env}{RULE}\n"
    else:  # 2026: several files, each after a banner, printed as one; then as 2025
        files = {"train_gpt.py": upstream_script("print"), "triton_kernels.py": KERNELS,
                 "more_kernels.py": KERNELS.replace("kernel", "other")}
        code = files["train_gpt.py"] + "".join(BANNER.format(n) + files[n] for n in list(files)[1:])
        text = f"{code}\n{RULE}\n{env}{RULE}\nCompiling model and warming up kernels\n"
    text += upstream_steps(total, final_loss, time_ms, train_loss=layout == "2024")
    text += "peak memory allocated: 30908 MiB reserved: 46472 MiB\n"
    path.write_text(text)
    return {name: data.encode() for name, data in files.items()}


UPSTREAM_LAYOUTS = ["2024", "2025-write", "2025-print", "2026"]


@pytest.mark.parametrize("layout", UPSTREAM_LAYOUTS)
def test_upstream_sources_are_recovered_exactly(tmp_path, layout, capsys):
    files = upstream_log(tmp_path / "u.txt", layout)
    out = tmp_path / "rec" / "train_gpt.py"
    assert recover.main([str(tmp_path / "u.txt"), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(files)
    for name, data in files.items():
        assert (out.parent / name).read_bytes() == data, name
    assert "no sha256 declared to verify against" in capsys.readouterr().out


@pytest.mark.parametrize("layout", UPSTREAM_LAYOUTS)
def test_upstream_steps_are_read(tmp_path, layout):
    upstream_log(tmp_path / "u.txt", layout, final_loss=3.2771, time_ms=179527)
    run = parse_log(tmp_path / "u.txt")
    assert run.layout == "upstream" and run.status == "complete" and run.torch == "2.10.0+cu128"
    assert [s.step for s in run.steps if s.val_loss is not None] == [0, 5, 10, 15, 20]
    assert len(run.steps) == 25 and math.isnan(run.steps[1].step_avg_ms)
    assert (run.final.val_loss, run.final.train_time_ms, run.final.steps, run.final.peak_memory_mib) == (
        3.2771, 179527, 20, 30908)
    assert (run.steps[-2].train_loss is not None) == (layout == "2024")


def test_upstream_run_without_its_last_val_line_is_incomplete(tmp_path):
    upstream_log(tmp_path / "u.txt", "2026")
    log = tmp_path / "u.txt"
    log.write_text(log.read_text().replace("step:20/20 val_loss", "step:19/20 val_loss").replace(
        "step:20/20 train_time", "step:19/20 train_time"))
    run = parse_log(log)
    assert run.status == "incomplete" and run.final is None


def test_upstream_runs_are_summarized_but_never_a_record(tmp_path):
    for i, loss in enumerate(RECORD_LOSSES):
        upstream_log(tmp_path / f"u{i}.txt", "2025-print", final_loss=loss, time_ms=170000 + 1000 * i)
    done = run_script("summarize", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "finished runs: 3" in done.stdout and "train time: mean 171.000 s" in done.stdout
    assert f"val loss: mean {np.mean(RECORD_LOSSES):.4f}" in done.stdout and "t-test" not in done.stdout
    assert done.stdout.endswith(
        "verdict: not comparable: val_tokens unknown: upstream logs do not log it (u0, u1, u2); "
        "world_size unknown: upstream logs do not log it (u0, u1, u2)\n")


def test_upstream_log_cannot_be_rerun_without_a_command(tmp_path, capsys):
    upstream_log(tmp_path / "u.txt", "2026")
    assert recover.main([str(tmp_path / "u.txt"), "--run", "-o", str(tmp_path / "r" / "train_gpt.py")]) == 2
    assert "no command: line to rerun (upstream logs hold none" in capsys.readouterr().err


def test_text_file_with_a_rule_line_but_no_self_logging_code_is_not_a_log(tmp_path):
    (tmp_path / "notes.txt").write_text(f"some notes\n{RULE}\nstep:1/2 train_time:1ms step_avg:1.00ms\n")
    with pytest.raises(NotALogError):
        parse_log(tmp_path / "notes.txt")


# ----- Plots -----

def test_plot_writes_a_png_with_curves(tmp_path):
    from PIL import Image
    paths = write_runs(tmp_path, [3.2761, 3.30], [83000, 120000])
    out = tmp_path / "losses.png"
    assert plot.main([*map(str, paths), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape[0] >= 300 and image.shape[1] >= 600
    for color in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # matplotlib's C0 and C1: one per run
        close = (np.abs(image - np.array(color)).sum(axis=2) < 30).sum()
        assert close > 200, color


def test_plot_draws_upstream_logs_beside_ours(tmp_path, capsys):
    from PIL import Image
    ours = write_log(tmp_path / "ours.txt")
    upstream_log(tmp_path / "upstream.txt", "2026")
    (tmp_path / "bench.txt").write_text("not a log\n")
    out = tmp_path / "losses.png"
    assert plot.main([str(tmp_path), "-o", str(out)]) == 0
    assert f"skipped {tmp_path / 'bench.txt'}: not a train log" in capsys.readouterr().out
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    for color in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # C0: ours.txt, C1: upstream.txt (name order)
        assert (np.abs(image - np.array(color)).sum(axis=2) < 30).sum() > 200, color
    assert ours.exists()


# ----- Records table -----

def make_record(records: Path, name: str, header: str, losses, times) -> Path:
    folder = records / name
    write_runs(folder, losses, times)
    (folder / "README.md").write_text(header + "\n\nNotes about this record.\n")
    return folder


RECORD_LOSSES = [3.2761, 3.2765, 3.2758]  # p < 0.01 for mean < 3.28


def test_table_is_regenerated_from_the_records(tmp_path):
    records = tmp_path / "records"
    make_record(records, "2026-12-01_faster", "date: 2026-12-01\ndescription: Faster | better",
                RECORD_LOSSES, [60000, 66000, 63000])
    make_record(records, "2026-11-23_baseline", "date: 2026-11-23\ndescription: Baseline\nauthors: someone",
                RECORD_LOSSES, [90000] * 3)
    (records / "__pycache__").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- records:begin -->\nold table\n<!-- records:end -->\n\nMore text.\n")
    args = ["--readme", str(readme), "--records", str(records)]
    assert table.main(args + ["--check"]) == 1
    assert table.main(args) == 0
    assert readme.read_text() == (
        "# Title\n\n<!-- records:begin -->\n"
        "| time (min) | date | description | logs |\n"
        "| ---: | --- | --- | --- |\n"
        "| 1.500 | 2026-11-23 | Baseline | [3 logs](records/2026-11-23_baseline) |\n"
        "| 1.050 | 2026-12-01 | Faster \\| better | [3 logs](records/2026-12-01_faster) |\n"
        "<!-- records:end -->\n\nMore text.\n")
    assert table.main(args + ["--check"]) == 0
    make_record(records, "2026-12-24_fastest", "date: 2026-12-24\ndescription: Fastest", RECORD_LOSSES, [50000] * 3)
    assert table.main(args + ["--check"]) == 1


@pytest.mark.parametrize("losses, verdict", [
    ([3.2790, 3.2770, 3.2801], "verdict is: NOT A RECORD"),
    ([3.2761], "verdict is: no verdict"),
])
def test_table_refuses_a_folder_that_is_not_a_record(tmp_path, capsys, losses, verdict):
    records = tmp_path / "records"
    make_record(records, "2026-11-23_slow", "date: 2026-11-23\ndescription: Slow", losses, [90000] * len(losses))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- records:begin -->\n<!-- records:end -->\n")
    assert table.main(["--readme", str(readme), "--records", str(records)]) == 2
    assert f"2026-11-23_slow: not a record, its logs' {verdict}" in capsys.readouterr().err
    assert readme.read_text() == "<!-- records:begin -->\n<!-- records:end -->\n"


def test_table_without_records_is_empty(tmp_path):
    (tmp_path / "records").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- records:begin -->\n| stale |\n<!-- records:end -->\n")
    assert table.main(["--readme", str(readme), "--records", str(tmp_path / "records")]) == 0
    assert readme.read_text() == "x\n<!-- records:begin -->\n<!-- records:end -->\n"


def test_table_check_cli_exit_status(tmp_path):
    records = tmp_path / "records"
    make_record(records, "2026-11-23_baseline", "date: 2026-11-23\ndescription: Baseline", RECORD_LOSSES,
                [90000] * 3)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- records:begin -->\n<!-- records:end -->\n")
    check = run_script("table", "--readme", readme, "--records", records, "--check")
    assert check.returncode == 1 and "out of date" in check.stderr
    assert run_script("table", "--readme", readme, "--records", records).returncode == 0
    assert run_script("table", "--readme", readme, "--records", records, "--check").returncode == 0


@pytest.mark.parametrize("readme_text, header, message", [
    ("no markers\n", "date: 2026-11-23\ndescription: B", "needs exactly one line <!-- records:begin -->"),
    ("<!-- records:end -->\n<!-- records:begin -->\n", "date: 2026-11-23\ndescription: B", "needs exactly one"),
    ("<!-- records:begin -->\n<!-- records:end -->\n", "date: 2026-11-23", "header lacks 'description: ...'"),
    ("<!-- records:begin -->\n<!-- records:end -->\n", "date: 23/11/2026\ndescription: B", "date must be YYYY-MM-DD"),
    ("<!-- records:begin -->\n<!-- records:end -->\n", "date: 2026-11-23\ntime: 1.5", "README.md:2: expected a header"),
])
def test_table_refuses_bad_input(tmp_path, capsys, readme_text, header, message):
    records = tmp_path / "records"
    make_record(records, "2026-11-23_baseline", header, RECORD_LOSSES, [90000] * 3)
    readme = tmp_path / "README.md"
    readme.write_text(readme_text)
    assert table.main(["--readme", str(readme), "--records", str(records)]) == 2
    assert message in capsys.readouterr().err
    assert readme.read_text() == readme_text


def test_record_folder_without_logs_is_an_error(tmp_path, capsys):
    folder = tmp_path / "records" / "2026-11-23_empty"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("date: 2026-11-23\ndescription: nothing\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- records:begin -->\n<!-- records:end -->\n")
    assert table.main(["--readme", str(readme), "--records", str(tmp_path / "records")]) == 2
    assert "2026-11-23_empty: a record folder needs its logs" in capsys.readouterr().err


# ----- Command lines -----

def test_ci_checks_the_records_table():
    # README says CI runs `records/table.py --check`; .ci/run must, and must fail when the check fails.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert any(line.split()[1:3] == ["records/table.py", "--check"] for line in ci.splitlines()
               if line.startswith("python3 "))

@pytest.mark.parametrize("name", ["recover", "summarize", "plot", "table"])
def test_every_script_has_help(name):
    done = run_script(name, "--help")
    assert done.returncode == 0 and "usage:" in done.stdout

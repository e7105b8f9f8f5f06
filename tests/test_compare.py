"""records/compare.py: two arms of runs, Welch's t-test on final val loss, and what makes arms incomparable.

Logs are written by test_records' `write_log`, directly from the log format train_gpt.py promises."""
import json
import math

import numpy as np
import pytest
import scipy.stats

from records import compare
from records.logfile import LogFormatError, parse_log
from tests.test_records import log_lines, resumed_lines, run_script, upstream_log, write_log

DATA_HPARAMS = {"val_files": "data/fineweb10B/fineweb_val_*.bin", "val_tokens": "10485760", "val_seq_len": "65536",
                "muon_lr": "0.05", "seed": "0", "log_dir": "logs"}


def with_lines(lines: list[str], **fields) -> list[str]:
    """Set `key:value` lines (hparam__name sets hparam:name=value): replace the line or add it before the steps."""
    lines = list(lines)
    for key, value in fields.items():
        prefix = f"hparam:{key[len('hparam__'):]}=" if key.startswith("hparam__") else f"{key}:"
        line = prefix + value
        at = [i for i, old in enumerate(lines) if old.startswith(prefix)]
        if at:
            lines[at[0]] = line
        else:
            lines.insert(next(i for i, old in enumerate(lines) if old.startswith("step:")), line)
    return lines


def write_arm(folder, losses, times_ms=None, source=None, per_run=None, **fields) -> list:
    """One complete log per loss, run_ids <folder><i>, in folder; fields as in with_lines over DATA_HPARAMS, and
    per_run[i] adds run i's own."""
    folder.mkdir(parents=True)
    times_ms = times_ms or [83000] * len(losses)
    per_run = per_run or [{}] * len(losses)
    fields = {**{f"hparam__{k}": v for k, v in DATA_HPARAMS.items()}, **fields}
    paths = []
    for i, (loss, time_ms) in enumerate(zip(losses, times_ms)):
        lines = with_lines(log_lines(f"{folder.name}{i}", loss, time_ms), **fields, **per_run[i])
        kw = {} if source is None else {"source": source}
        paths.append(write_log(folder / f"run{i}.txt", lines, **kw))
    return paths


A_LOSSES = [3.2901, 3.2921, 3.2883, 3.2912]
B_LOSSES = [3.2702, 3.2690, 3.2751]


def test_welch_difference_and_verdict_for_a_clearly_lower_arm(tmp_path):
    a = write_arm(tmp_path / "a", A_LOSSES, [83000, 84000, 82000, 83500])
    b = write_arm(tmp_path / "b", B_LOSSES, [80000, 81000, 80500])
    result = compare.compare(a, b)
    loss = result["val_loss_diff"]
    expected = scipy.stats.ttest_ind(B_LOSSES, A_LOSSES, equal_var=False)
    se = math.sqrt(np.var(A_LOSSES, ddof=1) / 4 + np.var(B_LOSSES, ddof=1) / 3)
    assert loss["diff"] == pytest.approx(np.mean(B_LOSSES) - np.mean(A_LOSSES)) and loss["diff"] < -0.015
    assert loss["se"] == pytest.approx(se) and loss["t"] == pytest.approx(expected.statistic) and loss["t"] < 0
    assert loss["p"] == pytest.approx(expected.pvalue)
    assert loss["p"] != pytest.approx(scipy.stats.ttest_ind(B_LOSSES, A_LOSSES).pvalue, rel=1e-3)  # not Student's
    assert result["verdict"] == f"B lower by {-loss['diff']:.4f} ± {se:.4f} (Welch t, p = {expected.pvalue:.2g})"
    arms = result["arms"]
    assert (arms["A"]["n"], arms["B"]["n"]) == (4, 3)
    assert arms["A"]["val_loss_std"] == pytest.approx(np.std(A_LOSSES, ddof=1))
    assert arms["B"]["train_time_ms_mean"] == pytest.approx(80500)
    assert result["train_time_ms_diff"]["diff"] == pytest.approx(80500 - 83125)
    assert result["differences"] == []  # run_ids and log_dir name the runs; they are no difference


def test_higher_arm_and_overlapping_arms_get_their_own_verdicts(tmp_path):
    a = write_arm(tmp_path / "a", B_LOSSES)
    b = write_arm(tmp_path / "b", A_LOSSES)
    assert compare.compare(a, b)["verdict"].startswith("B higher by 0.0")
    c = write_arm(tmp_path / "c", [3.2801, 3.2850])
    d = write_arm(tmp_path / "d", [3.2790, 3.2860, 3.2815])
    result = compare.compare(c, d)
    assert result["val_loss_diff"]["p"] > 0.5
    assert result["verdict"].startswith("no difference detectable at p < 0.05 with n = 2 / 3 (B - A = -0.0004 ± ")
    assert compare.compare(c, d, alpha=0.95)["verdict"].startswith("B lower by 0.0004")


def test_one_run_per_arm_gives_a_difference_without_p_value(tmp_path):
    a = write_arm(tmp_path / "a", [3.2900])
    b = write_arm(tmp_path / "b", [3.2700])
    result = compare.compare(a, b)
    assert result["val_loss_diff"] == {"diff": pytest.approx(-0.02), "se": None, "t": None, "df": None, "p": None}
    assert result["verdict"] == ("no p-value: an arm with one run has no spread to test against (n = 1 / 1); "
                                 "B - A = -0.0200")
    text = compare.report(result)
    assert "val loss B - A: -0.0200  (no p-value)" in text and "3.2900 ±" not in text


def log_train_windows_loss(paths: list, losses: list[float]) -> list:
    """Append the line train_gpt.py logs after the summary when --val_window_blocks lengthens the final validation."""
    for path, loss in zip(paths, losses):
        with open(path, "a") as f:
            f.write(f"info:val_at_train_windows val_loss:{loss:.4f} window_blocks:5:11\n")
    return paths


AT_TRAIN_A = [3.3101, 3.3120, 3.3085, 3.3110]
AT_TRAIN_B = [3.3098, 3.3131, 3.3080]  # B's gain at --val_window_blocks is gone at the training windows


def test_losses_at_the_training_windows_get_a_second_verdict_when_every_run_logs_one(tmp_path):
    a = log_train_windows_loss(write_arm(tmp_path / "a", A_LOSSES), AT_TRAIN_A)
    b = log_train_windows_loss(write_arm(tmp_path / "b", B_LOSSES), AT_TRAIN_B)
    result = compare.compare(a, b)
    assert result["verdict"].startswith("B lower by 0.0190")  # the final val loss's verdict is unchanged
    at_train = result["train_windows_val_loss_diff"]
    expected = scipy.stats.ttest_ind(AT_TRAIN_B, AT_TRAIN_A, equal_var=False)
    assert at_train["diff"] == pytest.approx(np.mean(AT_TRAIN_B) - np.mean(AT_TRAIN_A))
    assert at_train["p"] == pytest.approx(expected.pvalue) and at_train["p"] > 0.5
    assert result["train_windows_verdict"] == compare.verdict(at_train, 4, 3, compare.ALPHA)
    assert result["train_windows_verdict"].startswith("no difference detectable at p < 0.05 with n = 4 / 3 (B - A")
    lines = compare.report(result).splitlines()
    assert lines[-2] == f"verdict: {result['verdict']}"
    assert lines[-1] == f"verdict at the last training stage's windows: {result['train_windows_verdict']}"
    done = run_script("compare", tmp_path / "a", tmp_path / "b", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["train_windows_verdict"] == result["train_windows_verdict"]


def test_no_second_verdict_unless_every_run_of_both_arms_logs_its_loss_at_the_training_windows(tmp_path):
    a = write_arm(tmp_path / "a", A_LOSSES)
    b = write_arm(tmp_path / "b", B_LOSSES)
    before = compare.report(compare.compare(a, b))
    log_train_windows_loss(a, AT_TRAIN_A)
    log_train_windows_loss(b[:2], AT_TRAIN_B)  # one run of B logs none
    result = compare.compare(a, b)
    assert "train_windows_verdict" not in result and "train_windows_val_loss_diff" not in result
    assert compare.report(result) == before


def test_data_fields_that_no_run_logs_are_reported_unchecked(tmp_path):
    a = [write_log(tmp_path / f"a{i}.txt", run_id=f"a{i}", final_loss=3.29 - i / 100) for i in range(2)]
    b = [write_log(tmp_path / f"b{i}.txt", run_id=f"b{i}", final_loss=3.27 - i / 100) for i in range(2)]
    result = compare.compare(a, b)
    assert result["same_data"] == {"checked": ["train_files", "val_files", "val_tokens"], "unlogged": ["val_seq_len"]}
    assert "same data: train_files, val_files, val_tokens (not logged, so unchecked: val_seq_len)" in \
        compare.report(result).splitlines()


def test_incomplete_and_failed_runs_are_skipped_with_the_reason(tmp_path):
    a = write_arm(tmp_path / "a", [3.2901, 3.2921])
    b = write_arm(tmp_path / "b", [3.2702, 3.2690])
    cut = with_lines(log_lines("b_cut", 3.0, 83000), **{f"hparam__{k}": v for k, v in DATA_HPARAMS.items()})
    cut = [line for line in cut if not line.startswith(("final_val_loss", "step:20/", "step:19/"))]
    failed = with_lines(log_lines("b_oom", 3.0, 83000)[:-1], error="CUDA out of memory")
    b += [write_log(tmp_path / "b" / "cut.txt", cut), write_log(tmp_path / "b" / "oom.txt", failed)]
    result = compare.compare(a, b)
    assert result["arms"]["B"]["n"] == 2 and result["arms"]["B"]["val_loss_mean"] == pytest.approx(3.2696)
    assert result["skipped"] == [
        {"arm": "B", "file": str(tmp_path / "b" / "cut.txt"), "reason": "incomplete: no summary line, last step 18/20"},
        {"arm": "B", "file": str(tmp_path / "b" / "oom.txt"), "reason": "failed: CUDA out of memory"}]
    assert f"skipped (B) {tmp_path / 'b' / 'oom.txt'}: failed: CUDA out of memory" in compare.report(result)


def test_an_arm_without_a_complete_run_is_refused(tmp_path):
    a = write_arm(tmp_path / "a", [3.29])
    failed = write_log(tmp_path / "oom.txt", log_lines("oom", 3.0, 83000)[:-1] + ["error:CUDA out of memory"])
    with pytest.raises(compare.Refused, match="arm B has no complete run"):
        compare.compare(a, [failed])


@pytest.mark.parametrize("field, value, named", [
    ("hparam__val_tokens", "2097152", "val_tokens: A 10485760 | B 2097152"),
    ("hparam__val_seq_len", "32768", "val_seq_len: A 65536 | B 32768"),
    ("hparam__train_files", "data/text/fineweb_train_*.bin",
     "train_files: A data/fineweb10B/fineweb_train_*.bin | B data/text/fineweb_train_*.bin"),
    ("hparam__val_files", "data/text/fineweb_val_*.bin",
     "val_files: A data/fineweb10B/fineweb_val_*.bin | B data/text/fineweb_val_*.bin"),
])
def test_arms_on_different_data_are_refused_naming_the_field(tmp_path, field, value, named):
    a = write_arm(tmp_path / "a", [3.29, 3.28])
    b = write_arm(tmp_path / "b", [3.27, 3.28], **{field: value})
    result = run_script("compare", tmp_path / "a", tmp_path / "b")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"refused: the arms were not trained and validated on the same data: {named}\n"
    with pytest.raises(compare.Refused):
        compare.compare(a[:1], b[1:])


SAME = {"train_data": "1" * 64, "val_data": "2" * 64}  # the trainer's sha256 lines of the tokens
OTHER = {"train_data": "3" * 64, "val_data": "2" * 64}


def test_logged_data_sha256_decides_over_file_names(tmp_path):
    a = write_arm(tmp_path / "a", [3.29, 3.28], **SAME)
    b = write_arm(tmp_path / "b", [3.27, 3.28], hparam__train_files="/scratch/copy/fineweb_train_*.bin", **SAME)
    assert parse_log(a[0]).train_data == "1" * 64  # read from the log's own train_data: line
    result = compare.compare(a, b)  # the same tokens under another path: compared, the path named
    assert result["same_data"] == {"checked": ["train_data", "val_data", "val_tokens", "val_seq_len"],
                                   "unlogged": []}
    assert [d["field"] for d in result["differences"]] == ["hparam train_files"]
    mixed_a = write_arm(tmp_path / "mixed_a", [3.29, 3.28], per_run=[SAME, OTHER])
    mixed_c = write_arm(tmp_path / "mixed_c", [3.27, 3.28], per_run=[SAME, OTHER])
    with pytest.raises(compare.Refused, match=f"train_data: A {'1' * 64}, {'3' * 64} \\| B {'1' * 64}, {'3' * 64}$"):
        compare.compare(mixed_a, mixed_c)  # the same file names, but the runs trained on different tokens
    half = write_arm(tmp_path / "half", [3.29, 3.28], per_run=[SAME, {}])
    with pytest.raises(compare.Refused, match="train_files"):  # run1 logs no sha: file names decide
        compare.compare(half, b)


def test_other_differences_are_named_without_refusing(tmp_path):
    a = write_arm(tmp_path / "a", [3.29, 3.28])
    b = write_arm(tmp_path / "b", [3.27, 3.28], source=b"print('the idea')\n", hparam__muon_lr="0.06",
                  hparam__new_flag="true", gpu="1x NVIDIA H200", world_size="1", torch="2.13.0",
                  hparam__seed="1", hparam__log_dir="logs/b")
    b += write_arm(tmp_path / "b2", [3.28], hparam__muon_lr="0.06", gpu="1x NVIDIA H200", world_size="1",
                   hparam__new_flag="true")
    result = compare.compare(a, b)
    diffs = {d["field"]: (d["A"], d["B"]) for d in result["differences"]}
    assert diffs == {
        "hparam muon_lr": (["0.05"], ["0.06"]), "hparam new_flag": (["(not logged)"], ["true"]),
        "hparam seed": (["0"], ["0", "1"]), "world_size": (["8"], ["1"]), "gpu": (["8x NVIDIA H100 80GB HBM3"],
                                                                           ["1x NVIDIA H200"]),
        "torch": (["2.11.0+cu130"], ["2.11.0+cu130", "2.13.0"]),
        "source_sha256": ([parse_log(a[0]).source_sha256], sorted({parse_log(p).source_sha256 for p in b}))}
    assert result["arms"]["B"]["n"] == 3
    text = compare.report(result)
    assert "differs: hparam muon_lr: A 0.05 | B 0.06" in text
    assert f"differs: source_sha256: A {diffs['source_sha256'][0][0][:12]} | B " in text


def test_command_line_arms_as_folders_or_as_file_lists(tmp_path):
    a = write_arm(tmp_path / "a", A_LOSSES)
    b = write_arm(tmp_path / "b", B_LOSSES)
    by_folder = run_script("compare", tmp_path / "a", tmp_path / "b")
    assert by_folder.returncode == 0, by_folder.stderr
    lines = by_folder.stdout.splitlines()
    assert lines[1].startswith("A    4   3.2904 ± 0.0016") and lines[2].startswith("B    3   3.2714 ± 0.0032")
    assert "same data: train_files, val_files, val_tokens, val_seq_len" in lines
    assert lines[-1].startswith("verdict: B lower by 0.0190 ± 0.0020 (Welch t, p = ")
    by_files = run_script("compare", "--a", *a, "--b", *b, "--json")
    assert by_files.returncode == 0, by_files.stderr
    parsed = json.loads(by_files.stdout)
    assert parsed["verdict"] == lines[-1][len("verdict: "):] and parsed["arms"]["A"]["logs"] == list(map(str, a))
    assert run_script("compare", tmp_path / "a").returncode == 2
    assert run_script("compare", tmp_path / "a", "--a", *a, "--b", *b).returncode == 2
    twice = run_script("compare", "--a", *a, "--b", b[0], a[1])
    assert twice.returncode == 2 and "a log is given twice" in twice.stderr


def test_text_files_in_a_folder_that_are_no_logs_are_skipped_and_named(tmp_path):
    write_arm(tmp_path / "a", A_LOSSES)
    write_arm(tmp_path / "b", B_LOSSES)
    bench = tmp_path / "b" / "a_bench.txt"
    bench.write_text("current fwd+bwd 5.049 ms\n")
    done = run_script("compare", tmp_path / "a", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    assert f"skipped (B) {bench}: not a train log (no source block, ours or upstream's)" in done.stdout.splitlines()
    assert done.stdout.splitlines()[2].startswith("B    3   3.2714 ± 0.0032")
    result = compare.compare([tmp_path / "a"], [tmp_path / "b"])
    assert result["skipped"] == [{"arm": "B", "file": str(bench),
                                  "reason": "not a train log (no source block, ours or upstream's)"}]
    assert str(bench) not in result["arms"]["B"]["logs"] and len(result["arms"]["B"]["logs"]) == 3
    named = run_script("compare", "--a", tmp_path / "a", "--b", bench)
    assert named.returncode == 2 and "a_bench.txt:1: no source block" in named.stderr
    with pytest.raises(LogFormatError, match="no source block"):
        compare.compare([tmp_path / "a"], [bench])


def test_a_segment_resumed_without_a_resume_line_is_skipped(tmp_path):
    a = write_arm(tmp_path / "a", [3.2901, 3.2921], [83000, 84000])
    b = write_arm(tmp_path / "b", [3.2702, 3.2690])
    data = {f"hparam__{k}": v for k, v in DATA_HPARAMS.items()}
    resumed = with_lines(resumed_lines(10, 16500, run_id="res_ok"), **data)  # its 33 s count every segment
    carried = write_log(tmp_path / "b" / "res.txt", lines=resumed)
    old = [line for line in with_lines(resumed_lines(10, 5000, time_ms=13000, run_id="res_old"), **data)
           if not line.startswith("resume_step:")]  # its 13 s count only the time after the resume
    segment = write_log(tmp_path / "b" / "seg.txt", lines=old)
    result = compare.compare(a, b + [carried, segment])
    assert result["arms"]["B"]["n"] == 3 and result["arms"]["B"]["train_time_ms_mean"] == pytest.approx(
        (83000 * 2 + 33000) / 3)
    assert result["skipped"] == [{"arm": "B", "file": str(segment), "reason": (
        "resumed segment: resumed without a resume_step line, so its train_time counts only the time after the "
        "resume")}]


def test_upstream_arms_are_compared_with_the_data_unchecked(tmp_path):
    arms = {}
    for arm, losses in (("a", A_LOSSES), ("b", B_LOSSES)):
        (tmp_path / arm).mkdir()
        for i, loss in enumerate(losses):
            upstream_log(tmp_path / arm / f"u{i}.txt", "2025-print", final_loss=loss, time_ms=170000 + 1000 * i)
        arms[arm] = sorted((tmp_path / arm).glob("*.txt"))
    result = compare.compare([tmp_path / "a"], [tmp_path / "b"])
    assert (result["arms"]["A"]["n"], result["arms"]["B"]["n"]) == (4, 3)
    assert result["val_loss_diff"]["diff"] == pytest.approx(np.mean(B_LOSSES) - np.mean(A_LOSSES), abs=1e-9)
    assert result["verdict"].startswith("B lower by 0.0190")
    assert result["same_data"] == {"checked": [], "unlogged": ["train_files", "val_files", "val_tokens",
                                                               "val_seq_len"]}
    ours = write_arm(tmp_path / "ours", [3.2901, 3.2921])
    mixed = run_script("compare", "--a", *ours, "--b", *arms["b"])
    assert mixed.returncode == 2 and mixed.stdout == ""
    assert mixed.stderr == ("refused: upstream logs (modded-nanogpt's layout) cannot be compared with ours: they "
                            "log neither the train/val data nor val_tokens, so the same data cannot be checked; "
                            "layouts: A ours | B upstream\n")
    with pytest.raises(compare.Refused, match="layouts: A ours, upstream \\| B upstream$"):
        compare.compare(ours + arms["a"][:1], arms["b"])

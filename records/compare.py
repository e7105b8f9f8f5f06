"""Compare two sets of runs, A and B: is B's final val loss lower or higher than A's beyond seed noise?

    python records/compare.py logs/baseline/ logs/idea/          # A and B: each a folder of *.txt logs or one log
    python records/compare.py --a logs/a1.txt logs/a2.txt --b logs/b1.txt logs/b2.txt logs/b3.txt --json

Only complete runs count; the others are listed with the reason, and so are text files in a folder that are no
train log at all (a named file that is none is an error). A segment resumed without a resume_step line is skipped
too: its train time counts only the time after its resume. Per arm: n, and mean ± standard deviation of the
final val loss and of the train time. Then B - A for both, tested with Welch's t-test (two-sided, unequal
variances, scipy): there "±" is the standard error of the difference, sqrt(s_A²/n_A + s_B²/n_B). An arm with one
run has no spread, so no p-value. The verdict uses --alpha (default 0.05). When every counted run of both arms
logs `info:val_at_train_windows` (the final weights validated again at the last training stage's windows, which
train_gpt.py adds when --val_window_blocks lengthens the final validation), a second verdict compares those losses
the same way: a gain there is the weights', not the longer evaluation context's.

The arms must have trained and been validated on the same data, or it refuses with exit code 2: the train_data /
val_data sha256 lines when every run logs them, else the train_files / val_files hparams; val_tokens and
val_seq_len always. Every other difference (hyperparameters, world size, GPU, software, source) is named and the
comparison goes on. Upstream's published logs (KellerJordan/modded-nanogpt) log none of the data fields: two arms of
them are compared with the data unchecked, and an arm mixing them with ours is refused (exit code 2).
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path

import scipy.stats

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from records.logfile import LogFormatError, RunLog, load_logs
from records.stats import mean_std
from records.summarize import _json_safe, check_distinct, resumed_without_time

ALPHA = 0.05
DATA_SHA = ("train_data", "val_data")  # sha256 of the tokens, logged by the trainer as train_data:<hex>
DATA_PATHS = ("train_files", "val_files")  # the fallback for logs without them: the hparams naming the shards
VAL_HPARAMS = ("val_tokens", "val_seq_len")  # what the val loss averages over, whichever way the files are checked
ENVIRONMENT = ("world_size", "gpu", "torch", "triton", "cuda", "source_sha256")
RUN_NAMING = {"run_id", "log_dir", "checkpoint_dir"}  # hparams that say where a run writes, not what it computes
TRAIN_WINDOWS = re.compile(r"val_at_train_windows val_loss:(\S+) window_blocks:\S+")  # an info line's value


class Refused(ValueError):
    """The arms cannot be compared; the message is one line."""


def skip_reason(run: RunLog) -> str | None:
    if run.status == "complete":
        if resumed_without_time(run):
            return "resumed segment: resumed without a resume_step line, so its train_time counts only the time " \
                   "after the resume"
        return None
    if run.status == "failed":
        return f"failed: {run.errors[0]}"
    last = f", last step {run.steps[-1].step}/{run.steps[-1].total}" if run.steps else ", no step logged"
    return f"incomplete: no summary line{last}"


def train_windows_loss(run: RunLog) -> float | None:
    """The final weights' val loss at the last training stage's windows; None if the run does not log it."""
    found = [m for m in map(TRAIN_WINDOWS.fullmatch, run.info) if m]
    return float(found[-1][1]) if found else None


def values(runs: list[RunLog], get) -> list[str]:
    """The distinct values of one field over runs, as sorted strings; '(not logged)' for a missing one."""
    return sorted({"(not logged)" if get(r) is None else str(get(r)) for r in runs})


def data_fields(runs: list[RunLog]) -> dict:
    """{field: getter} identifying the training and validation data; the sha256 lines only if every run has them."""
    by_sha = all(getattr(r, key) for r in runs for key in DATA_SHA)
    files = {k: (lambda r, k=k: getattr(r, k)) for k in DATA_SHA} if by_sha else \
        {k: (lambda r, k=k: r.hparams.get(k)) for k in DATA_PATHS}
    return {**files, **{k: (lambda r, k=k: r.hparams.get(k)) for k in VAL_HPARAMS}}


def check_same_data(a: list[RunLog], b: list[RunLog]) -> dict:
    """-> {"checked": fields equal in every run, "unlogged": fields no run logs}; raises Refused naming every data
    field in which the runs differ (a field logged by some runs only differs too)."""
    fields = data_fields(a + b)
    differ = [f"{name}: A {', '.join(values(a, get))} | B {', '.join(values(b, get))}"
              for name, get in fields.items() if len(values(a + b, get)) > 1]
    if differ:
        raise Refused("refused: the arms were not trained and validated on the same data: " + "; ".join(differ))
    unlogged = [name for name, get in fields.items() if values(a + b, get) == ["(not logged)"]]
    return {"checked": [name for name in fields if name not in unlogged], "unlogged": unlogged}


def differences(a: list[RunLog], b: list[RunLog]) -> list[dict]:
    """Every hyperparameter (by name) and environment field whose values differ between the arms."""
    names = sorted({n for r in a + b for n in r.hparams} - RUN_NAMING)
    getters = {**{f"hparam {n}": (lambda r, n=n: r.hparams.get(n)) for n in names},
               **{k: (lambda r, k=k: getattr(r, k)) for k in ENVIRONMENT}}
    return [{"field": field, "A": values(a, get), "B": values(b, get)} for field, get in getters.items()
            if values(a, get) != values(b, get)]


def welch(a: list[float], b: list[float]) -> dict:
    """B - A of the means, its standard error and Welch's t, df and two-sided p; se/t/df/p are None with a single
    run in an arm, and t/df/p are None when neither arm has any spread."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    out = {"diff": mean_b - mean_a, "se": None, "t": None, "df": None, "p": None}
    if std_a is None or std_b is None:
        return out
    out["se"] = math.sqrt(std_a ** 2 / len(a) + std_b ** 2 / len(b))
    if out["se"] > 0:
        test = scipy.stats.ttest_ind(b, a, equal_var=False)
        out.update(t=float(test.statistic), df=float(test.df), p=float(test.pvalue))
    return out


def verdict(loss: dict, n_a: int, n_b: int, alpha: float) -> str:
    diff, se, p = loss["diff"], loss["se"], loss["p"]
    if p is None:
        why = "an arm with one run has no spread to test against" if se is None else "neither arm has any spread"
        return f"no p-value: {why} (n = {n_a} / {n_b}); B - A = {diff:+.4f}"
    if p < alpha:
        return f"B {'lower' if diff < 0 else 'higher'} by {abs(diff):.4f} ± {se:.4f} (Welch t, p = {p:.2g})"
    return (f"no difference detectable at p < {alpha} with n = {n_a} / {n_b} "
            f"(B - A = {diff:+.4f} ± {se:.4f}, Welch t, p = {p:.2g})")


def check_layouts(parsed: dict[str, list[RunLog]]) -> None:
    """Upstream logs name neither their data nor val_tokens: against ours, nothing says they validated alike."""
    layouts = {arm: sorted({r.layout for r in runs}) for arm, runs in parsed.items()}
    if len({layout for names in layouts.values() for layout in names}) > 1:
        raise Refused("refused: upstream logs (modded-nanogpt's layout) cannot be compared with ours: they log "
                      "neither the train/val data nor val_tokens, so the same data cannot be checked; "
                      f"layouts: A {', '.join(layouts['A'])} | B {', '.join(layouts['B'])}")


def arm_summary(logs: list[RunLog], runs: list[RunLog]) -> dict:
    losses, times = [r.final.val_loss for r in runs], [r.final.train_time_ms for r in runs]
    (loss_mean, loss_std), (time_mean, time_std) = mean_std(losses), mean_std(times)
    return {"logs": [str(r.path) for r in logs], "n": len(runs), "val_loss_mean": loss_mean, "val_loss_std": loss_std,
            "train_time_ms_mean": time_mean, "train_time_ms_std": time_std}


def _not_a_log(arm: str, item: str) -> dict:
    """load_logs describes a skipped file as '<path>: <reason>'; its reason holds no ': ', the path may."""
    file, _, reason = item.rpartition(": ")
    return {"arm": arm, "file": file, "reason": reason}


def compare(args_a: list, args_b: list, alpha: float = ALPHA) -> dict:
    """The whole comparison as a dict; each arm a list of log files or folders of *.txt logs. Raises Refused when
    the arms cannot be compared, LogFormatError for a malformed log or a named file that is no log."""
    parsed, skipped = {}, []
    for arm, args in (("A", args_a), ("B", args_b)):
        parsed[arm], not_logs = load_logs(args)
        skipped += [_not_a_log(arm, item) for item in not_logs]
    paths = [r.path.resolve() for r in parsed["A"] + parsed["B"]]
    if len(set(paths)) < len(paths):
        raise Refused("refused: a log is given twice (in one arm or in both); a run may be counted only once")
    check_distinct(parsed["A"] + parsed["B"])
    skipped += [{"arm": arm, "file": str(r.path), "reason": skip_reason(r)}
                for arm, runs in parsed.items() for r in runs if skip_reason(r)]
    a, b = ([r for r in parsed[arm] if not skip_reason(r)] for arm in ("A", "B"))
    for arm, runs in (("A", a), ("B", b)):
        if not runs:
            raise Refused(f"refused: arm {arm} has no complete run ({len(parsed[arm])} log(s), none finished)")
    check_layouts({"A": a, "B": b})
    checked = check_same_data(a, b)
    loss = welch([r.final.val_loss for r in a], [r.final.val_loss for r in b])
    result = {"alpha": alpha, "arms": {"A": arm_summary(parsed["A"], a), "B": arm_summary(parsed["B"], b)},
              "skipped": skipped, "same_data": checked, "differences": differences(a, b), "val_loss_diff": loss,
              "train_time_ms_diff": welch([r.final.train_time_ms for r in a], [r.final.train_time_ms for r in b]),
              "verdict": verdict(loss, len(a), len(b), alpha)}
    at_train = [[train_windows_loss(r) for r in runs] for runs in (a, b)]
    if None not in at_train[0] + at_train[1]:
        diff = welch(*at_train)
        result.update(train_windows_val_loss_diff=diff, train_windows_verdict=verdict(diff, len(a), len(b), alpha))
    return result


def _pm(mean: float, spread: float | None, fmt: str, scale: float = 1.0) -> str:
    return format(mean / scale, fmt) + ("" if spread is None else " ± " + format(spread / scale, fmt.lstrip("+")))


def _test(d: dict) -> str:
    return "no p-value" if d["p"] is None else f"Welch t = {d['t']:.3f}, df = {d['df']:.1f}, p = {d['p']:.3g}"


def _short(value: str) -> str:
    return value[:12] if len(value) == 64 else value  # a sha256: its first 12 hex digits say enough


def report(result: dict) -> str:
    lines = ["arm  n   val loss (mean ± std)  train time s (mean ± std)  logs"]
    for arm, s in result["arms"].items():
        logs = ", ".join(s["logs"]) if len(s["logs"]) <= 3 else f"{s['logs'][0]}, ... ({len(s['logs'])} logs)"
        lines.append(f"{arm:<4} {s['n']:<3} {_pm(s['val_loss_mean'], s['val_loss_std'], '.4f'):<22} "
                     f"{_pm(s['train_time_ms_mean'], s['train_time_ms_std'], '.3f', 1000):<26} {logs}")
    lines += [f"skipped ({s['arm']}) {s['file']}: {s['reason']}" for s in result["skipped"]]
    same = result["same_data"]
    lines.append(f"same data: {', '.join(same['checked']) or 'nothing to check'}"
                 + (f" (not logged, so unchecked: {', '.join(same['unlogged'])})" if same["unlogged"] else ""))
    lines += [f"differs: {d['field']}: A {', '.join(map(_short, d['A']))} | B {', '.join(map(_short, d['B']))}"
              for d in result["differences"]]
    loss, time_ = result["val_loss_diff"], result["train_time_ms_diff"]
    lines.append(f"val loss B - A: {_pm(loss['diff'], loss['se'], '+.4f')}  ({_test(loss)})")
    lines.append(f"train time B - A: {_pm(time_['diff'], time_['se'], '+.3f', 1000)} s  ({_test(time_)})")
    lines.append("(± after a mean: standard deviation of the runs; after B - A: standard error of the difference)")
    lines.append(f"verdict: {result['verdict']}")
    if "train_windows_verdict" in result:
        lines.append(f"verdict at the last training stage's windows: {result['train_windows_verdict']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compare the final val loss and train time of two sets of "
                                     "train_gpt.py runs with Welch's t-test; refuses arms trained or validated on "
                                     "different data.")
    parser.add_argument("arms", nargs="*", metavar="A B", help="arm A and arm B: each a folder of *.txt logs or a log")
    parser.add_argument("--a", nargs="+", metavar="LOG", help="arm A as log files or folders (with --b, not A B)")
    parser.add_argument("--b", nargs="+", metavar="LOG", help="arm B as log files or folders")
    parser.add_argument("--alpha", type=float, default=ALPHA, help=f"p-value threshold for the verdict ({ALPHA})")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON instead of text")
    args = parser.parse_args(argv)
    if args.a or args.b:
        if args.arms or not (args.a and args.b):
            parser.error("give both --a and --b, and no positional arms")
        arms = args.a, args.b
    elif len(args.arms) == 2:
        arms = [args.arms[0]], [args.arms[1]]
    else:
        parser.error(f"expected two arms A B (or --a ... --b ...), got {len(args.arms)} positional argument(s)")
    try:
        result = compare(arms[0], arms[1], args.alpha)
    except (LogFormatError, ValueError, OSError) as e:  # Refused is a ValueError
        print(e if isinstance(e, Refused) else f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(_json_safe(result), indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Summarize runs and judge a record: is the mean final val loss below the target with p < alpha?

A verdict needs comparable runs: FineWeb validation on 10,485,760 tokens, the record's world size, one source,
one validation set, whole runs. Anything else gets "not comparable: <field> ..." and plain statistics only.

    python records/summarize.py records/2026-11-23_baseline/          # a folder means its *.txt logs
    python records/summarize.py logs/a.txt logs/b.txt --target=3.28 --json
"""
import argparse
import json
import math
import sys
from fnmatch import fnmatch
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from records.logfile import LogFormatError, RunLog, load_logs
from records.stats import mean_std, one_sided_t_test

TARGET = 3.28
ALPHA = 0.01  # the record rule: p < 0.01 for "mean val loss < target"
RECORD_WORLD_SIZE = 8
RECORD_VAL_TOKENS = "10485760"
FINEWEB_VAL = "*fineweb_val_*"  # local text tokenized by data/tokenize_text.py may match too: val_tokens decides


def resumed_without_time(run: RunLog) -> bool:
    """An old-style segment: resumed from a checkpoint, but its train_time counts only the time since."""
    return bool(run.hparams.get("resume")) and run.resume_step is None


def run_problems(run: RunLog) -> list[tuple[str, str]]:
    """(field, what is wrong) for each reason this one run cannot count toward a record."""
    if run.layout == "upstream":
        return [(field, "unknown: upstream logs do not log it") for field in ("val_tokens", "world_size")]
    out = []
    val_files, val_tokens, world = run.hparams.get("val_files"), run.hparams.get("val_tokens"), run.world_size
    if val_files is None:
        out.append(("val_files", "unknown: not logged"))
    elif not fnmatch(val_files, FINEWEB_VAL):
        out.append(("val_files", f"differs: {val_files} is not FineWeb validation ({FINEWEB_VAL})"))
    if val_tokens is None:
        out.append(("val_tokens", "unknown: not logged"))
    elif val_tokens != RECORD_VAL_TOKENS:
        out.append(("val_tokens", f"differs: {val_tokens}, a record validates on {RECORD_VAL_TOKENS}"))
    if world is None:
        out.append(("world_size", "unknown: not logged"))
    elif world < RECORD_WORLD_SIZE:
        out.append(("world_size", f"differs: {world}-GPU accumulation run, not a record time"))
    elif world != RECORD_WORLD_SIZE:
        out.append(("world_size", f"differs: {world}, a record runs on {RECORD_WORLD_SIZE}"))
    if run.status != "complete":
        out.append(("status", f"differs: {run.status}, a record needs whole runs"))
    if resumed_without_time(run):
        out.append(("train_time", "refused: resumed without a resume_step line, so it counts only the time "
                                  "after the resume"))
    return out


def comparability(runs: list[RunLog]) -> list[str]:
    """Every reason the runs cannot make a record, each naming its field and the runs it concerns."""
    grouped = {}
    for run in runs:
        for problem in run_problems(run):
            grouped.setdefault(problem, []).append(run.name)
    out = [f"{field} {what} ({', '.join(names)})" for (field, what), names in grouped.items()]
    for field, values in (("source", {r.source_sha256 for r in runs}), ("val_data", {r.val_data for r in runs})):
        if len(values) > 1:
            shown = ", ".join(sorted("none" if v is None else v[:12] for v in values))
            out.append(f"{field} differs across runs ({len(values)} sha256s: {shown})")
    return out


def run_row(run: RunLog) -> dict:
    final = run.final
    return {"file": str(run.path), "run_id": run.run_id, "layout": run.layout, "status": run.status,
            "final_val_loss": final.val_loss if final else None, "steps": final.steps if final else None,
            "train_time_ms": final.train_time_ms if final else None, "gpu": run.gpu, "torch": run.torch,
            "world_size": run.world_size, "source_sha256": run.source_sha256, "val_data": run.val_data,
            "resume_step": run.resume_step, "errors": run.errors}


def check_distinct(runs: list[RunLog]) -> None:
    """The same run counted twice would shrink the p-value; refuse repeated run_ids."""
    seen = {}
    for run in runs:
        if run.run_id is None:
            continue
        if run.run_id in seen:
            raise ValueError(f"{run.path}: run_id {run.run_id} is also the run_id of {seen[run.run_id]}; "
                             f"a run may be counted only once")
        seen[run.run_id] = run.path


def verdict(problems: list[str], n: int, mean: float | None, p: float | None, target: float,
            alpha: float) -> tuple[bool, str]:
    if problems:
        return False, "not comparable: " + "; ".join(problems)
    if n == 0:
        return False, "no verdict: no run finished"
    if p is None:
        why = "needs at least 2 finished runs" if n < 2 else "all runs have the same loss, equal to the target"
        return False, f"no verdict: the p-value is undefined ({why}); mean val loss {mean:.4f}, n={n}"
    if p < alpha:
        return True, (f"RECORD: mean val loss {mean:.4f} < {target} with p={p:.3g} < {alpha} (n={n})")
    return False, f"NOT A RECORD: mean val loss {mean:.4f}, p={p:.3g} >= {alpha} for mean < {target} (n={n})"


def summarize(runs: list[RunLog], target: float = TARGET, alpha: float = ALPHA, skipped=()) -> dict:
    """Per-run facts and, over the whole finished runs, mean/std val loss and train time; the one-sided t-test
    and a verdict only when the runs are comparable."""
    check_distinct(runs)
    finished = [r for r in runs if r.status == "complete" and not resumed_without_time(r)]
    losses = [r.final.val_loss for r in finished]
    times = [r.final.train_time_ms for r in finished]
    problems = comparability(runs)
    out = {"target": target, "alpha": alpha, "runs": [run_row(r) for r in runs], "n": len(finished),
           "comparable": not problems, "problems": problems, "skipped": list(skipped),
           "val_loss_mean": None, "val_loss_std": None, "t": None, "p_value": None,
           "train_time_ms_mean": None, "train_time_ms_std": None,
           "train_time_ms_min": None, "train_time_ms_max": None, "notes": []}
    if finished:
        out["val_loss_mean"], out["val_loss_std"] = mean_std(losses)
        out["train_time_ms_mean"], out["train_time_ms_std"] = mean_std(times)
        out["train_time_ms_min"], out["train_time_ms_max"] = min(times), max(times)
        if not problems:
            out["t"], out["p_value"] = one_sided_t_test(losses, target)
    left_out = [r for r in runs if r not in finished]
    if left_out:
        out["notes"].append(f"{len(left_out)} run(s) are left out of the statistics: "
                            + ", ".join(f"{r.name} ({'resumed segment' if r.status == 'complete' else r.status})"
                                        for r in left_out))
    out["is_record"], out["verdict"] = verdict(problems, len(finished), out["val_loss_mean"], out["p_value"],
                                               target, alpha)
    return out


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(summary: dict) -> str:
    header = ["file", "run_id", "status", "val_loss", "steps", "time_s", "gpu", "torch", "world", "source", "log"]
    rows = [[Path(r["file"]).name, r["run_id"] or "-", r["status"], _num(r["final_val_loss"], ".4f"),
             _num(r["steps"], "d"), _num(None if r["train_time_ms"] is None else r["train_time_ms"] / 1000, ".3f"),
             r["gpu"] or "-", r["torch"] or "-", _num(r["world_size"], "d"), r["source_sha256"][:12], r["layout"]]
            for r in summary["runs"]]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    for row, r in zip(rows, summary["runs"]):
        lines += [f"  {row[0]}: error: {e}" for e in r["errors"]]
    s = summary
    lines.append("")
    lines.append(f"finished runs: {s['n']}")
    if s["n"]:
        std = "undefined (one run)" if s["val_loss_std"] is None else f"{s['val_loss_std']:.5f}"
        lines.append(f"val loss: mean {s['val_loss_mean']:.4f}  std {std}")
        if s["comparable"] and s["p_value"] is None:
            lines.append(f"t-test for mean < {s['target']}: undefined")
        elif s["comparable"]:
            lines.append(f"t-test for mean < {s['target']}: t={s['t']:.4f}  p={s['p_value']:.4g}  "
                         f"(df={s['n'] - 1}, one-sided)")
        tstd = "undefined (one run)" if s["train_time_ms_std"] is None else f"{s['train_time_ms_std'] / 1000:.3f} s"
        lines.append(f"train time: mean {s['train_time_ms_mean'] / 1000:.3f} s "
                     f"({s['train_time_ms_mean'] / 60000:.4f} min)  std {tstd}  "
                     f"min {s['train_time_ms_min'] / 1000:.3f} s  max {s['train_time_ms_max'] / 1000:.3f} s")
    lines += [f"note: {note}" for note in s["notes"]]
    lines += [f"skipped {item}" for item in s["skipped"]]
    lines.append(f"verdict: {s['verdict']}")
    return "\n".join(lines)


def _json_safe(value):
    """JSON has no inf/nan: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Summarize train_gpt.py logs: final val loss, train time, and a "
                                     "one-sided t-test of mean val loss < target (record rule: p < alpha).")
    parser.add_argument("logs", nargs="+", help="log files, or folders whose *.txt files are logs")
    parser.add_argument("--target", type=float, default=TARGET, help=f"val loss to beat (default {TARGET})")
    parser.add_argument("--alpha", type=float, default=ALPHA, help=f"p-value threshold (default {ALPHA})")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    args = parser.parse_args(argv)
    try:
        runs, skipped = load_logs(args.logs)
        summary = summarize(runs, args.target, args.alpha, skipped)
    except (LogFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(_json_safe(summary), indent=2) if args.json else report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

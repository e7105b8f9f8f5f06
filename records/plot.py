"""Plot the loss curves of several logs in one PNG: loss against step (left) and against train time (right).
Upstream's published logs plot beside ours, labelled as such.

    python records/plot.py records/2026-11-23_baseline/ logs/new.txt -o compare.png
"""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from records.logfile import LogFormatError, RunLog, load_logs
from records.summarize import TARGET


def curves(run: RunLog, key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, train times in s, losses) of the step lines that log `key` ('val_loss' or 'train_loss')."""
    points = [(s.step, s.train_time_ms / 1000, getattr(s, key)) for s in run.steps if getattr(s, key) is not None]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def plot(runs: list[RunLog], out: Path, target: float = TARGET, ylim=None, title=None) -> None:
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        notes = [n for n in ("upstream" if run.layout == "upstream" else None,
                             None if run.status == "complete" else run.status) if n]
        label = f"{run.name} ({', '.join(notes)})" if notes else run.name
        steps, seconds, train = curves(run, "train_loss")
        by_step.plot(steps, train, color=color, lw=0.7, alpha=0.35)
        by_time.plot(seconds, train, color=color, lw=0.7, alpha=0.35)
        steps, seconds, val = curves(run, "val_loss")
        by_step.plot(steps, val, color=color, marker=".", label=label)
        by_time.plot(seconds, val, color=color, marker=".", label=label)
    for ax, xlabel in ((by_step, "step"), (by_time, "train time (s)")):
        ax.axhline(target, color="gray", ls="--", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    by_step.set_ylabel("loss (val: dots, train: faint)")
    if ylim:
        by_step.set_ylim(*ylim)
    by_time.legend(fontsize="small")
    fig.suptitle(title or f"{len(runs)} run(s); dashed line: target {target}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Plot val loss (and train loss where logged) of several "
                                     "train_gpt.py logs against step and against train time, in one PNG.")
    parser.add_argument("logs", nargs="+", help="log files, or folders whose *.txt files are logs")
    parser.add_argument("-o", "--out", default="losses.png", help="PNG to write (default losses.png)")
    parser.add_argument("--target", type=float, default=TARGET, help=f"dashed line at this loss (default {TARGET})")
    parser.add_argument("--ylim", type=float, nargs=2, metavar=("LOW", "HIGH"), help="loss axis range")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args(argv)
    try:
        runs, skipped = load_logs(args.logs)
        if not runs:
            raise ValueError("none of the files is a train log")
        plot(runs, Path(args.out), args.target, args.ylim, args.title)
    except (LogFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for item in skipped:
        print(f"skipped {item}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Recover the exact train_gpt.py a log holds (verified against its sha256 and size), and optionally rerun it
with the command line the log recorded.

    python records/recover.py records/2026-11-23_baseline/run1.txt                  # -> recovered/run1/train_gpt.py
    python records/recover.py run1.txt --run --dry_run                              # print the command only
    python records/recover.py run1.txt -o /tmp/train_gpt.py --run                   # rerun it
"""
import argparse
import hashlib
import shlex
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from records.logfile import LogFormatError, extract_source, parse_log

SCRIPT_NAME = "train_gpt.py"


def rerun_command(command: str, script: Path, log: Path) -> list[str]:
    """The logged command with its script replaced by `script`: the first argument named train_gpt.py, or
    failing that (a run of a renamed copy) the first argument ending in .py."""
    argv = shlex.split(command)
    for match in (lambda arg: Path(arg).name == SCRIPT_NAME, lambda arg: arg.endswith(".py")):
        for i, arg in enumerate(argv):
            if match(arg):
                return argv[:i] + [str(script)] + argv[i + 1:]
    raise ValueError(f"{log}: the logged command names no .py script to replace: {command}")


def write_source(source: bytes, out: Path, force: bool) -> None:
    if out.exists() and out.read_bytes() != source and not force:
        raise FileExistsError(f"{out} exists with different content; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(source)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write out the train_gpt.py source a log holds, verified against "
                                     "the sha256 and byte count in the log; optionally rerun it.")
    parser.add_argument("log", help="a train_gpt.py log (logs/<run_id>.txt)")
    parser.add_argument("-o", "--out", help="where to write the source (default: recovered/<log name>/train_gpt.py)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it holds something else")
    parser.add_argument("--check", action="store_true", help="only verify the source block; write nothing")
    parser.add_argument("--run", action="store_true",
                        help="run the recovered file with the logged command line (script path replaced)")
    parser.add_argument("--dry_run", action="store_true", help="with --run: print the command, do not run it")
    args = parser.parse_args(argv)
    log = Path(args.log)
    out = Path(args.out) if args.out else Path("recovered") / log.stem / SCRIPT_NAME
    try:
        source = extract_source(log)
        sha = hashlib.sha256(source).hexdigest()
        if args.check:
            print(f"{log}: source verified ({len(source)} bytes, sha256 {sha})")
            return 0
        command = None
        if args.run or args.dry_run:
            run = parse_log(log)
            if run.command is None:
                raise ValueError(f"{log}: no command: line to rerun")
            command = rerun_command(run.command, out, log)
        write_source(source, out, args.force)
    except (LogFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(source)} bytes, sha256 {sha} verified)")
    if command is None:
        return 0
    print(f"command: {shlex.join(command)}", flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())

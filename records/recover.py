"""Recover the exact train_gpt.py a log holds (verified against its sha256 and size), and optionally rerun it
with the command line the log recorded, under a fresh --run_id (a log holds one run, so the old id is taken).

Upstream's published logs work too: their source is written out file by file (2026 logs hold triton_kernels.py
and others after train_gpt.py, written beside it); they declare no sha256 and log no command line.

    python records/recover.py records/2026-11-23_baseline/run1.txt                  # -> recovered/run1/train_gpt.py
    python records/recover.py run1.txt --run --dry_run                              # print the command only
    python records/recover.py run1.txt -o /tmp/train_gpt.py --run                   # rerun it
"""
import argparse
import hashlib
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from records.logfile import SCRIPT_NAME, LogFormatError, extract_sources, parse_log


def with_run_id(args: list[str], run_id: str) -> list[str]:
    """The script's arguments with any --run_id (`--run_id=X` or `--run_id X`) replaced by --run_id=<run_id>."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--run_id":
            skip = True
        elif not arg.startswith("--run_id="):
            out.append(arg)
    return out + [f"--run_id={run_id}"]


def rerun_command(command: str, script: Path, log: Path, run_id: str) -> list[str]:
    """The logged command with its script replaced by `script` (the first argument named train_gpt.py, or failing
    that, a run of a renamed copy, the first argument ending in .py) and a fresh --run_id."""
    argv = shlex.split(command)
    for match in (lambda arg: Path(arg).name == SCRIPT_NAME, lambda arg: arg.endswith(".py")):
        for i, arg in enumerate(argv):
            if match(arg):
                return argv[:i] + [str(script)] + with_run_id(argv[i + 1:], run_id)
    raise ValueError(f"{log}: the logged command names no .py script to replace: {command}")


def write_sources(sources: dict[str, bytes], out: Path, force: bool) -> list[Path]:
    """train_gpt.py to `out`, any further file beside it under its own name; nothing is written if any target
    holds something else (unless force)."""
    targets = {out if name == SCRIPT_NAME else out.parent / name: data for name, data in sources.items()}
    for path, data in targets.items():
        if path.exists() and path.read_bytes() != data and not force:
            raise FileExistsError(f"{path} exists with different content; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, data in targets.items():
        path.write_bytes(data)
    return list(targets)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write out the train_gpt.py source a log holds, verified against "
                                     "the sha256 and byte count in the log; optionally rerun it.")
    parser.add_argument("log", help="a train_gpt.py log (logs/<run_id>.txt), or an upstream speedrun log")
    parser.add_argument("-o", "--out", help="where to write the source (default: recovered/<log name>/train_gpt.py)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it holds something else")
    parser.add_argument("--check", action="store_true", help="only verify the source block; write nothing")
    parser.add_argument("--run", action="store_true",
                        help="run the recovered file with the logged command line (script path replaced)")
    parser.add_argument("--dry_run", action="store_true", help="with --run: print the command, do not run it")
    parser.add_argument("--run_id", help="--run_id of the rerun (default: a fresh random one)")
    args = parser.parse_args(argv)
    log = Path(args.log)
    out = Path(args.out) if args.out else Path("recovered") / log.stem / SCRIPT_NAME
    try:
        sources, verified = extract_sources(log)
        how = "verified" if verified else "upstream log: no sha256 declared to verify against"
        if args.check:
            for name, data in sources.items():
                print(f"{log}: {name} read ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}, {how})")
            return 0
        command = None
        if args.run or args.dry_run:
            run = parse_log(log)
            if run.command is None:
                raise ValueError(f"{log}: no command: line to rerun" + ("" if verified else (
                    " (upstream logs hold none; upstream runs with torchrun --standalone --nproc_per_node=8 "
                    "train_gpt.py)")))
            command = rerun_command(run.command, out, log, args.run_id or uuid.uuid4().hex[:12])
        written = write_sources(sources, out, args.force)
    except (LogFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        data = path.read_bytes()
        print(f"wrote {path} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}, {how})")
    if command is None:
        return 0
    print(f"command: {shlex.join(command)}", flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())

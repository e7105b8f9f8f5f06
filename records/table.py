"""Regenerate the records table in the top-level README.md from the record folders under records/.

A record folder (records/<date>_<name>/) holds the record's logs (*.txt) and a README.md that starts with a
header block, `key: value` lines ended by a blank line:

    date: 2026-11-23
    description: Baseline: ...
    authors: ...            (optional)

The record's time is computed from its logs (mean final train_time of the runs that finished), never typed. A
folder whose logs do not earn the verdict RECORD (summarize.py) is refused, never listed.
The table replaces whatever lies between the lines <!-- records:begin --> and <!-- records:end -->.

    python records/table.py            # rewrite README.md
    python records/table.py --check    # exit 1 if README.md is out of date
"""
import argparse
import os
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from records.logfile import LogFormatError, parse_log
from records.summarize import summarize

BEGIN = "<!-- records:begin -->"
END = "<!-- records:end -->"
HEADER_KEYS = {"date", "description", "authors"}
RECORDS = Path(__file__).resolve().parent
README = RECORDS.parent / "README.md"


@dataclass
class Record:
    folder: Path
    date: date
    description: str
    train_time_ms: float
    n_logs: int


def read_header(readme: Path) -> dict[str, str]:
    if not readme.is_file():
        raise FileNotFoundError(f"{readme}: a record folder needs a README.md with a date/description header")
    header = {}
    for number, line in enumerate(readme.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or key not in HEADER_KEYS or not value:
            raise ValueError(f"{readme}:{number}: expected a header line 'key: value' with key in "
                             f"{sorted(HEADER_KEYS)}, got {line!r}")
        if key in header:
            raise ValueError(f"{readme}:{number}: {key} appears twice")
        header[key] = value
    for key in ("date", "description"):
        if key not in header:
            raise ValueError(f"{readme}: header lacks '{key}: ...' (header: the first lines, up to a blank line)")
    return header


def read_record(folder: Path) -> Record:
    header = read_header(folder / "README.md")
    try:
        day = date.fromisoformat(header["date"])
    except ValueError:
        raise ValueError(f"{folder / 'README.md'}: date must be YYYY-MM-DD, got {header['date']!r}") from None
    logs = sorted(folder.glob("*.txt"))
    if not logs:
        raise ValueError(f"{folder}: a record folder needs its logs (*.txt)")
    summary = summarize([parse_log(p) for p in logs])
    if not summary["is_record"]:
        raise ValueError(f"{folder}: not a record, its logs' verdict is: {summary['verdict']}")
    return Record(folder, day, header["description"], summary["train_time_ms_mean"], len(logs))


def find_records(records_dir: Path) -> list[Record]:
    """Every visible subfolder is a record; '_' or '.' folders (e.g. __pycache__) are not."""
    folders = [p for p in records_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]
    return sorted((read_record(f) for f in folders), key=lambda r: (r.date, r.folder.name))


def render(records: list[Record], readme: Path) -> str:
    """The markdown table, links relative to the README; empty when there is no record yet."""
    if not records:
        return ""
    lines = ["| time (min) | date | description | logs |", "| ---: | --- | --- | --- |"]
    for r in records:
        link = Path(os.path.relpath(r.folder, readme.parent)).as_posix()
        description = r.description.replace("|", "\\|")
        lines.append(f"| {r.train_time_ms / 60000:.3f} | {r.date.isoformat()} | {description} | "
                     f"[{r.n_logs} log{'s' if r.n_logs != 1 else ''}]({link}) |")
    return "\n".join(lines)


def replace_table(text: str, table: str, readme: Path) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme}: needs exactly one line {BEGIN} followed by one line {END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    body = f"{table}\n" if table else ""
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the records table in README.md (between "
                                     f"{BEGIN} and {END}) from the record folders and their logs.")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if README.md is out of date")
    parser.add_argument("--readme", type=Path, default=README, help=f"README to update (default {README})")
    parser.add_argument("--records", type=Path, default=RECORDS, help=f"folder of records (default {RECORDS})")
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text(encoding="utf-8")
        new = replace_table(text, render(find_records(args.records), args.readme), args.readme)
    except (LogFormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{args.readme}: records table is out of date; run python records/table.py", file=sys.stderr)
            return 1
        print(f"{args.readme}: records table is up to date")
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: records table {'updated' if new != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Strict parser for the logs train_gpt.py writes (logs/<run_id>.txt).

Layout: a source block (begin line with sha256 and byte count, exactly that many bytes of train_gpt.py, a
newline, the end line), then one `key:value` line per fact. Every line must parse; a malformed one raises
LogFormatError naming the file and the 1-based line number. The only tolerated damage is a last line cut
by a crash (no trailing newline): it is set aside in `RunLog.cut_line` and never interpreted.
"""
import hashlib
import math
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

SOURCE_BEGIN = re.compile(rb"==== train_gpt\.py source begin sha256:([0-9a-f]{64}) bytes:([0-9]+) ====\n")
SOURCE_END = b"\n==== train_gpt.py source end ====\n"
SMI_BEGIN = "==== nvidia-smi begin ===="
SMI_END = "==== nvidia-smi end ===="
TEXT_KEYS = ("run_id", "date", "command", "python", "torch", "triton", "cuda", "gpu", "world_size")
STEP_KEYS = {"val_loss", "train_loss", "train_time", "step_avg"}
FINAL_KEYS = ("final_val_loss", "train_time", "steps", "peak_memory", "tokens_seen")
FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?inf|nan")
HPARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LogFormatError(ValueError):
    """A log that does not follow the format; the message starts with `path:line:`."""


@dataclass
class Step:
    step: int
    total: int
    train_time_ms: float
    step_avg_ms: float
    val_loss: float | None
    train_loss: float | None
    line: int


@dataclass
class Final:
    val_loss: float
    train_time_ms: float
    steps: int
    peak_memory_mib: int
    tokens_seen: int


@dataclass
class RunLog:
    path: Path
    source: bytes
    source_sha256: str
    run_id: str | None = None
    date: datetime | None = None
    command: str | None = None
    python: str | None = None
    torch: str | None = None
    triton: str | None = None
    cuda: str | None = None
    gpu: str | None = None
    world_size: int | None = None
    nvidia_smi: list[str] | None = None
    hparams: dict[str, str] = field(default_factory=dict)
    info: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    final: Final | None = None
    errors: list[str] = field(default_factory=list)
    cut_line: str | None = None

    @property
    def name(self) -> str:
        return self.run_id or self.path.stem

    @property
    def status(self) -> str:
        """'complete' (summary line, no error), 'failed' (an error line) or 'incomplete' (stopped early)."""
        if self.errors:
            return "failed"
        return "complete" if self.final is not None else "incomplete"


def _split_source(path: Path, data: bytes) -> tuple[bytes, str, int]:
    """(source bytes, sha256, offset just past the end line); raises if the block is missing, cut or altered."""
    head = SOURCE_BEGIN.match(data)
    if head is None:
        first = data.split(b"\n", 1)[0][:120].decode("utf-8", "replace")
        raise LogFormatError(f"{path}:1: no source block: expected '==== train_gpt.py source begin "
                             f"sha256:<64 hex> bytes:<N> ====', found {first!r}")
    sha, nbytes = head.group(1).decode(), int(head.group(2))
    start = head.end()
    source = data[start:start + nbytes]
    end = start + nbytes + len(SOURCE_END)
    if len(data) < end:
        raise LogFormatError(f"{path}:1: source block is cut: the log ends {end - len(data)} bytes before "
                             f"the end of the {nbytes}-byte source and its end line")
    if data[start + nbytes:end] != SOURCE_END:
        raise LogFormatError(f"{path}:1: source block is altered: the end line does not follow the "
                             f"declared {nbytes} bytes of source (bytes were added or removed)")
    actual = hashlib.sha256(source).hexdigest()
    if actual != sha:
        raise LogFormatError(f"{path}:1: source block is altered: sha256 of its {nbytes} bytes is {actual}, "
                             f"the log declares {sha}")
    return source, sha, end


def extract_source(path) -> bytes:
    """The exact bytes of train_gpt.py that a log holds, verified against its sha256 and byte count."""
    path = Path(path)
    return _split_source(path, path.read_bytes())[0]


def _float(value: str, what: str) -> float:
    if FLOAT.fullmatch(value) is None:
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)


def _int(value: str, what: str, suffix: str = "") -> int:
    if not value.endswith(suffix) or re.fullmatch(r"[0-9]+", value[:len(value) - len(suffix)]) is None:
        raise ValueError(f"{what} must be a non-negative integer{' followed by ' + suffix if suffix else ''}, "
                         f"got {value!r}")
    return int(value[:len(value) - len(suffix)])


def _ms(value: str, what: str) -> float:
    if not value.endswith("ms"):
        raise ValueError(f"{what} must end in 'ms', got {value!r}")
    ms = _float(value[:-2], what)
    if not (math.isfinite(ms) and ms >= 0):
        raise ValueError(f"{what} must be a finite non-negative time, got {value!r}")
    return ms


def _fields(line: str) -> dict[str, str]:
    """`a:1 b:2` -> {'a': '1', 'b': '2'}; every token must be key:value and no key may repeat."""
    out = {}
    for token in line.split(" "):
        key, sep, value = token.partition(":")
        if not sep or not key or not value:
            raise ValueError(f"expected key:value, got {token!r}")
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _step(line: str, number: int) -> Step:
    fields = _fields(line)
    counter = re.fullmatch(r"([0-9]+)/([0-9]+)", fields.pop("step"))
    if counter is None:
        raise ValueError("step must be S/N with non-negative integers S and N")
    step, total = int(counter.group(1)), int(counter.group(2))
    if step > total:
        raise ValueError(f"step {step} is beyond the total {total}")
    unknown = set(fields) - STEP_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in step line; known: {sorted(STEP_KEYS)}")
    for key in ("train_time", "step_avg"):
        if key not in fields:
            raise ValueError(f"step line lacks {key}")
    losses = {k: _float(fields[k], k) if k in fields else None for k in ("val_loss", "train_loss")}
    return Step(step, total, _ms(fields["train_time"], "train_time"), _ms(fields["step_avg"], "step_avg"),
                losses["val_loss"], losses["train_loss"], number)


def _final(line: str) -> Final:
    fields = _fields(line)
    if sorted(fields) != sorted(FINAL_KEYS):
        raise ValueError(f"summary line must have exactly the keys {list(FINAL_KEYS)}, got {list(fields)}")
    return Final(_float(fields["final_val_loss"], "final_val_loss"), _ms(fields["train_time"], "train_time"),
                 _int(fields["steps"], "steps"), _int(fields["peak_memory"], "peak_memory", "MiB"),
                 _int(fields["tokens_seen"], "tokens_seen"))


def _text(run: RunLog, key: str, value: str) -> None:
    if not value:
        raise ValueError(f"{key} is empty")
    if key == "world_size":
        parsed = _int(value, "world_size")
        if parsed < 1:
            raise ValueError("world_size must be at least 1")
    elif key == "date":
        parsed = datetime.fromisoformat(value)
        if parsed.utcoffset() != timedelta(0):
            raise ValueError(f"date must be an ISO 8601 UTC time (ending in Z or +00:00), got {value!r}")
    else:
        if key == "command":
            shlex.split(value)  # raises on unbalanced quotes
        parsed = value
    if getattr(run, key) is not None:
        raise ValueError(f"{key} appears twice")
    setattr(run, key, parsed)


def _line(run: RunLog, line: str, number: int) -> None:
    if line.startswith("==== train_gpt.py source begin"):
        raise ValueError("a second source block: two runs were written to one log (a reused run_id?)")
    key, sep, value = line.partition(":")
    if not sep:
        raise ValueError(f"expected key:value, got {line[:80]!r}")
    if key == "step":
        if run.final is not None:
            raise ValueError("step line after the summary line")
        step = _step(line, number)
        if run.steps:
            last = run.steps[-1]
            if step.total != last.total:
                raise ValueError(f"total steps changed from {last.total} (line {last.line}) to {step.total}")
            if step.step < last.step:
                raise ValueError(f"step went backwards from {last.step} (line {last.line}) to {step.step}")
        run.steps.append(step)
    elif key == "final_val_loss":
        if run.final is not None:
            raise ValueError("a second summary line")
        run.final = _final(line)
    elif key in TEXT_KEYS:
        _text(run, key, value)
    elif key == "hparam":
        name, eq, setting = value.partition("=")
        if not eq or HPARAM_NAME.fullmatch(name) is None:
            raise ValueError(f"expected hparam:<name>=<value>, got {line[:80]!r}")
        if name in run.hparams:
            raise ValueError(f"hparam {name} appears twice")
        run.hparams[name] = setting
    elif key == "info":
        run.info.append(value)
    elif key == "error":
        run.errors.append(value)
    else:
        raise ValueError(f"unknown key {key!r}; known: {', '.join(TEXT_KEYS)}, hparam, info, step, "
                         f"final_val_loss, error and the nvidia-smi block")


def parse_log(path) -> RunLog:
    """Parse and verify a whole log. A run that stopped early parses fine and has status 'incomplete'."""
    path = Path(path)
    data = path.read_bytes()
    source, sha, offset = _split_source(path, data)
    run = RunLog(path, source, sha)
    first = data[:offset].count(b"\n") + 1
    lines = data[offset:].split(b"\n")
    if lines[-1]:
        run.cut_line = lines[-1].decode("utf-8", "replace")
    smi_open = None
    for number, raw in enumerate(lines[:-1], start=first):
        try:
            line = raw.decode("utf-8")
            if smi_open is not None:
                if line == SMI_END:
                    smi_open = None
                else:
                    run.nvidia_smi.append(line)
            elif line == SMI_BEGIN:
                if run.nvidia_smi is not None:
                    raise ValueError("a second nvidia-smi block")
                smi_open, run.nvidia_smi = number, []
            else:
                _line(run, line, number)
        except ValueError as e:  # UnicodeDecodeError is a ValueError too
            raise LogFormatError(f"{path}:{number}: {e}") from None
    if smi_open is not None:
        raise LogFormatError(f"{path}:{smi_open}: nvidia-smi block is never closed by '{SMI_END}'")
    return run


def log_paths(args) -> list[Path]:
    """Expand command-line arguments: a file stays, a folder gives its *.txt files in name order."""
    paths = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = sorted(p.glob("*.txt"))
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no *.txt logs")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such log file or folder")
    return paths

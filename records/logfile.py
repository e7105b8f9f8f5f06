"""Parser for the logs train_gpt.py writes (logs/<run_id>.txt), and for the public speedrun's published logs.

Ours: a source block (begin line with sha256 and byte count, exactly that many bytes of train_gpt.py, a
newline, the end line), then one `key:value` line per fact. Every line must parse; a malformed one raises
LogFormatError naming the file and the 1-based line number. The only tolerated damage is a last line cut
by a crash (no trailing newline): it is set aside in `RunLog.cut_line` and never interpreted. The summary line
must agree with the last val line.

Upstream (KellerJordan/modded-nanogpt): the source, then a line of 100 '=' (2024 logs put the source between
two such lines). Its code wrote itself with print (one newline added) or f.write (nothing added); the source
says which. 2026 logs hold several files, each after a banner `-{40}` / `# <name>` / `-{40}`. After the source
come free text (environment, nvidia-smi, peak memory) and `step:S/N ...` lines; only the step lines are parsed.
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
SCRIPT_NAME = "train_gpt.py"
UPSTREAM_RULE = re.compile(rb"^={100}\n", re.M)
UPSTREAM_FILE_BANNER = re.compile(rb"\n\n-{40}\n# ([^\n]+)\n-{40}\n\n")
UPSTREAM_PRINTED = re.compile(rb"^[ \t]*print0?\(code[,)]", re.M)  # print adds a newline after the source
UPSTREAM_WRITTEN = re.compile(rb"^[ \t]*f\.write\(code\)", re.M)  # f.write adds nothing
UPSTREAM_TORCH = re.compile(r"Running [Pp]y[Tt]orch (\S+) compiled for CUDA (\S+)")
UPSTREAM_PEAK = re.compile(r"peak memory (?:allocated|consumption): ([0-9]+) MiB")
SHA256 = re.compile(r"[0-9a-f]{64}")
SMI_BEGIN = "==== nvidia-smi begin ===="
SMI_END = "==== nvidia-smi end ===="
TEXT_KEYS = ("run_id", "date", "command", "python", "torch", "triton", "cuda", "gpu", "world_size", "train_data",
             "val_data")
STEP_KEYS = {"val_loss", "train_loss", "train_time", "step_avg"}
FINAL_KEYS = ("final_val_loss", "train_time", "steps", "peak_memory", "tokens_seen")
FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?inf|nan")
HPARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LogFormatError(ValueError):
    """A log that does not follow the format; the message starts with `path:line:`."""


class NotALogError(LogFormatError):
    """A file that holds no source block of either layout: not a train log at all."""


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
    peak_memory_mib: int | None
    tokens_seen: int | None


@dataclass
class RunLog:
    """`sources` maps file name to bytes (one file for our logs, train_gpt.py first); `source` is train_gpt.py.
    `source_sha256` is declared and verified for ours, computed over the whole logged code for upstream's."""
    path: Path
    sources: dict[str, bytes]
    source_sha256: str
    layout: str = "ours"  # or "upstream"
    run_id: str | None = None
    date: datetime | None = None
    command: str | None = None
    python: str | None = None
    torch: str | None = None
    triton: str | None = None
    cuda: str | None = None
    gpu: str | None = None
    world_size: int | None = None
    train_data: str | None = None
    val_data: str | None = None
    resume_step: int | None = None
    resume_train_time_ms: float | None = None
    nvidia_smi: list[str] | None = None
    hparams: dict[str, str] = field(default_factory=dict)
    info: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    final: Final | None = None
    errors: list[str] = field(default_factory=list)
    cut_line: str | None = None

    @property
    def source(self) -> bytes:
        return next(iter(self.sources.values()))

    @property
    def name(self) -> str:
        return self.run_id or self.path.stem

    @property
    def status(self) -> str:
        """'complete' (summary line, no error), 'failed' (an error line) or 'incomplete' (stopped early)."""
        if self.errors:
            return "failed"
        return "complete" if self.final is not None else "incomplete"


def _split_ours(path: Path, data: bytes) -> tuple[bytes, str, int]:
    """(source bytes, sha256, offset just past the end line); raises if the block is missing, cut or altered."""
    head = SOURCE_BEGIN.match(data)
    if head is None:
        first = data.split(b"\n", 1)[0][:120].decode("utf-8", "replace")
        raise NotALogError(f"{path}:1: no source block: expected '==== train_gpt.py source begin "
                           f"sha256:<64 hex> bytes:<N> ====' (or an upstream log's source and a line of 100 "
                           f"'='), found {first!r}")
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


def _upstream_files(code: bytes) -> dict[str, bytes]:
    """Split upstream's logged code at its file banners; the first file is the script itself."""
    files, name, start = {}, SCRIPT_NAME, 0
    for banner in UPSTREAM_FILE_BANNER.finditer(code):
        files[name] = code[start:banner.start()]
        name, start = banner.group(1).decode("utf-8"), banner.end()
        if name in files:
            raise ValueError(f"file {name} appears twice in the source")
    files[name] = code[start:]
    return files


def _split_upstream(path: Path, data: bytes) -> tuple[dict[str, bytes], str, int] | None:
    """(files, sha256 of the logged code, offset past its closing rule) of an upstream log; None if not one."""
    if data.startswith(b"=" * 100 + b"\n"):  # 2024: rule, source as f.write wrote it, rule
        start = 101
        rule = UPSTREAM_RULE.search(data, start)
        if rule is None:
            raise LogFormatError(f"{path}:1: upstream source block is never closed by a line of 100 '='")
        code = data[start:rule.start()]
    else:  # 2025 on: source, rule
        rule = UPSTREAM_RULE.search(data)
        if rule is None:
            return None
        code = data[:rule.start()]
        printed, written = UPSTREAM_PRINTED.search(code), UPSTREAM_WRITTEN.search(code)
        if not printed and not written:
            return None  # a rule line in some other text file: no code that logs itself
        if printed and written:
            raise LogFormatError(f"{path}:1: the source both prints and writes `code`: cannot tell whether "
                                 f"a newline was added after it")
        if printed:
            if not code.endswith(b"\n"):
                raise LogFormatError(f"{path}:1: the source prints itself, but no newline precedes the rule")
            code = code[:-1]
    try:
        files = _upstream_files(code)
    except (ValueError, UnicodeDecodeError) as e:
        raise LogFormatError(f"{path}:1: {e}") from None
    return files, hashlib.sha256(code).hexdigest(), rule.end()


def _split_source(path: Path, data: bytes) -> tuple[dict[str, bytes], str, int, str]:
    """(files, sha256, offset past the source block, layout 'ours' or 'upstream')."""
    if not SOURCE_BEGIN.match(data):
        upstream = _split_upstream(path, data)
        if upstream is not None:
            return (*upstream, "upstream")
    source, sha, end = _split_ours(path, data)
    return {SCRIPT_NAME: source}, sha, end, "ours"


def extract_sources(path) -> tuple[dict[str, bytes], bool]:
    """The exact files a log holds, by name (train_gpt.py first), and whether they were verified against a
    declared sha256 and byte count (ours are; upstream logs declare none)."""
    path = Path(path)
    files, _, _, layout = _split_source(path, path.read_bytes())
    return files, layout == "ours"


def extract_source(path) -> bytes:
    """The exact bytes of train_gpt.py that a log holds."""
    return extract_sources(path)[0][SCRIPT_NAME]


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


def _step(line: str, number: int, upstream: bool = False) -> Step:
    """One step line. Upstream's may carry keys of their own (ignored) and print step_avg:nanms early on."""
    fields = _fields(line.rstrip(" ") if upstream else line)
    counter = re.fullmatch(r"([0-9]+)/([0-9]+)", fields.pop("step"))
    if counter is None:
        raise ValueError("step must be S/N with non-negative integers S and N")
    step, total = int(counter.group(1)), int(counter.group(2))
    if step > total:
        raise ValueError(f"step {step} is beyond the total {total}")
    unknown = set(fields) - STEP_KEYS
    if unknown and not upstream:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in step line; known: {sorted(STEP_KEYS)}")
    for key in ("train_time", "step_avg"):
        if key not in fields:
            raise ValueError(f"step line lacks {key}")
    losses = {k: _float(fields[k], k) if k in fields else None for k in ("val_loss", "train_loss")}
    step_avg = math.nan if upstream and fields["step_avg"] == "nanms" else _ms(fields["step_avg"], "step_avg")
    return Step(step, total, _ms(fields["train_time"], "train_time"), step_avg, losses["val_loss"],
                losses["train_loss"], number)


def _add_step(run: RunLog, step: Step) -> None:
    if run.steps:
        last = run.steps[-1]
        if step.total != last.total:
            raise ValueError(f"total steps changed from {last.total} (line {last.line}) to {step.total}")
        if step.step < last.step:
            raise ValueError(f"step went backwards from {last.step} (line {last.line}) to {step.step}")
    run.steps.append(step)


def last_val(run: RunLog) -> Step | None:
    return next((s for s in reversed(run.steps) if s.val_loss is not None), None)


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


def _check_summary(run: RunLog, final: Final) -> None:
    """The summary repeats the last val line (same formatting): a summary that disagrees was edited."""
    val = last_val(run)
    if val is None:
        raise ValueError("summary line without a val line before it")
    for what, summary, logged, fmt in (("final_val_loss", final.val_loss, val.val_loss, ".4f"),
                                       ("train_time", final.train_time_ms, val.train_time_ms, ".0f"),
                                       ("steps", final.steps, val.step, "d")):
        if summary != logged:
            raise ValueError(f"summary {what} {summary:{fmt}} disagrees with the last val line (line {val.line}): "
                             f"{logged:{fmt}}")


def _resume(run: RunLog, line: str) -> None:
    """`resume_step:S resume_train_time:Tms`: the run continues a checkpoint of step S, T ms of training in."""
    fields = _fields(line)
    if sorted(fields) != ["resume_step", "resume_train_time"]:
        raise ValueError(f"resume line must be resume_step:<S> resume_train_time:<T>ms, got {line[:80]!r}")
    if run.resume_step is not None:
        raise ValueError("a second resume line")
    if run.steps:
        raise ValueError("resume line after a step line")
    run.resume_step = _int(fields["resume_step"], "resume_step")
    run.resume_train_time_ms = _ms(fields["resume_train_time"], "resume_train_time")


def _check_resumed_start(run: RunLog, step: Step) -> None:
    """A resumed run's first step line follows its checkpoint (a val line may repeat the checkpoint's step), and
    its train_time already holds the earlier segments' time."""
    if step.step != run.resume_step + 1 and not (step.step == run.resume_step and step.val_loss is not None):
        raise ValueError(f"first step after resume_step:{run.resume_step} is {step.step}, "
                         f"expected {run.resume_step + 1}")
    if step.train_time_ms < run.resume_train_time_ms:
        raise ValueError(f"train_time {step.train_time_ms:.0f}ms is less than the resume_train_time "
                         f"{run.resume_train_time_ms:.0f}ms carried over: the earlier segments are not counted")


def _text_value(run: RunLog, key: str, value: str) -> None:
    if key in ("train_data", "val_data") and SHA256.fullmatch(value) is None:
        raise ValueError(f"{key} must be a sha256 (64 lowercase hex digits), got {value[:80]!r}")
    _text(run, key, value)


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
        if run.resume_step is not None and not run.steps:
            _check_resumed_start(run, step)
        _add_step(run, step)
    elif key == "final_val_loss":
        if run.final is not None:
            raise ValueError("a second summary line")
        final = _final(line)
        _check_summary(run, final)
        run.final = final
    elif key == "resume_step":
        _resume(run, line)
    elif key in TEXT_KEYS:
        _text_value(run, key, value)
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
        raise ValueError(f"unknown key {key!r}; known: {', '.join(TEXT_KEYS)}, hparam, resume_step, info, step, "
                         f"final_val_loss, error and the nvidia-smi block")


def _parse_ours(run: RunLog, lines: list[tuple[int, str]]) -> None:
    smi_open = None
    for number, line in lines:
        try:
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
        except ValueError as e:
            raise LogFormatError(f"{run.path}:{number}: {e}") from None
    if smi_open is not None:
        raise LogFormatError(f"{run.path}:{smi_open}: nvidia-smi block is never closed by '{SMI_END}'")


def _parse_upstream(run: RunLog, lines: list[tuple[int, str]]) -> None:
    """Step lines are parsed; every other line is free text (environment, nvidia-smi, peak memory), kept in
    `info`. A run is complete when its last val line is at its last step; upstream logs no summary line."""
    peak = None
    for number, line in lines:
        try:
            if line.startswith("step:"):
                _add_step(run, _step(line, number, upstream=True))
                continue
        except ValueError as e:
            raise LogFormatError(f"{run.path}:{number}: {e}") from None
        if line != "=" * 100:
            run.info.append(line)
        if (m := UPSTREAM_TORCH.search(line)) and run.torch is None:
            run.torch, run.cuda = m.group(1), m.group(2)
        elif line.startswith("Running Python ") and run.python is None:
            run.python = line.split(" ")[2]
        elif m := UPSTREAM_PEAK.search(line):
            peak = int(m.group(1))
    val = last_val(run)
    if val is not None and val.step == val.total:
        run.final = Final(val.val_loss, val.train_time_ms, val.step, peak, None)


def parse_log(path) -> RunLog:
    """Parse and verify a whole log, ours or upstream's. A run that stopped early has status 'incomplete'."""
    path = Path(path)
    data = path.read_bytes()
    sources, sha, offset, layout = _split_source(path, data)
    run = RunLog(path, sources, sha, layout)
    first = data[:offset].count(b"\n") + 1
    raw_lines = data[offset:].split(b"\n")
    if raw_lines[-1]:
        run.cut_line = raw_lines[-1].decode("utf-8", "replace")
    lines = []
    for number, raw in enumerate(raw_lines[:-1], start=first):
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise LogFormatError(f"{path}:{number}: {e}") from None
    (_parse_upstream if layout == "upstream" else _parse_ours)(run, lines)
    return run


def log_paths(args) -> list[tuple[Path, bool]]:
    """Expand command-line arguments into (path, named): a file stays (named), a folder gives its *.txt files in
    name order (not named)."""
    paths = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = sorted(p.glob("*.txt"))
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no *.txt logs")
            paths += [(f, False) for f in found]
        elif p.is_file():
            paths.append((p, True))
        else:
            raise FileNotFoundError(f"{p}: no such log file or folder")
    return paths


def load_logs(args) -> tuple[list[RunLog], list[str]]:
    """Parse the logs the arguments name. A text file in a folder that is no train log at all (no source block)
    is skipped and described in the second list; a named file that is none, or any malformed log, raises."""
    runs, skipped = [], []
    for path, named in log_paths(args):
        try:
            runs.append(parse_log(path))
        except NotALogError:
            if named:
                raise
            skipped.append(f"{path}: not a train log (no source block, ours or upstream's)")
    return runs, skipped

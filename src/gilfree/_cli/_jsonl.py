"""JSON Lines for ``gilfree run``: lazy input, one flushed line per outcome, resume.

Crash safety rests on two facts. Each record is one line that carries its
own ``index``, written with a single ``write`` of the whole line and flushed
to the operating system before the next result is looked at; a process
killed with SIGKILL loses nothing the kernel already has. So after a crash
the output holds whole records plus at most one torn line at the end.
``--resume`` cuts that torn line off (the last newline marks the end of the
last whole record), collects the indices present, and the run skips them:
every index ends up in the file exactly once.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, Any

from . import UsageError

#: Longest input excerpt quoted in an InputError message.
_EXCERPT = 60


# ---------------------------------------------------------------- input


def iter_lines(
    stream: IO[bytes], on_blank: Callable[[], object] | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, raw_line)`` for each line, reading lazily.

    The index is the 0-based line number, so an output record points at the
    input line it came from. Blank lines are not items (a trailing newline
    or an empty line between records is common in JSON Lines files) and
    yield nothing, but still count toward the line number (and call
    ``on_blank``, so a progress bar counting lines still reaches its end).
    """
    for index, raw in enumerate(stream):
        if raw.strip():
            yield index, raw
        elif on_blank is not None:
            on_blank()


def parse_item(raw: bytes) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, reason)`` for one input line."""
    try:
        return True, json.loads(raw)
    except UnicodeDecodeError as exc:
        return False, f"line is not UTF-8 text: {exc.reason} at byte {exc.start}"
    except json.JSONDecodeError as exc:
        text = raw.decode("utf-8", "replace").strip()
        excerpt = text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."
        if exc.lineno > 1:  # found at the line's end, after its newline: say where
            try:
                json.loads(raw.rstrip(b"\r\n"))
            except json.JSONDecodeError as bare:
                exc = bare
        msg = exc.msg.removesuffix(" at")  # "Invalid control character at"
        return False, f"not valid JSON ({msg} at column {exc.colno}): {excerpt}"
    except RecursionError:
        return False, "not valid JSON: nested too deeply"


def count_lines(path: str) -> int:
    """Number of lines in a file, read in blocks (for the progress bar's total)."""
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


# ---------------------------------------------------------------- records


def _default(obj: Any) -> Any:
    # NumPy scalars and arrays are the usual non-JSON results; everything
    # that offers a plain-Python view through ``tolist`` is accepted.
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def result_record(index: int, value: Any) -> tuple[bool, bytes]:
    """``(True, line)`` for a result, or ``(False, error line)`` when it is not JSON."""
    try:
        # allow_nan=False: Infinity and NaN are not JSON (jq and others reject them).
        text = json.dumps(
            {"index": index, "result": value}, ensure_ascii=False, default=_default, allow_nan=False
        )
    except (TypeError, ValueError, RecursionError) as exc:
        message = f"result of item {index} cannot be written as JSON: {exc}"
        return False, _record(index, "SerializationError", message, "")
    return True, (text + "\n").encode("utf-8", "surrogatepass")


def error_record(index: int, exc: BaseException, task: int | None = None) -> bytes:
    """The record of a failed task: type, message and the worker-side traceback.

    ``task`` is the number the job gave it, which messages name ("while
    running task 14"): a run that skipped bad or finished lines numbers its
    tasks apart from the records, so the message names the record's index."""
    from ..errors import RemoteTraceback, task_renamed

    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        tb = cause.tb
    else:
        tb = "".join(traceback.format_exception(exc))
    message = str(exc)
    if task is not None and task != index:
        message = task_renamed(exc, task, f"task {index}") or message
    return _record(index, type(exc).__qualname__, message, tb)


def input_error_record(index: int, message: str) -> bytes:
    return _record(index, "InputError", message, "")


def _record(index: int, type_name: str, message: str, tb: str) -> bytes:
    error = {"type": type_name, "message": message, "traceback": tb}
    text = json.dumps({"index": index, "error": error}, ensure_ascii=False)
    return (text + "\n").encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- output


class LineWriter:
    """Writes whole lines to a file descriptor, each one reaching the OS at once.

    ``os.write`` with no user-space buffer: a line is either handed to the
    kernel (and survives SIGKILL) or not started. A short write (a full pipe,
    a signal) is continued; at worst a crash in between tears the last line,
    which ``--resume`` repairs.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()  # whole lines, even if two threads write
        self.lines = 0

    def write(self, line: bytes) -> None:
        with self._lock:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            self.lines += 1


# ---------------------------------------------------------------- resume


class IndexSet:
    """Set of non-negative ints as a bitmap: 10 million indices fit in 1.25 MB."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0

    def add(self, i: int) -> bool:
        """Add ``i``; False if it was already there."""
        byte, bit = divmod(i, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        mask = 1 << bit
        if self._bits[byte] & mask:
            return False
        self._bits[byte] |= mask
        self.count += 1
        return True

    def __contains__(self, i: int) -> bool:
        byte, bit = divmod(i, 8)
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << bit))

    def __len__(self) -> int:
        return self.count


class ResumeState:
    """What an earlier run left in OUT, read without changing it.

    ``done`` holds every index with a record, ``good`` those with a result
    record. An index may have several records after a ``--retry-failed`` run
    was killed (its old error record, then the new outcome): a result record
    counts over an error record, and a later error record over an earlier one.
    """

    def __init__(self) -> None:
        self.done = IndexSet()
        self.good = IndexSet()
        self.error_types: Counter[str] = Counter()  # of the indices whose record is an error
        self.duplicates = 0  # records for an index that already had one
        self.end = 0  # bytes of whole lines; past it, a torn last line
        self.size = 0

    @property
    def failed(self) -> int:
        return len(self.done) - len(self.good)

    @property
    def torn(self) -> int:
        """Bytes of a torn last line (a run killed mid-write), 0 if none."""
        return self.size - self.end


def scan(path: str) -> ResumeState:
    """Collect the indices ``path`` holds, changing nothing (a missing file is empty).

    A line that is whole (ends in a newline) but is not a gilfree record means
    the file is not ours or was edited: resuming into it could duplicate or
    lose work, so we refuse before anything is written.
    """
    state = ResumeState()
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return state
    except OSError as exc:
        raise UsageError(f"cannot read output {path!r} to resume: {exc.strerror}")
    last_error: dict[int, str] = {}  # index -> type, for indices with no result (yet)
    with f:
        state.end = _end_of_last_line(f)
        state.size = f.seek(0, os.SEEK_END)
        f.seek(0)
        for lineno, raw in enumerate(_whole_lines(f, state.end), 1):
            if not raw.strip():
                continue
            index, error_type = _parse_record(raw)
            if index is None:
                raise UsageError(
                    f"line {lineno} of {path!r} is not a gilfree record; refusing to resume into it"
                )
            if not state.done.add(index):
                state.duplicates += 1
            if error_type is None:
                state.good.add(index)
                last_error.pop(index, None)
            elif index not in state.good:
                last_error[index] = error_type
    state.error_types.update(last_error.values())
    return state


def cut_torn_tail(fd: int, state: ResumeState) -> None:
    """Cut the torn last line that ``scan`` found off the (locked) output."""
    if state.torn > 0:
        os.ftruncate(fd, state.end)


def compact(path: str) -> ResumeState:
    """Rewrite ``path`` with one record per index, replacing it atomically.

    Needed after ``--retry-failed``, which appends the new outcome of an index
    after its old error record. The record kept for an index is its result if
    it has one, else its last error, written where the index's first record
    was (so an ordered run stays in order). The new file is written next to
    the old one, flushed to disk and renamed over it: a crash at any moment
    leaves either the old file or the new one, never fewer good records.
    Returns what the new file holds.
    """
    state = scan(path)
    if not state.duplicates:
        return state
    # Where the kept record of each index with several records is, and whether
    # it is a result: the first result stands, else the last error.
    keep: dict[int, tuple[int, int, bool]] = {}
    many = IndexSet()
    seen = IndexSet()
    with open(path, "rb") as f:
        for _offset, _raw, index, _error in _records(f, state.end):
            if not seen.add(index):
                many.add(index)
        f.seek(0)
        for offset, raw, index, error in _records(f, state.end):
            if index in many and not (index in keep and keep[index][2]):
                keep[index] = (offset, len(raw), error is None)
        tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.gilfree-tmp")
        written = IndexSet()
        with open(tmp, "wb") as out:
            f.seek(0)
            for _offset, raw, index, _error in _records(f, state.end):
                if index not in many:
                    out.write(raw)
                elif written.add(index):
                    offset, length, _ = keep[index]
                    out.write(os.pread(f.fileno(), length, offset))
            out.flush()
            os.fchmod(out.fileno(), stat.S_IMODE(os.fstat(f.fileno()).st_mode))
            os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")
    return scan(path)


def _records(f: IO[bytes], end: int) -> Iterator[tuple[int, bytes, int, str | None]]:
    """``(offset, line, index, error type or None)`` for each record up to ``end``."""
    offset = 0
    for raw in _whole_lines(f, end):
        if raw.strip():
            index, error = _parse_record(raw)
            if index is not None:
                yield offset, raw, index, error
        offset += len(raw)


def _whole_lines(f: IO[bytes], end: int) -> Iterator[bytes]:
    left = end
    for raw in f:
        if left <= 0:
            return
        if len(raw) > left:  # the file grew since ``end`` was measured
            return
        left -= len(raw)
        yield raw


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the file system allows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - a directory we cannot open
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _end_of_last_line(f: IO[bytes]) -> int:
    """Offset just past the file's last newline (0 if it has none)."""
    pos = f.seek(0, os.SEEK_END)
    block = 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        chunk = f.read(pos - start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def _parse_record(raw: bytes) -> tuple[int | None, str | None]:
    """``(index, None)`` for a result record, ``(index, type)`` for an error
    record, ``(None, None)`` for anything else."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(record, dict):
        return None, None
    index = record.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return None, None
    if "error" in record:
        error = record["error"]
        kind = error.get("type") if isinstance(error, dict) else None
        return index, kind if isinstance(kind, str) and kind else "Error"
    if "result" in record:
        return index, None
    return None, None

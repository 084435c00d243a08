"""``gilfree run MODULE:FUNC [INPUT] [-o OUT] ...``: JSON Lines through a function.

Data flow, all in bounded memory::

    INPUT --lines--> Feed (parse, skip done, InputError) --items--> imap_indexed
                        |                                              |
                        | InputError records                (pos, ok, value)
                        v                                              v
                      pending ------------------------------> main loop --> LineWriter --> OUT

``imap_indexed`` numbers the items it is given 0, 1, 2...; the feed keeps,
for the items in flight only, which input line each position came from, so
records carry the input's line number. Bad lines never reach the function:
their records wait in ``pending`` until every earlier line's record is out
(ordered mode) or go out with the next result (``--unordered``).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, Any

from .._progress import Silent, make_bar
from . import UsageError
from ._jsonl import (
    IndexSet,
    LineWriter,
    ResumeState,
    count_lines,
    error_record,
    input_error_record,
    iter_lines,
    parse_item,
    repair_and_scan,
    result_record,
)

#: Input files up to this size are counted first (about 1 GB/s, in blocks) to
#: give the planner, the chunker and the progress bar a total; past it the
#: second read would cost more than a better plan is likely to save.
_COUNT_LIMIT = 1 << 30

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as if the default handler had run


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that the pool shuts down and output is kept."""


class Feed:
    """Turns input lines into items for ``imap_indexed`` and remembers where each came from.

    Iterating a Feed yields the items. ``len()`` is the number of lines left
    to run when the input is a file of known length (blank and bad lines
    included, so an estimate): the planner and the chunker size their work
    by it. With stdin there is no length, as for any generator.
    """

    def __init__(
        self, lines: Iterator[tuple[int, bytes]], done: IndexSet, remaining: int | None
    ) -> None:
        self._lines = lines
        self._done = done
        self._remaining = remaining
        self._origin: dict[int, int] = {}  # position given to imap -> input line, in flight only
        # (position of the next item when the bad line was read, its record); appended by
        # whichever thread drains the generator, popped by the main loop: deque is thread-safe.
        self._pending: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        if self._remaining is None:
            raise TypeError("the input's length is not known")
        return self._remaining

    def __iter__(self) -> Iterator[Any]:
        pos = 0
        for index, raw in self._lines:
            if index in self._done:
                continue
            ok, value = parse_item(raw)
            if not ok:
                self._pending.append((pos, input_error_record(index, value)))
                continue
            self._origin[pos] = index
            pos += 1
            yield value

    def line_of(self, pos: int) -> int:
        return self._origin.pop(pos)

    def records_before(self, pos: int | None) -> Iterator[bytes]:
        """InputError records due before result ``pos`` (all of them when ``pos`` is None)."""
        while self._pending and (pos is None or self._pending[0][0] <= pos):
            yield self._pending.popleft()[1]


def run(
    fn: Callable[[Any], Any],
    *,
    target: str,
    input_path: str | None,
    output_path: str | None,
    resume: bool,
    ordered: bool,
    options: dict[str, Any],
) -> int:
    if resume and output_path is None:
        raise UsageError("--resume needs -o OUT: it reads what an earlier run wrote there")
    source, total = _open_input(input_path)
    with source:
        if output_path is not None and input_path not in (None, "-"):
            _refuse_same_file(input_path, output_path)
        fd, close_fd = _open_output(output_path, append=resume)
        writer = LineWriter(fd)
        try:
            state = repair_and_scan(output_path) if resume and output_path else ResumeState()
            if state.repaired:
                print(
                    f"gilfree: cut a torn last line ({state.repaired} bytes) off {output_path}",
                    file=sys.stderr,
                )
            remaining = None if total is None else max(0, total - len(state.done))
            bar = make_bar(remaining, target) if _bar_wanted(output_path) else Silent()
            feed = Feed(iter_lines(source, on_blank=bar.advance), state.done, remaining)
            with bar:
                failed = _drive(fn, feed, writer, bar, ordered=ordered, options=options)
        except KeyboardInterrupt as exc:
            where = output_path or "stdout"
            how = "--resume" if output_path else "-o OUT --resume"
            terminated = isinstance(exc, Terminated)
            print(
                f"gilfree: {'terminated' if terminated else 'interrupted'}; "
                f"{writer.lines} new records are in {where}; rerun with {how} to finish",
                file=sys.stderr,
            )
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        except BrokenPipeError:
            return EXIT_BROKEN_PIPE
        finally:
            if close_fd:
                os.close(fd)
    return EXIT_FAILED if failed or state.failed else EXIT_OK


def _drive(
    fn: Callable[[Any], Any],
    feed: Feed,
    writer: LineWriter,
    bar: Any,
    *,
    ordered: bool,
    options: dict[str, Any],
) -> int:
    """Run every item, write every record; return how many records are errors."""
    from .._api import imap_indexed
    from ..errors import ConfigurationError

    failed = 0
    outcomes = imap_indexed(fn, feed, ordered=ordered, **options)
    try:
        for pos, ok, value in outcomes:
            for record in feed.records_before(pos if ordered else None):
                writer.write(record)
                failed += 1
                bar.advance()
            index = feed.line_of(pos)
            if ok:
                good, line = result_record(index, value)
            else:
                good, line = False, error_record(index, value)
            writer.write(line)
            failed += not good
            bar.advance()
        for record in feed.records_before(None):
            writer.write(record)
            failed += 1
            bar.advance()
    except ConfigurationError as exc:
        raise UsageError(str(exc))
    except ImportError as exc:
        if "pip install" not in str(exc):
            raise
        raise UsageError(str(exc))  # an optional backend that is not installed
    finally:
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()  # stops the pool at once when we leave early (Ctrl-C, broken pipe)
    return failed


def _open_input(path: str | None) -> tuple[IO[bytes], int | None]:
    if path is None or path == "-":
        if sys.stdin.isatty():
            print("gilfree: reading JSON lines from the terminal; end with Ctrl-D", file=sys.stderr)
        # Our own handle on fd 0 so that closing it does not close sys.stdin.
        return open(sys.stdin.fileno(), "rb", closefd=False), None
    try:
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise UsageError(f"cannot read input {path!r}: {exc.strerror}")
    if os.path.isdir(path):
        f.close()
        raise UsageError(f"cannot read input {path!r}: it is a directory")
    total = None
    if os.path.isfile(path) and os.path.getsize(path) <= _COUNT_LIMIT:
        total = count_lines(path)
    return f, total


def _open_output(path: str | None, *, append: bool) -> tuple[int, bool]:
    if path is None:
        sys.stdout.flush()
        return sys.stdout.fileno(), False
    # No O_TRUNC here: the file is emptied only once we hold its lock.
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise UsageError(f"cannot write output {path!r}: {exc.strerror}")
    try:
        _lock_output(fd, path)
        if not append:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def _lock_output(fd: int, path: str) -> None:
    """Hold an exclusive lock on OUT for the whole run.

    Two runs appending to one file (a resume started while the first run is
    still going) would each write the indices the other has not yet written:
    duplicates. The kernel drops the lock when the process ends, SIGKILL
    included, so a crash never leaves the file locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Windows
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(f"{path!r} is being written by another gilfree run; wait for it to end")
    except OSError:  # a file system without locks (some network mounts): go on unlocked
        return


def _refuse_same_file(input_path: str, output_path: str) -> None:
    try:
        same = os.path.samefile(input_path, output_path)
    except OSError:
        return
    if same:
        raise UsageError(f"-o {output_path!r} is the input file; writing would destroy it")


def _bar_wanted(output_path: str | None) -> bool:
    # Records written to the same terminal would tear through the bar's redraws.
    return output_path is not None or not sys.stdout.isatty()

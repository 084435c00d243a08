r"""``gilfree run MODULE:FUNC [INPUT] [-o OUT] ...``: JSON Lines through a function.

Data flow, all in bounded memory::

    INPUT --lines--> Feed (parse, skip done, InputError) --items--> imap_indexed
                        |          \                                   |
                        |           +-- first items --> probe child    |
                        | InputError records          (auto: plans,    |
                        v                              keeps its calls) v
                      pending ------------------------------> main loop --> LineWriter --> OUT

``imap_indexed`` numbers the items it is given 0, 1, 2...; the feed keeps,
for the items in flight only, which input line each position came from, so
records carry the input's line number. Bad lines never reach the function:
their records wait in ``pending`` until every earlier line's record is out
(ordered mode) or go out with the next result (``--unordered``).

The function never runs in this process (``_placement``, ``_probe``): a
record that kills its worker is a ``WorkerDied`` record. OUT is touched only
after everything that can be checked has been (the target, the input, the
options, the Dask scheduler), and then only appended to, except for
``--overwrite`` and the end of a ``--retry-failed`` run, which replaces the
file by a compacted copy with one record per index (``_jsonl.compact``).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import IO, Any

from .._progress import Silent, make_bar
from . import UsageError
from ._files import open_input, open_output, refuse_same_file
from ._jsonl import (
    IndexSet,
    LineWriter,
    ResumeState,
    compact,
    cut_torn_tail,
    error_record,
    input_error_record,
    iter_lines,
    parse_item,
    result_record,
    scan,
)
from ._placement import Placement, from_plan, place

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
    included, so an estimate): the chunker sizes its work by it. With stdin
    there is no length, as for any generator. ``take`` reads the first items
    ahead for the probe; ``drop`` forgets those the probe ran, and positions
    of the items iterated then start at ``dropped``.
    """

    def __init__(self, source: IO[bytes], skip: IndexSet, remaining: int | None) -> None:
        self._lines = iter_lines(source, on_blank=self._blank)
        self._blanks = 0
        self._bar: Any = None
        self._skip = skip
        self._remaining = remaining
        self._items = self._parse()
        self._ahead: deque[Any] = deque()
        # Items the probe ran. (Not "offset": the engine reads that as the first index.)
        self.dropped = 0
        self._origin: dict[int, int] = {}  # position -> input line, in flight only
        # (position of the next item when the bad line was read, its record); appended by
        # whichever thread drains the generator, popped by the main loop: deque is thread-safe.
        self._pending: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        if self._remaining is None:
            raise TypeError("the input's length is not known")
        return max(0, self._remaining - self.dropped)

    def _blank(self) -> None:
        if self._bar is None:
            self._blanks += 1
        else:
            self._bar.advance()

    def follow(self, bar: Any) -> None:
        """Count blank lines (no record, but a line read) on ``bar``."""
        bar.advance(self._blanks)
        self._bar = bar

    def _parse(self) -> Iterator[Any]:
        pos = 0
        for index, raw in self._lines:
            if index in self._skip:
                continue
            ok, value = parse_item(raw)
            if not ok:
                self._pending.append((pos, input_error_record(index, value)))
                continue
            self._origin[pos] = index
            pos += 1
            yield value

    def take(self, n: int) -> list[tuple[int, Any]]:
        """The first ``n`` items (fewer at the end), as ``(input line, item)``."""
        self._ahead.extend(itertools.islice(self._items, n))
        return [(self._origin[pos], item) for pos, item in enumerate(self._ahead)]

    def drop(self, n: int) -> None:
        """The first ``n`` taken items were run already: iteration starts after them."""
        for _ in range(n):
            self._ahead.popleft()
        self.dropped = n

    def __iter__(self) -> Iterator[Any]:
        while self._ahead:
            yield self._ahead.popleft()
        yield from self._items

    def line_of(self, pos: int) -> int:
        return self._origin.pop(pos)

    def records_before(self, pos: int | None) -> Iterator[bytes]:
        """InputError records due before result ``pos`` (all of them when ``pos`` is None)."""
        while self._pending and (pos is None or self._pending[0][0] <= pos):
            yield self._pending.popleft()[1]


class Tally:
    """Records written by this run: how many good, and the failures by type."""

    def __init__(self) -> None:
        self.good = 0
        self.errors: Counter[str] = Counter()

    def add(self, good: bool, error_type: str) -> None:
        if good:
            self.good += 1
        else:
            self.errors[error_type] += 1


def run(
    fn: Callable[[Any], Any],
    *,
    target: str,
    input_path: str | None,
    output_path: str | None,
    resume: bool,
    retry_failed: bool,
    overwrite: bool,
    ordered: bool,
    options: dict[str, Any],
    retry_command: str,
) -> int:
    _check_flags(output_path, resume=resume, retry_failed=retry_failed, overwrite=overwrite)
    backend = options.get("backend", "auto")
    placement = place(backend, options.get("workers"), options.get("address"))
    _check_options(options)
    source, total = open_input(input_path)
    with source:
        if output_path is not None and input_path not in (None, "-"):
            refuse_same_file(input_path, output_path)
        # Everything that can be checked has been: from here on OUT is ours.
        fd, close_fd = open_output(output_path, resume=resume, overwrite=overwrite)
        writer = LineWriter(fd)
        try:
            state = scan(output_path) if resume and output_path else ResumeState()
            if state.torn:
                cut_torn_tail(fd, state)
                print(
                    f"gilfree: cut a torn last line ({state.torn} bytes) off {output_path}",
                    file=sys.stderr,
                )
            skip = state.good if retry_failed else state.done
            remaining = None if total is None else max(0, total - len(skip))
            feed = Feed(source, skip, remaining)
            prefilled, placement = _plan(fn, target, feed, placement, remaining, options)
            if placement.note:
                print(placement.note, file=sys.stderr)
            options = {**options, "backend": placement.backend, "workers": placement.workers}
            options["address"] = placement.address
            tally = Tally()
            bar = make_bar(remaining, target) if _bar_wanted(output_path) else Silent()
            with bar:
                feed.follow(bar)
                _drive(fn, feed, prefilled, writer, bar, tally, ordered=ordered, options=options)
            if output_path is not None and (state.duplicates or (retry_failed and state.failed)):
                final = compact(output_path)
                good, errors = len(final.good), final.error_types
            else:
                good = len(state.good) + tally.good
                errors = state.error_types + tally.errors if output_path else tally.errors
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
        except ConnectionError as exc:  # the Dask cluster went away mid-run
            where = output_path or "stdout"
            raise UsageError(
                f"{_first_line(exc)}; {writer.lines} new records are in {where}; "
                "rerun with --resume to finish"
            )
        finally:
            if close_fd:
                os.close(fd)
    failed = sum(errors.values())
    if failed:
        print(_summary(good, errors, output_path, retry_command), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _check_flags(
    output_path: str | None, *, resume: bool, retry_failed: bool, overwrite: bool
) -> None:
    if resume and output_path is None:
        raise UsageError("--resume needs -o OUT: it reads what an earlier run wrote there")
    if retry_failed and not resume:
        raise UsageError("--retry-failed goes with --resume: it re-runs the error records in OUT")
    if overwrite and output_path is None:
        raise UsageError("--overwrite needs -o OUT: it replaces that file")
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: keep OUT or replace it")


def _check_options(options: dict[str, Any]) -> None:
    """The library's own checks of the options, before OUT is touched."""
    from .._options import make_options
    from ..errors import ConfigurationError

    try:
        make_options(**options)
    except ConfigurationError as exc:
        raise UsageError(str(exc))


def _plan(
    fn: Callable[[Any], Any],
    target: str,
    feed: Feed,
    placement: Placement,
    remaining: int | None,
    options: dict[str, Any],
) -> tuple[list[tuple[bool, bytes]], Placement]:
    """For --backend auto: plan in a child process on the first items.

    Returns the records of the probe's calls that stand as they are (their
    items are dropped from the feed) and where the rest runs.
    """
    if placement.backend != "auto":
        return [], placement
    from .._api import AUTO_SAMPLES
    from .._auto import AUTO_BUDGET
    from ._probe import probe

    samples = feed.take(AUTO_SAMPLES)
    if not samples:  # nothing to run (or only bad lines): one worker is plenty
        return [], Placement("process", 1, None)
    started = time.monotonic()
    probed = probe(
        target,
        samples,
        budget=AUTO_BUDGET,
        total=remaining,
        workers=placement.workers,
        address=placement.address,
        timeout=options.get("timeout"),
    )
    if probed.failure is not None or probed.backend is None:
        note = f"gilfree: could not plan {target}: {probed.failure}; running it on worker processes"
        return [], Placement("process", placement.workers, None, note)
    kept = []
    timeout = options.get("timeout")
    # A probed call ran without --timeout: it stands only if the whole probe
    # took less (then so did each call). A failed one gets its --retries.
    overran = timeout is not None and time.monotonic() - started >= timeout
    for good, line in probed.records:
        if overran or (not good and options.get("retries")):
            break
        kept.append((good, line))
    feed.drop(len(kept))
    return kept, from_plan(probed.backend, probed.workers, placement)


def _drive(
    fn: Callable[[Any], Any],
    feed: Feed,
    prefilled: list[tuple[bool, bytes]],
    writer: LineWriter,
    bar: Any,
    tally: Tally,
    *,
    ordered: bool,
    options: dict[str, Any],
) -> None:
    """Run every item, write every record, count them in ``tally``."""
    from .._api import imap_indexed
    from ..errors import ConfigurationError

    def outcomes() -> Iterator[tuple[int, bool | None, Any]]:
        yield from ((pos, None, record) for pos, record in enumerate(prefilled))
        for pos, ok, value in results:
            yield pos + feed.dropped, ok, value

    results = imap_indexed(fn, feed, ordered=ordered, **options)
    try:
        for pos, ok, value in outcomes():
            for record in feed.records_before(pos if ordered else None):
                writer.write(record)
                tally.add(False, "InputError")
                bar.advance()
            index = feed.line_of(pos)
            if ok is None:  # a call the probe made
                good, line = value
                error_type = _error_type(line)
            elif ok:
                good, line = result_record(index, value)
                error_type = "SerializationError"
            else:
                # The job numbered its tasks from 0 after the probe's items.
                good, line = False, error_record(index, value, task=pos - feed.dropped)
                error_type = type(value).__qualname__
            writer.write(line)
            tally.add(good, error_type)
            bar.advance()
        for record in feed.records_before(None):
            writer.write(record)
            tally.add(False, "InputError")
            bar.advance()
    except ConfigurationError as exc:
        raise UsageError(str(exc))
    except ImportError as exc:
        if "pip install" not in str(exc):
            raise
        raise UsageError(str(exc))  # an optional backend that is not installed
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the pool at once when we leave early (Ctrl-C, broken pipe)


def _error_type(line: bytes) -> str:
    import json

    error = json.loads(line).get("error")
    return error["type"] if isinstance(error, dict) else ""


def _summary(good: int, errors: Counter[str], output_path: str | None, retry_command: str) -> str:
    """The last line on stderr when records failed: counts, the commonest error, what to do."""
    failed = sum(errors.values())
    ranked = errors.most_common()
    kind, n = ranked[0]
    common = f"{kind}, all of them" if n == failed else f"most often {kind}: {n}"
    if len(ranked) > 1:  # the others too: with a tie, "most often" alone picks one at random
        others = ", ".join(f"{k}: {c}" for k, c in ranked[1:4])
        common += f"; {others}" + (", ..." if len(ranked) > 4 else "")
    if output_path is None:
        what = "write them to a file (-o OUT) to be able to retry the failed ones"
    else:
        what = f"retry the failed ones with: {retry_command}"
    if errors.get("InputError"):
        what += " (InputError records need their input lines fixed first)"
    return f"gilfree: {good} succeeded, {failed} failed ({common}); {what}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _bar_wanted(output_path: str | None) -> bool:
    # Records written to the same terminal would tear through the bar's redraws.
    return output_path is not None or not sys.stdout.isatty()

"""The engine: feeds a backend from a lazy input, a bounded window at a time.

It runs in the caller's thread. The caller's iterator is only ever advanced
here (generators are not thread-safe, and a slow or blocking input must not
stall a pool's manager thread). Outcomes come back through the job's queue;
the engine turns them into events ``(ok, start, payload)``:

* ``(True, start, values)`` -- results of inputs ``start .. start+len-1``;
* ``(False, index, exc)``   -- input ``index`` failed.

With ``ordered=True`` events leave in input order; otherwise as they come.
Memory stays bounded: at most ``window`` chunks are submitted and not yet
handed on, whatever the input's length.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ._chunking import Chunker
from .backends import Backend, StreamJob
from .backends._run import EXTEND_KEEPS_PARTIAL, run_span
from .errors import GilfreeError, attempt_ended

#: Seconds the engine waits for an outcome before asking the backend whether it
#: is still alive. Not a poll for results: outcomes wake it at once.
HEALTH_CHECK_S = 1.0

Event = tuple[bool, int, Any]
#: An item auto's probe ran and saw fail, to run again: (input index, item, its
#: error); with no error, a sample the probe lost with others, run alone afresh.
Rerun = tuple[int, Any, BaseException | None]


def length_hint(iterable: Iterable[Any]) -> int | None:
    try:
        n = len(iterable)  # type: ignore[arg-type]
    except Exception:
        return None
    return n if isinstance(n, int) and n >= 0 else None


class Skipping:
    """An input whose items at indices ``skip`` already ran (the planner's probe)."""

    __slots__ = ("items", "skip")

    def __init__(self, items: Iterable[Any], skip: frozenset[int]) -> None:
        self.items = items
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


class Run:
    """One map/imap over one backend."""

    def __init__(
        self,
        backend: Backend,
        job: StreamJob,
        iterable: Iterable[Any],
        *,
        ordered: bool,
        total: int | None = None,
        prefilled: list[Event] | None = None,
        resubmit: list[Rerun] | None = None,
    ) -> None:
        self.backend = backend
        self.job = job
        self.ordered = ordered
        self._next_index = 0  # next input index to submit
        # Indices already run elsewhere (the planner's probe): not submitted.
        self._skip: set[int] = set(iterable.skip) if isinstance(iterable, Skipping) else set()
        self._it = iter(iterable)
        self._chunker = Chunker(backend, job, total)
        self._head = 0  # next index to hand on (ordered mode)
        self._outstanding = len(prefilled or ())  # submitted, not yet handed on
        # Outcomes the planner's probe already has (one item each) count as
        # outstanding until handed on, but not against the window: in input
        # order they may wait for items before them that are not even
        # submitted yet, and counting them would stop those ever being sent.
        self._probed = {ev[1] for ev in prefilled or ()}
        self._exhausted = False
        self._input_error: Exception | None = None  # the input iterator raised it
        job.input_done = False
        self._ready: dict[int, Event] = {}
        self._prefilled = list(prefilled or ())
        self._resubmit = list(resubmit or ())
        self.finished = False
        #: The Executor was shut down while this map was read (``cut``): what
        #: was submitted is handed on, then the reader learns the rest never ran.
        self._cut = False
        self._refused: int | None = None  # the first input index a shutdown refused
        self.deadline: float | None = None
        self.progress: Any = None

    # -- submission ---------------------------------------------------------
    def start(self) -> None:
        """Submit the first window now rather than on the first ``next``."""
        self._top_up()

    def cut(self) -> None:
        """Submit nothing more: the backend is shutting down under a reader."""
        self._cut = True

    def _all_sent(self) -> bool:
        return self._exhausted and self._refused is None and not self._resubmit

    def _send(self, start: int, items: list[Any], attempt: int = 0) -> bool:
        """Submit a chunk; False if a shutdown under the reader refused it."""
        if self._refused is None:
            try:
                if attempt:
                    self.backend.submit(self.job, start, items, attempt)
                else:
                    self.backend.submit(self.job, start, items)
                self._outstanding += len(items)
                return True
            except RuntimeError as exc:
                # Shut down between the reader's check and this submit.
                # PoolBroken is a RuntimeError too, and is the reader's.
                if not self._cut or isinstance(exc, GilfreeError):
                    raise
        self._refused = min(start, self._refused if self._refused is not None else start)
        return False

    def _top_up(self) -> None:
        if self._cut:
            return
        while self._resubmit:
            index, item, exc = self._resubmit.pop(0)
            if exc is None:  # lost with other samples: no attempt of its own counted
                self._send(index, [item])
                continue
            # The planner's probe was the first attempt of these items.
            self.job.earlier[index] = (attempt_ended(exc),)
            self._send(index, [item], 1)
        window = self.backend.window
        cap = self.backend.max_outstanding
        while not self._exhausted:
            size = self._chunker.next_size(self._next_index)
            limit = window * size if cap is None else min(window * size, max(cap, size))
            if self._outstanding - len(self._probed) >= limit:
                return
            items: list[Any] = []
            try:
                # extend keeps what the input gave before it raised (checked in
                # backends._run): those items still run.
                items.extend(itertools.islice(self._it, size))
            except Exception as exc:
                self._input_error = exc
            if not items or self._input_error is not None:
                self._exhausted = True
                self.job.input_done = True
            if not items:
                return
            start = self._next_index
            self._next_index += len(items)
            if self._skip:
                self._submit_around_skipped(start, items)
            elif not self._send(start, items):
                return

    def _submit_around_skipped(self, start: int, items: list[Any]) -> None:
        """Submit the runs of consecutive items between skipped indices (the
        skip set is small: the planner's samples)."""
        end = start + len(items)
        hits = sorted(i for i in self._skip if start <= i < end)
        self._skip.difference_update(hits)
        lo = start
        for i in [*hits, end]:
            if i > lo:
                self._send(lo, items[lo - start : i - start])
            lo = i + 1

    def _receive(self) -> Event:
        while True:
            wait = HEALTH_CHECK_S
            if self.deadline is not None:
                wait = self.deadline - time.monotonic()
                if wait <= 0:
                    raise TimeoutError("results not ready before the map's timeout")
                wait = min(wait, HEALTH_CHECK_S)
            try:
                return self.job.outcomes.get(timeout=wait)
            except queue.Empty:
                self.backend.check()

    # -- events -------------------------------------------------------------
    def events(self) -> Iterator[Event]:
        prefilled, self._prefilled = self._prefilled, []
        for ev in prefilled:
            yield from self._hand_on(ev)
        while True:
            self._top_up()
            if self._outstanding == 0 and self._cut and not self._all_sent():
                first = self._next_index if self._refused is None else self._refused
                raise RuntimeError(
                    f"the Executor was shut down while this map was being read: its "
                    f"items from #{first} on were not run (read a map "
                    f"before its Executor shuts down, or leave it unread until then: "
                    f"shutdown runs a map no one has started reading to its end)"
                )
            if self._outstanding == 0 and self._exhausted:
                if self._input_error is not None:
                    # As a plain loop would: every item read before the input
                    # failed has run and been handed on; then its error.
                    raise self._input_error
                self.finished = True
                return
            yield from self._hand_on(self._receive())

    def _hand_on(self, ev: Event) -> Iterator[Event]:
        if not self.ordered:
            yield from self._emit(ev)
            return
        start = ev[1]
        if start != self._head:
            self._ready[start] = ev
            return
        yield from self._emit(ev)
        while self._head in self._ready:
            yield from self._emit(self._ready.pop(self._head))

    def _emit(self, ev: Event) -> Iterator[Event]:
        n = len(ev[2]) if ev[0] else 1
        self._outstanding -= n
        if self._probed:
            self._probed.discard(ev[1])
        self._head = ev[1] + n
        if self.progress is not None:
            self.progress.advance(n)
        yield ev

    def abort(self) -> None:
        self.backend.cancel(self.job)


#: The inputs ``Direct`` takes: iterating them cannot raise or run user code.
DIRECT_INPUTS = (list, tuple, range)


def direct_ok(iterable: Iterable[Any]) -> bool:
    """Whether ``Direct`` can run this input (see ``DIRECT_INPUTS``)."""
    items = iterable.items if isinstance(iterable, Skipping) else iterable
    return EXTEND_KEEPS_PARTIAL and type(items) in DIRECT_INPUTS


class Direct:
    """``map`` on the serial backend (no ``timeout``) over a list, tuple or range.

    The items are called in the caller's thread, one C loop per span between
    the planner's probed items (``backends._run.run_span``), straight into the
    result list: no chunks, queue, window or events. That per-chunk work is
    what made a serial ``map`` of 200,000 ``x * x`` take 1.3x a plain loop.
    Outcomes are ``Run``'s: with ``errors="raise"`` a failed probe call is
    raised first (``Run`` hands the probe's outcomes on first), then the first
    failure in input order.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        retries: int,
        prefilled: list[Event] | None = None,
    ) -> None:
        self.fn = fn
        self.items: Sequence[Any] = (
            iterable.items if isinstance(iterable, Skipping) else iterable  # type: ignore[assignment]
        )
        self.retries = retries
        self.prefilled = sorted(prefilled or (), key=lambda ev: ev[1])
        self.finished = False

    def results(self, *, raise_errors: bool) -> list[Any]:
        """Every item's result, or its exception (``raise_errors=False``)."""
        if raise_errors:
            for ok, _index, payload in self.prefilled:
                if not ok:
                    raise payload
        out: list[Any] = []
        it = iter(self.items)
        for ok, index, payload in self.prefilled:
            self._span(it, out, index, raise_errors)
            next(it, None)  # the probe ran it
            out.append(payload[0] if ok else payload)
        self._span(it, out, len(self.items), raise_errors)
        self.finished = True
        return out

    def _span(self, it: Iterator[Any], out: list[Any], stop: int, raise_errors: bool) -> None:
        if stop > len(out):
            run_span(
                self.fn, self.items, it, out, stop, retries=self.retries, raise_errors=raise_errors
            )

    def abort(self) -> None:
        pass

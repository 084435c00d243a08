"""What ``Executor.map`` returns: its results, read lazily, or all at once at shutdown.

``concurrent.futures`` submits every item when ``map`` is called, so results
read after the ``with`` block are all there. gilfree's map keeps only a window
of items in flight, so the Executor's shutdown *drains* each map nobody had
started reading when it was called: it runs the rest of the input and keeps
the outcomes here for later. A map whose reading had begun is the reader's
(breaking out of it and leaving the block ends it, as closing it does): it is
*cut*, and its reader gets what was submitted, then an error naming the rest.
So is one over an endless input that is never read: draining that would never
end, as its ``concurrent.futures`` counterpart never returns from ``map``.

The decision is taken when ``shutdown`` is called (``at_shutdown``). Draining
may then run in a background thread (``wait=False``) while a reader starts
reading: both pull from the one event stream under a lock, the drain into
a buffer the reader empties first, so neither loses the other's events.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Generator, Iterator
from typing import Any

from ._engine import Event, Run
from ._session import _values


class MapResults(Iterator[Any]):
    """The results of one ``Executor.map``, in the order it was asked for."""

    def __init__(self, run: Run, errors: str) -> None:
        self._run = run
        self._errors = errors
        self._lock = threading.Lock()  # the decisions below: held briefly
        self._pull_lock = threading.Lock()  # held while waiting for an event
        self._source = run.events()  # pulled only under _pull_lock
        self._buffer: collections.deque[Event] = collections.deque()
        self._error: BaseException | None = None  # what the stream ended with
        self._ended = False
        self._reading = False  # a reader has asked for a result
        self._owed = False  # shutdown found it unread: it runs to its end
        self._values: Generator[Any, None, None] | None = None

    def __iter__(self) -> MapResults:
        return self

    def __next__(self) -> Any:
        if self._values is None:
            with self._lock:
                self._reading = True
                if self._values is None:
                    self._values = _values(self._events(), self._errors)
        return next(self._values)

    def close(self) -> None:
        """Stop the map: its tasks not started are cancelled."""
        with self._lock:
            self._reading = True
            self._owed = False
        if self._values is not None:
            self._values.close()
        if not self._run.finished:
            self._run.abort()

    def at_shutdown(self) -> bool:
        """The Executor is shutting down: True if this map must be drained (no one
        had started reading it); else it is cut (see the module docstring)."""
        with self._lock:
            if self._reading:
                self._run.cut()
                return False
            self._owed = True
            return True

    def drain(self) -> None:
        """Run every remaining item now, keeping the outcomes for the reader."""
        while self._pull(into_buffer=True) is not None:
            pass
        if self._error is not None and not isinstance(self._error, Exception):
            raise self._error  # Ctrl-C while draining is the caller's

    def _pull(self, *, into_buffer: bool) -> Event | None:
        """The next event: the buffer's first, else the stream's; None at its end."""
        with self._pull_lock:
            if self._buffer and not into_buffer:
                return self._buffer.popleft()
            if self._ended:
                return None
            try:
                event = next(self._source)
            except StopIteration:
                self._ended = True
                return None
            except BaseException as exc:  # the input raised, or the map's timeout
                self._ended = True
                self._error = exc
                if not self._run.finished:
                    self._run.abort()
                return None
            if into_buffer:
                self._buffer.append(event)
            return event

    def _events(self) -> Iterator[Event]:
        try:
            while (event := self._pull(into_buffer=False)) is not None:
                yield event
            if self._error is not None:
                error, self._error = self._error, None
                raise error
        finally:
            # A reader that stops early ends the map, unless shutdown owes it
            # its end (a drain in the background is still running it).
            if not self._run.finished and not self._owed:
                self._run.abort()

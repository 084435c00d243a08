"""Several calls of one task at once, each on a thread of the worker running it.

``backend="auto"`` plans threads for calls that wait (I/O) or release the GIL.
Run in the caller, such a call that crashes the interpreter ends the caller's
program and one that hangs leaks a thread there. So the job runs instead as
tasks of the process pool whose function is ``OnThreads(fn, timeout, threads)``
and whose argument is a batch of items: the worker calls ``fn`` on them on
``threads`` threads at once (kept for the next batch), each thread taking the
next item as it finishes one, and returns their ``Outcomes``. What the pool
guarantees for a task then holds for each call:

* a call that raises is that call's failure; the rest of the batch runs on;
* a call still running ``timeout`` seconds after it started is marked ``LATE``
  with its thread's stack at once; no item starts after that (those left are
  ``UNSTARTED``, for the backend to send again), the calls running finish or
  go late in turn, and the worker, holding a thread it cannot stop, retires
  after sending the batch home: the pool replaces it;
* a call that kills the worker kills the batch: the backend
  (``backends._pooled_threads``) runs each of its calls again alone, as a
  task of its own, where the culprit fails alone as on ``backend="process"``;
* a result that cannot be pickled fails that call only (``Outcomes`` pickles
  each result on its own).
"""

from __future__ import annotations

import pickle
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .. import _serialize

#: Outcome kinds: ``(OK, value)``, ``(FAILED, exception, traceback text)``,
#: ``(LATE, stack text)``, ``(UNSTARTED,)`` (after a late call, the items not
#: started yet), ``(UNPICKLABLE, message)``.
OK, FAILED, LATE, UNSTARTED, UNPICKLABLE = "ok", "failed", "late", "unstarted", "unpicklable"

_calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_crew_lock = threading.Lock()
_idle = 0


def _start(call: Callable[[], None]) -> None:
    """Run ``call`` on an idle crew thread, or on a new one."""
    global _idle
    with _crew_lock:
        spawn = _idle == 0
        if not spawn:
            _idle -= 1
    _calls.put(call)
    if spawn:
        threading.Thread(target=_serve, name="gilfree-on-threads", daemon=True).start()


def _serve() -> None:
    global _idle
    while True:
        call = _calls.get()
        call()
        del call  # an idle thread keeps no task's function, item or result
        with _crew_lock:
            _idle += 1


class OnThreads:
    """A task function: ``OnThreads(fn, timeout, threads)(items)`` calls ``fn``
    on the items on ``threads`` threads at once, and returns their ``Outcomes``."""

    __slots__ = ("fn", "threads", "timeout")

    def __init__(self, fn: Callable[[Any], Any], timeout: float | None, threads: int) -> None:
        self.fn = fn
        self.timeout = timeout
        self.threads = threads

    def __call__(self, items: list[Any]) -> Outcomes:
        run = _Run(self.fn, items)
        for _ in range(min(self.threads, len(items))):
            _start(run.take)
        late = run.wait(self.timeout)
        if late:
            from . import _worker

            _worker.retire_after_chunk(
                f"{late} call(s) ran past timeout={self.timeout} on its threads, "
                "which cannot be stopped"
            )
        return Outcomes(run.slots)


class _Run:
    """One batch: threads take its items in order until none is left or a
    call ran past its timeout; then the items not started are ``UNSTARTED``."""

    def __init__(self, fn: Callable[[Any], Any], items: list[Any]) -> None:
        self.fn = fn
        self.items = items
        n = len(items)
        self.slots: list[tuple[Any, ...] | None] = [None] * n
        self.started = [0] * n  # time.monotonic_ns() of each call's start
        self.idents = [0] * n
        self.next = 0
        self.left = n
        self.stop = False
        self.cv = threading.Condition()

    def take(self) -> None:
        """A thread's loop: call the next item, settle it, repeat."""
        cv, items, fn, slots = self.cv, self.items, self.fn, self.slots
        while True:
            with cv:
                k = self.next
                if self.stop or k >= len(items):
                    return
                self.next = k + 1
                self.idents[k] = threading.get_ident()
                self.started[k] = time.monotonic_ns()
            try:
                out: tuple[Any, ...] = (OK, fn(items[k]))
            except BaseException as exc:  # SystemExit in a call is that call's failure
                out = (FAILED, *_serialize.exception_payload(exc))
            with cv:
                if slots[k] is not None:
                    return  # marked late: the batch went home without it
                slots[k] = out
                self.left -= 1
                cv.notify()
            del out

    def wait(self, timeout: float | None) -> int:
        """Until every item is settled; returns how many calls ran late."""
        from . import _worker

        late = 0
        limit = None if timeout is None else int(timeout * 1e9)
        with self.cv:
            while self.left:
                if limit is None:
                    self.cv.wait()
                    continue
                now = time.monotonic_ns()
                running = [k for k in range(self.next) if self.slots[k] is None]
                overdue = [k for k in running if now - self.started[k] >= limit]
                if overdue:
                    frames = sys._current_frames()
                    for k in overdue:
                        self.slots[k] = (LATE, _stack(frames.get(self.idents[k])))
                    late += len(overdue)
                    self.left -= len(overdue)
                    if not self.stop:  # a stuck thread: start no more calls here
                        self.stop = True
                        for k in range(self.next, len(self.items)):
                            self.slots[k] = (UNSTARTED,)
                        self.left -= len(self.items) - self.next
                        self.next = len(self.items)
                    continue
                oldest = min((self.started[k] for k in running), default=now)
                _worker.restart_clock(oldest)  # the pool's own timeout, as a backstop
                self.cv.wait(max(0, oldest + limit - now) / 1e9)
        return late


def _stack(frame: Any) -> str:
    """A late call's stack, from its function down (this module's frames left out)."""
    if frame is None:
        return ""
    entries = traceback.extract_stack(frame)
    ours = [k for k, f in enumerate(entries) if f.filename == __file__]
    return "".join(traceback.format_list(entries[ours[-1] + 1 if ours else 0 :]))


class Outcomes:
    """A batch's outcomes, pickled one by one: a result that cannot be
    pickled fails its own call, not the batch."""

    __slots__ = ("slots",)

    def __init__(self, slots: list[Any]) -> None:
        self.slots = slots

    def __reduce__(self) -> tuple[Any, ...]:
        packed: list[tuple[Any, ...]] = []
        for slot in self.slots:
            if slot[0] != OK:
                packed.append(slot)
                continue
            value = slot[1]
            try:
                packed.append((OK, _serialize.dumps_data(value)))
            except BaseException as exc:  # __reduce__ may raise anything
                packed.append(
                    (
                        UNPICKLABLE,
                        f"result of type {type(value).__name__} ({_serialize.describe(value)}) "
                        f"cannot be pickled back to the parent: {type(exc).__name__}: {exc}",
                    )
                )
        return (_unpacked, (packed,))


def _unpacked(packed: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """In the parent: the outcomes, each result unpickled (one that fails, alone)."""
    out: list[tuple[Any, ...]] = []
    for slot in packed:
        if slot[0] != OK:
            out.append(slot)
            continue
        try:
            out.append((OK, pickle.loads(slot[1])))
        except Exception as exc:
            out.append(
                (UNPICKLABLE, f"a result could not be unpickled here: {type(exc).__name__}: {exc}")
            )
    return out

"""What every backend implements, and the jobs that carry outcomes back.

A *job* is one ``map``/``imap`` call or one ``Executor.submit``: a function,
its options, and a sink for outcomes. The engine (``gilfree._engine``) cuts the
input into *chunks* of consecutive items and hands each to
``Backend.submit(job, start, items)``; the backend runs them however it likes
and reports back through the job, from any thread:

* ``job.deliver(start, values)`` -- ``values[k]`` is the result of input
  ``start + k``; a backend may deliver a chunk in several consecutive pieces.
  The list is the reader's from then on (it pops the values as it hands them
  over): the backend must not read it again, not even its length;
* ``job.fail(index, exc)`` -- input ``index`` failed for good (after retries);
* ``job.record(n, seconds)`` -- ``n`` tasks took ``seconds`` of worker time,
  which the engine's chunker uses to size the next chunks.

Every index of every submitted chunk gets exactly one ``deliver`` or ``fail``,
unless the job was cancelled. Backends own retries (they hold the items) and
timeouts (only they can stop a worker).
"""

from __future__ import annotations

import itertools
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ClassVar

from .._options import Options
from ..errors import as_submitted_call

_job_ids = itertools.count(1)


class Job:
    """One unit of submission. Subclasses decide where outcomes go."""

    __slots__ = (
        "__weakref__",
        "cancelled",
        "earlier",
        "fn",
        "id",
        "input_done",
        "options",
        "stats_lock",
        "stats_n",
        "stats_s",
    )

    def __init__(self, fn: Callable[[Any], Any], options: Options) -> None:
        self.id = next(_job_ids)
        self.fn = fn
        self.options = options
        self.cancelled = False
        #: True once every item has been submitted (the engine says so); a
        #: backend may then favour balance over throughput for the tail.
        self.input_done = True
        #: How earlier attempts of an input index ended, elsewhere (auto's probe
        #: was the first attempt of an item run again): a retried task's note
        #: lists them before its own.
        self.earlier: dict[int, tuple[str, ...]] = {}
        self.stats_n = 0
        self.stats_s = 0.0
        # record() runs in whichever thread finished a chunk; on a free-threaded
        # build two unguarded adds lose updates (64 threads: many). Once a chunk.
        self.stats_lock = threading.Lock()

    def begin(self) -> bool:
        """Called just before a backend runs work of this job; False: skip it."""
        return not self.cancelled

    def deliver(self, start: int, values: list[Any]) -> None:
        raise NotImplementedError

    def fail(self, index: int, exc: BaseException) -> None:
        raise NotImplementedError

    def record(self, n: int, seconds: float) -> None:
        with self.stats_lock:
            self.stats_n += n
            self.stats_s += seconds

    def mean_task_seconds(self) -> float | None:
        with self.stats_lock:
            n, s = self.stats_n, self.stats_s
        return s / n if n else None

    def withdraw(self) -> bool:
        """Shutdown with ``cancel_pending``: True if this queued work is dropped.

        Only a future's job is: a stream (``map``) keeps its queued chunks,
        whose outcomes its caller still waits for.
        """
        return False


class StreamJob(Job):
    """Outcomes go to a queue read by the engine in the caller's thread."""

    __slots__ = ("outcomes",)

    def __init__(self, fn: Callable[[Any], Any], options: Options) -> None:
        super().__init__(fn, options)
        self.outcomes: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()

    def deliver(self, start: int, values: list[Any]) -> None:
        if not self.cancelled:
            self.outcomes.put((True, start, values))

    def fail(self, index: int, exc: BaseException) -> None:
        if not self.cancelled:
            self.outcomes.put((False, index, exc))


class FutureJob(Job):
    """One ``Executor.submit``: index 0 settles a ``concurrent.futures.Future``."""

    __slots__ = ("future",)

    def __init__(self, fn: Callable[[Any], Any], options: Options, future: Future) -> None:
        super().__init__(fn, options)
        self.future = future

    def begin(self) -> bool:
        if self.cancelled:
            return False
        if self.future.running():
            return True
        # False when the user cancelled the future while it was queued.
        return self.future.set_running_or_notify_cancel()

    def withdraw(self) -> bool:
        # False once it runs (a retry of a started task must still settle it).
        return self.future.cancel()

    def deliver(self, start: int, values: list[Any]) -> None:
        if not self.future.done():
            self.future.set_result(values[0])

    def fail(self, index: int, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(as_submitted_call(exc))


class Backend(ABC):
    """A place where chunks run. One instance per map call or per Executor."""

    name: ClassVar[str]
    #: Seconds of work the chunker aims for per chunk (0: always one item).
    chunk_target_s: ClassVar[float] = 0.0

    def __init__(self, options: Options) -> None:
        self.options = options
        self.workers = 1
        self._lock = threading.Lock()

    @property
    def window(self) -> int:
        """How many chunks the engine keeps in flight per job."""
        return 2 * self.workers + 2

    @abstractmethod
    def submit(self, job: Job, start: int, items: list[Any], attempt: int = 0) -> None:
        """Start running ``items`` (inputs ``start``, ``start+1``, ...); never blocks long.

        ``attempt`` is how many times these items already ran and failed
        elsewhere (backend="auto"'s probe): that many fewer retries are left.
        """

    #: Most items submitted and not yet handed on, whatever the chunk sizes
    #: (None: ``window`` chunks is the only bound).
    max_outstanding: int | None = None

    def max_chunk(self, job: Job) -> int:
        """Largest chunk this backend accepts for ``job`` (e.g. 1 where a timeout needs it)."""
        return 1 << 30

    def min_chunk(self, job: Job) -> int:
        """Smallest chunk worth cutting for ``job``, the tail's included (a
        worker running a chunk's calls on several threads at once leaves
        threads idle for a smaller one)."""
        return 1

    def check(self) -> None:  # noqa: B027 - optional hook, most backends cannot break
        """Raise if the backend can no longer deliver outcomes (its machinery died)."""

    def withdraw(self, job: Job) -> None:  # noqa: B027 - optional hook
        """``job`` was cancelled before it started: free what it holds now (its
        shared memory) instead of when its queued work is reached and dropped."""

    def cancel(self, job: Job) -> None:
        """Drop queued work of ``job``; running work may finish, its outcomes are ignored."""
        job.cancelled = True

    #: Whether ``shutdown`` takes ``cancel_pending`` (see there).
    cancels_pending: ClassVar[bool] = False

    def cancel_pending(self) -> None:  # noqa: B027 - only where cancels_pending
        """Drop queued work whose job agrees (``Job.withdraw``) and go on running:
        ``shutdown(cancel_futures=True)`` before it drains a map."""

    @abstractmethod
    def shutdown(self, *, wait: bool = True, kill: bool = False) -> None:
        """Release workers. ``kill`` stops running work at once.

        A backend with ``cancels_pending`` also takes ``cancel_pending=True``
        (``Executor.shutdown(cancel_futures=True)``): work already handed to a
        worker runs, and queued work whose job agrees (``Job.withdraw``) is
        dropped, its future cancelled -- by the backend, which alone knows what
        was handed on. Cancelling from the caller's thread instead raced the
        backend and could cancel every task before a worker took the first.
        """

    def statistics(self) -> dict[str, Any]:
        return {"backend": self.name, "workers": self.workers}

"""Threads inside process workers: how ``backend="auto"`` runs a plan for threads.

A plan for threads (calls that wait, or C code that releases the GIL) used to
run the job's calls on threads in the caller, where a call that crashes the
interpreter ends the caller's program. ``PooledThreads`` runs them on the
process pool that ran the probe instead: each chunk of up to ``per_worker``
items is one pool task, ``pool._on_threads.OnThreads``, whose worker calls
them all at once on threads of its own. So a job of I/O-bound calls overlaps
``workers x per_worker`` waits, as the thread plan asked, and every call keeps
what ``backend="process"`` promises:

* a call that raises fails alone (``retries=`` run it again, alone);
* a call past ``timeout=`` is a ``TaskTimeout`` with its thread's stack, on
  time; the worker holding that thread retires and is replaced;
* a call that kills its worker takes its batch down with it, unnamed: the
  batch runs again in halves (no attempt counted), the half that dies again
  is halved again, and the last few calls run alone, where the culprit is
  ``WorkerDied`` and the rest succeed. A batch the pool stopped (a call
  holding the GIL past ``timeout + GRACE_S``) or could not send (one
  argument that cannot be pickled) runs again each call alone at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import weakref
from typing import Any

from .._serialize import describe, with_remote_traceback
from ..errors import PoolBroken, SerializationError, TaskTimeout, WorkerDied, attempt_ended
from ..pool._on_threads import FAILED, LATE, OK, UNSTARTED, OnThreads
from ._base import Backend, Job

#: A batch holds up to this many items per thread: each thread takes the next
#: item as it finishes one, so only a batch's last round waits for its
#: slowest call (a batch of one round each ran 1.5x slower than threads here
#: on calls of 10-28 ms), and results come home at least every few calls.
ROUNDS = 4
#: A batch whose worker died runs again in halves down to this many calls;
#: fewer run again each alone, where the culprit's WorkerDied names it.
SPLIT_BELOW = 4
#: The pool stops a worker this long after the timeout of its oldest running
#: call ran out (``OnThreads`` restarts the pool's clock at that call's start):
#: only a call that holds the GIL keeps ``OnThreads`` from marking it late itself.
GRACE_S = 0.5


class PooledThreads(Backend):
    name = "thread"
    #: A batch holds about this much work, between ``min_chunk`` (one call per
    #: thread: fewer leave threads idle) and ``max_chunk`` (ROUNDS per thread).
    chunk_target_s = 1.0

    def __init__(self, pool: Backend, threads: int) -> None:
        super().__init__(pool.options)
        self.pool = pool
        self.per_worker = per_worker(threads, pool.workers)
        self.workers = pool.workers  # the chunker balances the tail over these
        self._batches: weakref.WeakKeyDictionary[Job, _Batches] = weakref.WeakKeyDictionary()

    @property
    def shape(self) -> tuple[int, int]:
        """Worker processes, and threads in each."""
        return self.pool.workers, self.per_worker

    def max_chunk(self, job: Job) -> int:
        fixed = job.options.chunksize
        most = ROUNDS * self.per_worker
        return min(fixed, most) if fixed else most

    def min_chunk(self, job: Job) -> int:
        return min(self.per_worker, self.max_chunk(job))

    def submit(self, job: Job, start: int, items: list[Any], attempt: int = 0) -> None:
        if len(items) == 1:
            # One call (the tail, or a probe's suspect run again): no threads to
            # share, and as a plain task a crash names it at once.
            self.pool.submit(job, start, items, attempt)
            return
        with self._lock:
            batches = self._batches.get(job)
            if batches is None:
                batches = self._batches[job] = _Batches(job, self.pool, self.per_worker)
        batches.send(start, items, attempt)

    def check(self) -> None:
        self.pool.check()

    def withdraw(self, job: Job) -> None:
        self.pool.withdraw(job)
        batches = self._batches.get(job)
        if batches is not None:
            self.pool.withdraw(batches)

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        batches = self._batches.get(job)
        if batches is not None:
            batches.cancelled = True

    def shutdown(self, *, wait: bool = True, kill: bool = False) -> None:
        self.pool.shutdown(wait=wait, kill=kill)

    def statistics(self) -> dict[str, Any]:
        return {
            **self.pool.statistics(),
            "backend": "thread",
            "threads_per_worker": self.per_worker,
        }


def per_worker(threads: int, workers: int) -> int:
    """Threads in each of ``workers`` processes, for ``threads`` in all."""
    return max(1, -(-threads // max(1, workers)))


class _Batches(Job):
    """The pool's job for one job's batches: task ``i`` is one batch, and its
    outcomes become the outer job's, item by item."""

    __slots__ = ("last_s", "lock", "outer", "pending", "pool", "seq")

    def __init__(self, outer: Job, pool: Backend, threads: int) -> None:
        timeout = outer.options.timeout
        opts = outer.options.with_(
            timeout=None if timeout is None else timeout + GRACE_S, retries=0
        )
        super().__init__(OnThreads(outer.fn, timeout, threads), opts)
        self.outer = outer
        self.pool = pool
        self.seq = itertools.count()
        self.lock = threading.Lock()
        self.last_s = 0.0
        #: batch number -> (first input index, items, attempts made)
        self.pending: dict[int, tuple[int, list[Any], int]] = {}

    def send(self, start: int, items: list[Any], attempt: int) -> None:
        k = next(self.seq)
        with self.lock:
            self.pending[k] = (start, items, attempt)
        self.pool.submit(self, k, [items])

    def begin(self) -> bool:
        return not self.cancelled and self.outer.begin()

    def record(self, n: int, seconds: float) -> None:
        # Called with the batch's time just before its outcomes are delivered.
        self.last_s = seconds

    def _take(self, k: int) -> tuple[int, list[Any], int] | None:
        with self.lock:
            return self.pending.pop(k, None)

    def deliver(self, start: int, values: list[Any]) -> None:
        batch = self._take(start)
        if batch is None or self.outer.cancelled:
            return
        first, items, attempt = batch
        outcomes = values[0]
        outer = self.outer
        run: list[Any] = []
        for k, slot in enumerate(outcomes):
            if slot[0] == OK:
                run.append(slot[1])
                continue
            if run:
                outer.deliver(first + k - len(run), run)
                run = []
            if slot[0] == UNSTARTED:  # a call went late: these never ran
                self._again(first + k, items[k:], attempt)
                break
            self._failed(first + k, items[k], attempt, self._error(first + k, items[k], slot))
        if run:
            outer.deliver(first + len(outcomes) - len(run), run)
        outer.record(len(outcomes), self.last_s)

    def _again(self, start: int, items: list[Any], attempt: int) -> None:
        try:
            self.send(start, items, attempt)
        except BaseException as err:  # the pool broke or shut down meanwhile
            for k in range(len(items)):
                self.outer.fail(start + k, err)

    def _error(self, index: int, item: Any, slot: tuple[Any, ...]) -> BaseException:
        if slot[0] == FAILED:
            return with_remote_traceback(slot[1], slot[2])
        if slot[0] == LATE:
            stack = slot[1].rstrip() or "(not available)"
            timeout = self.outer.options.timeout
            return TaskTimeout(
                f"task {index} (input: {describe(item)}) ran past its timeout of {timeout} s "
                "on a thread of a worker process; the thread was abandoned and its "
                f"worker replaced. Its Python stack when stopped:\n{stack}",
                index=index,
                timeout=timeout,
                stack=stack,
            )
        return SerializationError(slot[1], what="result", index=index)

    def _failed(self, index: int, item: Any, attempt: int, exc: BaseException) -> None:
        """One call failed: run it again alone while ``retries=`` allow, else report it."""
        outer = self.outer
        if attempt < outer.options.retries and not isinstance(exc, SerializationError):
            outer.earlier[index] = (*outer.earlier.get(index, ()), attempt_ended(exc))
            try:
                self.pool.submit(outer, index, [item], attempt + 1)
                return
            except BaseException as err:  # the pool broke or shut down meanwhile
                exc = err
        outer.fail(index, exc)

    def fail(self, index: int, exc: BaseException) -> None:
        """A whole batch failed, no call named: its worker died, or was stopped
        past the batch's own bound (a call holding the GIL), or the batch could
        not be sent. After a death each half runs again as a batch, so the
        innocent half finishes on threads and the culprit's half is split
        again, down to calls run alone (``SPLIT_BELOW``); otherwise each call
        runs again alone at once (a hang would cost a timeout per split)."""
        batch = self._take(index)
        if batch is None or self.outer.cancelled:
            return
        first, items, attempt = batch
        if isinstance(exc, PoolBroken) or (
            isinstance(exc, SerializationError) and exc.what == "function"
        ):
            for k in range(len(items)):
                self.outer.fail(first + k, exc)
            return
        if isinstance(exc, WorkerDied) and len(items) >= SPLIT_BELOW:
            half = len(items) // 2
            self._again(first, items[:half], attempt)
            self._again(first + half, items[half:], attempt)
            return
        for k, item in enumerate(items):
            try:
                self.pool.submit(self.outer, first + k, [item], attempt)
            except BaseException as err:
                self.outer.fail(first + k, err)


#: A plan for threads runs in worker processes unless sending a call's item
#: and result there (pickling, the pipe, shared memory) would cost more than
#: this share of the call: large arguments stay on threads in the caller.
MAX_SEND_SHARE = 0.05
# Per item beyond its bytes, and per byte moved (pickling twice the pipe's
# cost): see planner._costs.
_ITEM_S = 1e-6
_PICKLE_FACTOR = 2.0
_SHM_BYTE_S = 1.2e-9
_PIPE_BYTE_S = 1e-9  # when the probe measured none


def send_share(profile: Any) -> float | None:
    """What sending one call to a worker costs, as a share of the call (None: unknown)."""
    t = profile.task_seconds
    if not profile.calls or not t or profile.arg_bytes is None or profile.result_bytes is None:
        return None
    byte_s = (profile.process_byte_s or _PIPE_BYTE_S) * (1 + _PICKLE_FACTOR)
    send = _ITEM_S + (profile.arg_bytes + profile.result_bytes) * byte_s
    return float((send + profile.shm_bytes * _SHM_BYTE_S) / t)


def sendable(plan: Any, arg_bytes: float | None = None) -> bool:
    """Whether a plan's calls may run in worker processes: the planner has not
    ruled processes out (a function, argument or result that cannot be
    pickled), some probe call came back from one unless none was sent there,
    and sending an item (of ``arg_bytes``, when measured afresh) and its result
    costs at most ``MAX_SEND_SHARE`` of a call (large arguments stay on
    threads in the caller). An item that alone cannot be pickled fails alone,
    as on ``backend="process"``."""
    if "process" not in plan.predicted:
        return False
    profile = plan.profile
    if arg_bytes is not None:
        profile = dataclasses.replace(profile, arg_bytes=arg_bytes, shm_bytes=0.0)
    share = send_share(profile)
    if share is None or share > MAX_SEND_SHARE:
        return False
    outcomes = plan.outcomes.values()
    unsent = [v for ok, v in outcomes if not ok and isinstance(v, SerializationError)]
    # A function a worker could not unpickle (a ctypes global) fails every call
    # there, though a forked probe child, which inherits it, ran some.
    if any(v.what == "function" for v in unsent):
        return False
    return not outcomes or len(unsent) < len(outcomes)


def first_batch(shape: tuple[int, int], total: int | None, task_s: float) -> int:
    """The first batch the engine cuts for a job of ``total`` calls of
    ``task_s`` each, on ``shape`` (processes, threads in each): as
    ``_chunking.Chunker`` does with ``min_chunk`` and ``max_chunk``."""
    from .._chunking import first_size

    workers, threads = shape
    size = first_size(PooledThreads.chunk_target_s, workers, total, task_s, measured=1)
    return min(max(size, threads), ROUNDS * threads)

"""gilfree's process pool: one manager thread, one pair of pipes per worker.

Data flow::

    caller threads                     manager thread                     workers
    ──────────────                     ──────────────                     ───────
    submit(job, start, items)
      pickle items (caller's time) ──► incoming ─► pending ─► dispatch ─► task pipe ──► run chunk
      write 1 byte to wake pipe    ──► selector.select() ◄── result pipe ◄─────────── results
                                        │  ◄── process sentinels (exit) ◄─────────── death
                                        │  ◄── timer heap (per-task timeouts)
                                        └─► job.deliver / job.fail (engine queue or Future)

The manager blocks in one ``select`` over the wake pipe, every worker's result
pipe and every worker's sentinel: a result, a death, a new submission or a
timeout each wakes it at once, and nothing polls. It never writes to a pipe
that could block it (writes are non-blocking, the rest waits for writability),
so a worker that stops reading cannot stall it. It never shares a lock with a
worker, so a worker dying at any instant cannot leave the pool wedged.

Every submitted index gets exactly one outcome: a result, the task's
exception, ``WorkerDied``, ``TaskTimeout`` or ``SerializationError``. When a
worker dies, its slot (see ``_worker``) names the task it was running; that
task fails (or is retried) and the rest of its chunks run elsewhere.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import heapq
import itertools
import mmap
import os
import pickle
import selectors
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from .. import _serialize, _shm
from .._options import usable_cpus
from ..backends._base import Job
from ..errors import SerializationError
from . import _wire
from ._faults import FaultHandling
from ._procs import WorkerState, choose_start_method
from ._records import Chunk, PoolState, Worker, seqs
from ._results import ResultHandling

#: Chunks a worker may hold at once: the one it runs and one waiting in its
#: pipe, so a round trip (~0.1 ms) never leaves it idle between short chunks.
PREFETCH = 2
#: ...but near the end of a job, a chunk predicted to take longer than this
#: gets no second chunk queued behind it: that chunk could run on another
#: worker that frees up first (the slow-tail problem); the idle gap it costs is
#: one round trip. Before the end (more input coming, or plenty queued) long
#: chunks are prefetched too: with every core busy the parent waits for a CPU
#: to hand out the next chunk, and that wait (1-4 ms) left workers idle after
#: each 30 ms task (48 such tasks: 0.80 s, against 0.76 s for joblib).
PREFETCH_MAX_S = 0.01
#: Chunks predicted to run longer than this (or of unknown length) run in the
#: worker's careful loop, which streams partial results home; shorter ones in
#: its fast loop, which costs one slot write per task (~4x less overhead).
CAREFUL_ABOVE_S = 0.1
#: Seconds workers get to exit after their pipes close before they are killed.
STOP_GRACE_S = 2.0
#: Distinct pickled functions remembered by workers before the oldest is dropped.
FN_CACHE = 256


@contextlib.contextmanager
def _frozen_heap(method: str) -> Iterator[None]:
    """Fork with the parent's objects frozen out of the children's garbage collector.

    A forked worker shares the parent's heap copy-on-write, but its first
    collection walks every object and so copies every page. Frozen objects are
    skipped by the children's collector; the parent unfreezes at once.
    200,000 tiny tasks: median 0.063 s before, 0.050 s after (same run).
    """
    if method != "fork":
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class ProcessPool(ResultHandling, FaultHandling):
    def __init__(
        self,
        workers: int,
        *,
        start_method: str | None = None,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
        share_threshold: int = _shm.DEFAULT_THRESHOLD,
    ) -> None:
        self.size = workers
        self._arena = _shm.Arena(share_threshold)
        self._worker_config = {
            "parent": os.getpid(),
            "max_tasks": max_tasks_per_worker,
            "max_memory": max_worker_memory,
            "share_threshold": share_threshold,
            # BLAS/OpenMP threads per worker, so workers x threads <= CPUs.
            "blas_threads": max(1, usable_cpus() // workers),
        }
        self._later_method = start_method or "zygote"
        self._lock = threading.Lock()
        self._state = PoolState.RUNNING
        self._incoming: collections.deque[Chunk] = collections.deque()
        self._woken = False
        self._error: BaseException | None = None
        self._job_fns: weakref.WeakKeyDictionary[Job, tuple[bytes, int] | SerializationError] = (
            weakref.WeakKeyDictionary()
        )
        self._fn_keys: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._forgotten: list[int] = []
        self._fn_time: dict[int, tuple[int, float]] = {}  # fn key -> (tasks, seconds)
        self._key_seq = itertools.count(1)
        self.stats = collections.Counter[str]()

        # Slots: 4 int64 per worker, shared with the workers (see _worker).
        self._slots_fd = os.memfd_create("gilfree-slots", os.MFD_CLOEXEC)
        os.ftruncate(self._slots_fd, max(32 * workers, mmap.PAGESIZE))
        self._slots = mmap.mmap(self._slots_fd, 0)
        self._slot_view = memoryview(self._slots).cast("q")
        # Workers hold the read end; only we hold the write end. EOF = we died.
        self._alive_r, self._alive_w = os.pipe()
        self._workers: list[Worker | None] = [None] * workers
        # Fork the first workers now, while this thread may be the only one.
        method = choose_start_method(start_method)
        inherited = [self._alive_w]
        try:
            with _frozen_heap(method):
                for i in range(workers):
                    w = self._workers[i] = self._start_worker(i, method, inherited)
                    inherited += w.parent_fds
        except BaseException:
            self._abort_start()
            raise

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        for w in self._workers:
            assert w is not None
            self._watch(w)
        self._pending: collections.deque[Chunk] = collections.deque()
        self._free: collections.deque[Worker] = collections.deque()
        for w in self._workers:
            self._free.extend([w] * PREFETCH)  # type: ignore[list-item]
        self._chunks: dict[int, Chunk] = {}
        self._timers: list[tuple[float, int, int]] = []  # (when, seq, chunk seq)
        self._stop_deadline: float | None = None
        self._thread = threading.Thread(
            target=self._manage, name="gilfree-pool-manager", daemon=True
        )
        self._thread.start()

    # -- called from any thread ----------------------------------------------
    def submit(self, job: Job, start: int, items: list[Any]) -> None:
        fn = self._function(job)
        if isinstance(fn, SerializationError):
            for k in range(len(items)):
                job.fail(start + k, fn)
            return
        _blob, key = fn
        chunks: list[Chunk] = []
        try:
            chunks.append(Chunk(job, start, items, self._dumps(items), key))
        except Exception:
            chunks.extend(self._split_unpicklable(job, start, items, key))
        with self._lock:
            if self._state is not PoolState.RUNNING:
                raise RuntimeError("cannot schedule new work after the pool was shut down")
            self._incoming.extend(chunks)
            self._wake_locked()

    def _dumps(self, items: list[Any], by_value: bool = False) -> bytes:
        """Pickle task items; large NumPy arrays go through shared memory."""
        # TODO(issue 13): keep the lease on the chunk, release it when the chunk is done.
        blob, _lease = self._arena.dumps(items, by_value=by_value)
        return blob

    def _function(self, job: Job) -> tuple[bytes, int] | SerializationError:
        cached = self._job_fns.get(job)
        if cached is not None:
            return cached
        try:
            blob = _serialize.dump_function(job.fn)
        except SerializationError as exc:
            self._job_fns[job] = exc
            return exc
        with self._lock:
            key = self._fn_keys.get(blob)
            if key is None:
                key = self._fn_keys[blob] = next(self._key_seq)
                if len(self._fn_keys) > FN_CACHE:
                    _old_blob, old_key = self._fn_keys.popitem(last=False)
                    self._forgotten.append(old_key)
            else:
                self._fn_keys.move_to_end(blob)
        self._job_fns[job] = (blob, key)
        return blob, key

    def _split_unpicklable(self, job: Job, start: int, items: list[Any], key: int) -> list[Chunk]:
        """Pickle items one by one: failures fail their task, the rest run in order."""
        chunks = []
        for k, item in enumerate(items):
            try:
                blob = self._dumps([item])
            except Exception as exc:
                job.fail(start + k, _serialize.argument_error(start + k, item, exc))
                continue
            chunks.append(Chunk(job, start + k, [item], blob, key))
        return chunks

    def _wake_locked(self, force: bool = False) -> None:
        # The byte is written before the flag is set: a KeyboardInterrupt in
        # between must not leave the flag up with the manager asleep.
        if force or not self._woken:
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass
            self._woken = True

    def shutdown(self, *, wait: bool = True, kill: bool = False) -> None:
        with self._lock:
            if kill and self._state is not PoolState.CLOSED:
                self._state = PoolState.KILLING
            elif self._state is PoolState.RUNNING:
                self._state = PoolState.CLOSING
            self._wake_locked(force=True)
        if (wait or kill) and threading.current_thread() is not self._thread:
            # Bounded: the manager kills workers that outstay STOP_GRACE_S.
            self._thread.join()

    def check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"gilfree's process pool failed: {self._error!r}") from self._error
        if not self._thread.is_alive() and self._state is not PoolState.CLOSED:
            raise RuntimeError("gilfree's process pool manager thread is gone")

    def statistics(self) -> dict[str, Any]:
        return {
            "workers": self.size,
            "state": self._state.value,
            "pids": [w.pid for w in self._workers if w is not None],
            **self.stats,
        }

    # -- the manager thread ----------------------------------------------------
    def _manage(self) -> None:
        try:
            while not self._finished():
                for key, _mask in self._selector.select(self._next_timeout()):
                    kind, w = key.data
                    if w is not None and w.state is WorkerState.DEAD:
                        continue  # a stale event from this batch; its fds may be reused
                    if kind == "result":
                        self._on_readable(w)
                    elif kind == "exit":
                        self._on_exit(w)
                    elif kind == "write":
                        self._on_writable(w)
                    else:
                        self._drain_wake()
                self._take_incoming()
                self._fire_timers()
                self._dispatch()
                self._progress_shutdown()
        except BaseException as exc:  # a bug here must not hang callers
            self._error = exc
            self._fail_everything(exc)
        finally:
            self._close_all()

    def _finished(self) -> bool:
        return self._state in (PoolState.CLOSING, PoolState.KILLING) and all(
            w is None or w.state is WorkerState.DEAD for w in self._workers
        )

    def _next_timeout(self) -> float | None:
        deadlines = []
        if self._timers:
            deadlines.append(self._timers[0][0])
        if self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _take_incoming(self) -> None:
        with self._lock:
            self._woken = False
            incoming, self._incoming = self._incoming, collections.deque()
            forgotten, self._forgotten = self._forgotten, []
        self._pending.extend(incoming)
        for key in forgotten:
            self._fn_time.pop(key, None)
            for w in self._live_workers():
                if key in w.fn_keys:
                    w.fn_keys.discard(key)
                    self._send(w, (_wire.FORGET, key))

    def _live_workers(self) -> list[Worker]:
        return [w for w in self._workers if w is not None and w.state is WorkerState.RUNNING]

    # -- dispatch ---------------------------------------------------------------
    def _dispatch(self) -> None:
        if self._state is not PoolState.RUNNING and self._state is not PoolState.CLOSING:
            return
        pending, free = self._pending, self._free
        while pending and free:
            w = free.popleft()
            if w.state is not WorkerState.RUNNING or len(w.inflight) >= PREFETCH:
                continue  # a stale entry
            if (
                w.inflight
                and self._predicted_s(w.inflight[-1]) > PREFETCH_MAX_S
                and pending[0].job.input_done
                and len(pending) < self.size
            ):
                continue  # the tail: re-added when its chunk completes
            budget = self._budget(w)
            if budget == 0:
                continue  # it retires after its running chunk
            chunk = pending.popleft()
            if chunk.job.cancelled or not chunk.job.begin():
                free.appendleft(w)
                continue
            if len(chunk.items) > budget:  # recycling: never send past max_tasks
                rest = self._rechunk(chunk, budget, len(chunk.items))
                chunk = self._rechunk(chunk, 0, budget)  # type: ignore[assignment]
                pending.appendleft(rest)  # type: ignore[arg-type]
            w.assigned += len(chunk.items)
            self._assign(w, chunk)
            if len(w.inflight) < PREFETCH:
                free.append(w)

    def _budget(self, w: Worker) -> int:
        """Tasks `w` may still be sent before max_tasks_per_worker retires it."""
        limit = self._worker_config["max_tasks"]
        return (1 << 62) if limit is None else max(0, limit - w.assigned)

    def _predicted_s(self, chunk: Chunk) -> float:
        """Seconds the rest of `chunk` should take: from its job, else from its function
        (Executor.submit makes a job per call, so the function is what repeats)."""
        mean = chunk.job.mean_task_seconds()
        if mean is None:
            n, s = self._fn_time.get(chunk.key, (0, 0.0))
            mean = s / n if n else None
        return float("inf") if mean is None else mean * (len(chunk.items) - chunk.done)

    def _assign(self, w: Worker, chunk: Chunk) -> None:
        if chunk.key not in w.fn_keys:
            blob = self._job_fns.get(chunk.job)
            assert isinstance(blob, tuple)
            self._send(w, (_wire.FN, chunk.key, blob[0]))
            w.fn_keys.add(chunk.key)
        chunk.worker = w
        w.inflight.append(chunk)
        self._chunks[chunk.seq] = chunk
        timeout = chunk.job.options.timeout
        # Careful mode times each task (for timeouts) and streams results of
        # long chunks; fast mode is for chunks known to be short.
        careful = timeout is not None or self._predicted_s(chunk) > CAREFUL_ABOVE_S
        self._send(w, (_wire.CHUNK, chunk.seq, chunk.key, chunk.blob, careful))
        if timeout is not None:
            heapq.heappush(self._timers, (time.monotonic() + timeout, next(seqs), chunk.seq))
        self.stats["chunks"] += 1

    def _send(self, w: Worker, msg: tuple[Any, ...]) -> None:
        try:
            w.writer.send(pickle.dumps(msg, _serialize.PROTOCOL))
        except (BrokenPipeError, OSError):
            return  # the worker is dying; its sentinel will tell us
        self._want_write(w, w.writer.waiting)

    def _want_write(self, w: Worker, want: bool) -> None:
        if want == w.writing or w.state is WorkerState.DEAD:
            return
        if want:
            self._selector.register(w.task_fd, selectors.EVENT_WRITE, ("write", w))
        else:
            self._selector.unregister(w.task_fd)
        w.writing = want

    def _on_writable(self, w: Worker) -> None:
        try:
            w.writer.flush()
        except OSError:
            self._want_write(w, False)
            return
        self._want_write(w, w.writer.waiting)

    # -- workers ---------------------------------------------------------------------
    def _start_worker(self, index: int, method: str, inherited: list[int]) -> Worker:
        self._slot_view[4 * index : 4 * index + 4] = memoryview(bytes(32)).cast("q")
        return Worker(
            index,
            method,
            self._slots_fd,
            self._alive_r,
            inherited,
            self._worker_config,
        )

    def _watch(self, w: Worker) -> None:
        self._selector.register(w.result_fd, selectors.EVENT_READ, ("result", w))
        self._selector.register(w.sentinel, selectors.EVENT_READ, ("exit", w))

    def _unwatch(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _replace(self, index: int) -> None:
        w = self._workers[index] = self._start_worker(index, self._later_method, [])
        self._watch(w)
        self._free.extend([w] * PREFETCH)
        self.stats["started"] += 1

    def _abort_start(self) -> None:
        for w in self._workers:
            if w is not None:
                w.kill()
                w.wait(5)
                w.release()
        self._close_shared()

    def _close_shared(self) -> None:
        self._slot_view.release()
        self._slots.close()
        for fd in (self._slots_fd, self._alive_r, self._alive_w):
            os.close(fd)

    # -- shutting down ----------------------------------------------------------------
    def _progress_shutdown(self) -> None:
        if self._state is PoolState.KILLING:
            if self._pending or self._chunks:
                self._fail_everything(RuntimeError("the pool was shut down before this task ran"))
            for w in self._workers:
                if w is not None and w.state is not WorkerState.DEAD:
                    w.kill()
                    w.state = WorkerState.STOPPING
        elif self._state is PoolState.CLOSING and not self._pending and not self._chunks:
            if self._stop_deadline is None:
                self._stop_deadline = time.monotonic() + STOP_GRACE_S
                for w in self._workers:
                    if w is not None and w.state is not WorkerState.DEAD:
                        w.close_task_pipe()
                        self._want_write(w, False)
                        w.state = WorkerState.STOPPING
            elif time.monotonic() >= self._stop_deadline:
                for w in self._workers:
                    if w is not None and w.state is not WorkerState.DEAD:
                        w.kill()

    def _fail_everything(self, exc: BaseException) -> None:
        for chunk in list(self._chunks.values()) + list(self._pending):
            for pos in range(chunk.done, len(chunk.items)):
                try:
                    chunk.job.fail(
                        chunk.start + pos,
                        exc
                        if isinstance(exc, RuntimeError)
                        else RuntimeError(f"gilfree's process pool failed: {exc!r}"),
                    )
                except Exception:
                    pass
        self._chunks.clear()
        self._pending.clear()

    def _close_all(self) -> None:
        for w in self._workers:
            if w is None or w.state is WorkerState.DEAD:
                continue
            w.kill()
            w.wait(5)
            w.release()
        for w in self._workers:
            if w is not None:
                self._sweep(w)
        self._arena.close()
        with self._lock:
            self._state = PoolState.CLOSED
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._close_shared()

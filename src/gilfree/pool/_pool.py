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
import enum
import heapq
import itertools
import mmap
import os
import pickle
import selectors
import signal
import threading
import time
import weakref
from typing import Any

from .. import _serialize, _shm
from .._options import usable_cpus
from ..backends._base import Job
from ..errors import SerializationError, TaskTimeout, WorkerDied
from . import _wire
from ._procs import WorkerProcess, WorkerState, choose_start_method, describe_exit

#: Chunks a worker may hold at once: the one it runs and one waiting in its
#: pipe, so a round trip (~0.1 ms) never leaves it idle between short chunks.
PREFETCH = 2
#: ...but a chunk predicted to take longer than this gets no second chunk
#: queued behind it: that chunk could run on another worker that frees up
#: first (the slow-tail problem). The idle gap it costs is one round trip.
PREFETCH_MAX_S = 0.01
#: Chunks predicted to run longer than this (or of unknown length) run in the
#: worker's careful loop, which streams partial results home; shorter ones in
#: its fast loop, which costs one slot write per task (~4x less overhead).
CAREFUL_ABOVE_S = 0.1
#: Seconds workers get to exit after their pipes close before they are killed.
STOP_GRACE_S = 2.0
#: Deaths a chunk may cause without any task of it running before its tasks
#: fail (a crash while unpickling its items, say).
MAX_ANONYMOUS_DEATHS = 2
#: Distinct pickled functions remembered by workers before the oldest is dropped.
FN_CACHE = 256

_seqs = itertools.count(1)


class PoolState(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"  # finish queued work, then stop workers
    KILLING = "killing"  # stop workers now, drop queued work
    CLOSED = "closed"


class _Chunk:
    __slots__ = (
        "attempt",
        "blob",
        "by_value",
        "deaths",
        "done",
        "items",
        "job",
        "key",
        "seq",
        "start",
        "worker",
    )

    def __init__(
        self,
        job: Job,
        start: int,
        items: list[Any],
        blob: bytes,
        key: int,
        attempt: int = 0,
        by_value: bool = False,
    ) -> None:
        self.seq = next(_seqs)
        self.job = job
        self.start = start
        self.items = items
        self.blob = blob
        self.key = key
        self.attempt = attempt
        self.by_value = by_value
        self.done = 0  # leading items whose results arrived
        self.deaths = 0
        self.worker: _Worker | None = None


class _Worker(WorkerProcess):
    """A worker process plus the pool's bookkeeping for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inflight: collections.deque[_Chunk] = collections.deque()
        self.assigned = 0  # tasks sent, for max_tasks_per_worker
        self.fn_keys: set[int] = set()
        self.reader = _wire.FrameReader(self.result_fd)
        self.writer = _wire.FrameWriter(self.task_fd)
        self.writing = False  # registered for writability


class ProcessPool:
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
        self._incoming: collections.deque[_Chunk] = collections.deque()
        self._woken = False
        self._error: BaseException | None = None
        self._job_fns: weakref.WeakKeyDictionary[Job, tuple[bytes, int] | SerializationError] = (
            weakref.WeakKeyDictionary()
        )
        self._fn_keys: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._forgotten: list[int] = []
        self._key_seq = itertools.count(1)
        self.stats = collections.Counter[str]()

        # Slots: 4 int64 per worker, shared with the workers (see _worker).
        self._slots_fd = os.memfd_create("gilfree-slots", os.MFD_CLOEXEC)
        os.ftruncate(self._slots_fd, max(32 * workers, mmap.PAGESIZE))
        self._slots = mmap.mmap(self._slots_fd, 0)
        self._slot_view = memoryview(self._slots).cast("q")
        # Workers hold the read end; only we hold the write end. EOF = we died.
        self._alive_r, self._alive_w = os.pipe()
        self._workers: list[_Worker | None] = [None] * workers
        # Fork the first workers now, while this thread may be the only one.
        method = choose_start_method(start_method)
        inherited = [self._alive_w]
        try:
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
        self._pending: collections.deque[_Chunk] = collections.deque()
        self._free: collections.deque[_Worker] = collections.deque()
        for w in self._workers:
            self._free.extend([w] * PREFETCH)  # type: ignore[list-item]
        self._chunks: dict[int, _Chunk] = {}
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
        chunks: list[_Chunk] = []
        try:
            chunks.append(_Chunk(job, start, items, self._dumps(items), key))
        except Exception:
            chunks.extend(self._split_unpicklable(job, start, items, key))
        with self._lock:
            if self._state is not PoolState.RUNNING:
                raise RuntimeError("cannot schedule new work after the pool was shut down")
            self._incoming.extend(chunks)
            self._wake_locked()

    def _dumps(self, items: list[Any], by_value: bool = False) -> bytes:
        """Pickle task items; large NumPy arrays go through shared memory."""
        if _shm.numpy_loaded():
            return _shm.dumps(items, self._arena.reduce, by_value=by_value)
        return _serialize.dumps_data(items, by_value=by_value)

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

    def _split_unpicklable(self, job: Job, start: int, items: list[Any], key: int) -> list[_Chunk]:
        """Pickle items one by one: failures fail their task, the rest run in order."""
        chunks = []
        for k, item in enumerate(items):
            try:
                blob = self._dumps([item])
            except Exception as exc:
                job.fail(start + k, _serialize.argument_error(start + k, item, exc))
                continue
            chunks.append(_Chunk(job, start + k, [item], blob, key))
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
            for w in self._live_workers():
                if key in w.fn_keys:
                    w.fn_keys.discard(key)
                    self._send(w, (_wire.FORGET, key))

    def _live_workers(self) -> list[_Worker]:
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
            if w.inflight and self._predicted_s(w.inflight[-1]) > PREFETCH_MAX_S:
                continue  # re-added when its chunk completes
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

    def _budget(self, w: _Worker) -> int:
        """Tasks `w` may still be sent before max_tasks_per_worker retires it."""
        limit = self._worker_config["max_tasks"]
        return (1 << 62) if limit is None else max(0, limit - w.assigned)

    @staticmethod
    def _predicted_s(chunk: _Chunk) -> float:
        mean = chunk.job.mean_task_seconds()
        return float("inf") if mean is None else mean * (len(chunk.items) - chunk.done)

    def _assign(self, w: _Worker, chunk: _Chunk) -> None:
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
            heapq.heappush(self._timers, (time.monotonic() + timeout, next(_seqs), chunk.seq))
        self.stats["chunks"] += 1

    def _send(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        try:
            w.writer.send(pickle.dumps(msg, _serialize.PROTOCOL))
        except (BrokenPipeError, OSError):
            return  # the worker is dying; its sentinel will tell us
        self._want_write(w, w.writer.waiting)

    def _want_write(self, w: _Worker, want: bool) -> None:
        if want == w.writing or w.state is WorkerState.DEAD:
            return
        if want:
            self._selector.register(w.task_fd, selectors.EVENT_WRITE, ("write", w))
        else:
            self._selector.unregister(w.task_fd)
        w.writing = want

    def _on_writable(self, w: _Worker) -> None:
        try:
            w.writer.flush()
        except OSError:
            self._want_write(w, False)
            return
        self._want_write(w, w.writer.waiting)

    # -- results ----------------------------------------------------------------
    def _on_readable(self, w: _Worker) -> None:
        for raw in w.reader.read():
            self._handle(w, raw)
        if w.reader.eof:  # it is exiting; its sentinel will say so
            self._unwatch(w.result_fd)

    def _handle(self, w: _Worker, raw: bytes | bytearray) -> None:
        try:
            msg = pickle.loads(raw)
        except Exception as exc:
            self._unloadable_results(w, exc)
            return
        kind = msg[0]
        if kind == _wire.RESULT:
            self._on_result(w, *msg[1:])
        elif kind == _wire.LOADFAIL:
            self._on_loadfail(w, msg[1], msg[2])
        elif kind == _wire.RETIRE:
            w.state = WorkerState.RETIRING
            self.stats["recycled"] += 1

    def _on_result(
        self,
        w: _Worker,
        seq: int,
        offset: int,
        values: list[Any],
        failures: list[tuple[int, BaseException, str]],
        elapsed: float,
        final: bool,
    ) -> None:
        chunk = self._chunks.get(seq)
        if chunk is None:
            return
        job = chunk.job
        job.record(len(values), elapsed)
        if not failures:
            job.deliver(chunk.start + offset, values)
        else:
            bad = {pos: (exc, tb) for pos, exc, tb in failures}
            run_start = offset
            for pos in range(offset, offset + len(values)):
                if pos in bad:
                    if pos > run_start:
                        job.deliver(
                            chunk.start + run_start, values[run_start - offset : pos - offset]
                        )
                    exc, tb = bad[pos]
                    self._task_failed(chunk, pos, _serialize.with_remote_traceback(exc, tb))
                    run_start = pos + 1
            if run_start < offset + len(values):
                job.deliver(chunk.start + run_start, values[run_start - offset :])
        chunk.done = offset + len(values)
        if final:
            self._complete(w, chunk)

    def _complete(self, w: _Worker, chunk: _Chunk) -> None:
        try:
            w.inflight.remove(chunk)
        except ValueError:
            pass
        self._chunks.pop(chunk.seq, None)
        if w.state is WorkerState.RUNNING:
            self._free.append(w)

    def _task_failed(self, chunk: _Chunk, pos: int, exc: BaseException) -> None:
        """Task `pos` of `chunk` failed: retry it if allowed, else report it."""
        job = chunk.job
        if chunk.attempt < job.options.retries and not isinstance(exc, SerializationError):
            retry = self._rechunk(chunk, pos, pos + 1)
            if retry is not None:
                retry.attempt = chunk.attempt + 1
                self._pending.appendleft(retry)
                self.stats["retries"] += 1
                return
        job.fail(chunk.start + pos, exc)

    def _rechunk(self, chunk: _Chunk, a: int, b: int) -> _Chunk | None:
        """Items a..b-1 of `chunk` as a fresh chunk (for requeueing elsewhere)."""
        if a >= b:
            return None
        items = chunk.items[a:b]
        try:
            blob = self._dumps(items, by_value=chunk.by_value)
        except Exception:  # pickled before, so this does not happen; be safe
            blob = self._dumps(items, by_value=True)
        new = _Chunk(
            chunk.job, chunk.start + a, items, blob, chunk.key, chunk.attempt, chunk.by_value
        )
        new.deaths = chunk.deaths
        return new

    def _on_loadfail(self, w: _Worker, seq: int, message: str) -> None:
        chunk = self._chunks.get(seq)
        if chunk is None:
            return
        self._complete(w, chunk)
        if not chunk.by_value:
            # Pickled by reference but not importable there (a __main__ class
            # in a spawned worker): send it by value.
            again = self._rechunk(chunk, 0, len(chunk.items))
            assert again is not None
            again.by_value = True
            again.blob = self._dumps(chunk.items, by_value=True)
            self._pending.appendleft(again)
        elif len(chunk.items) > 1:
            for k in reversed(range(len(chunk.items))):
                single = self._rechunk(chunk, k, k + 1)
                assert single is not None
                self._pending.appendleft(single)
        else:
            chunk.job.fail(
                chunk.start,
                SerializationError(
                    f"argument of task {chunk.start} ({_serialize.describe(chunk.items[0])}) "
                    f"could not be unpickled in the worker: {message}",
                    what="argument",
                    index=chunk.start,
                ),
            )

    def _unloadable_results(self, w: _Worker, exc: Exception) -> None:
        if not w.inflight:
            return
        chunk = w.inflight[0]
        for pos in range(chunk.done, len(chunk.items)):
            chunk.job.fail(
                chunk.start + pos,
                SerializationError(
                    f"the result of task {chunk.start + pos} could not be unpickled in the parent: "
                    f"{type(exc).__name__}: {exc}",
                    what="result",
                    index=chunk.start + pos,
                ),
            )
        self._complete(w, chunk)

    # -- deaths and timeouts ----------------------------------------------------------
    def _on_exit(self, w: _Worker) -> None:
        # Results the worker wrote before it died are still in the pipe: keep them.
        while not w.reader.eof:
            frames = w.reader.read()
            if not frames and not w.reader.eof:
                break
            for raw in frames:
                self._handle(w, raw)
        self._unwatch(w.result_fd)
        self._unwatch(w.sentinel)
        self._want_write(w, False)
        w.wait(1.0)  # the sentinel can fire a moment before the process is reapable
        exitcode = w.exitcode()
        self._sweep(w)
        if w.inflight:
            self._recover(w, exitcode)
        expected = w.state in (WorkerState.RETIRING, WorkerState.STOPPING)
        w.release()
        if not expected:
            self.stats["deaths"] += 1
        if self._state is PoolState.RUNNING or (
            self._state is PoolState.CLOSING and (self._pending or self._chunks)
        ):
            self._replace(w.index)

    def _recover(self, w: _Worker, exitcode: int | None) -> None:
        """Give every task the dead worker held an outcome or a new home."""
        if w.state is WorkerState.RETIRING:  # recycled on purpose: nothing failed
            rests = [self._rechunk(c, c.done, len(c.items)) for c in w.inflight]
            for c in w.inflight:
                self._chunks.pop(c.seq, None)
            w.inflight.clear()
            self._pending.extendleft(reversed([r for r in rests if r is not None]))
            return
        culprit: tuple[int, int] | None = None  # (chunk seq, position)
        timeout_stack: str | None = None
        if w.kill_reason is not None and w.kill_reason[0] == "timeout":
            _, seq, pos, timeout_stack = w.kill_reason
            culprit = (seq, pos)
        else:
            seq, pos, _start, running = self._read_slot(w.index)
            if running:
                culprit = (seq, pos)
        crash_stack = w.read_stack() if timeout_stack is None else ""
        requeue: list[_Chunk] = []
        for chunk in list(w.inflight):
            self._chunks.pop(chunk.seq, None)
            if culprit is not None and culprit[0] == chunk.seq:
                pos = culprit[1]
                requeue += filter(None, [self._rechunk(chunk, chunk.done, pos)])
                if timeout_stack is not None:
                    exc: BaseException = self._timeout_error(chunk, pos, timeout_stack)
                    self.stats["timeouts"] += 1
                else:
                    exc = self._death_error(w, chunk, pos, exitcode, crash_stack)
                self._task_failed(chunk, pos, exc)
                requeue += filter(None, [self._rechunk(chunk, pos + 1, len(chunk.items))])
            else:
                rest = self._rechunk(chunk, chunk.done, len(chunk.items))
                if rest is None:
                    continue
                if culprit is None and chunk is w.inflight[0]:
                    rest.deaths += 1  # died between tasks: loading it, perhaps
                    if rest.deaths >= MAX_ANONYMOUS_DEATHS:
                        for k in range(len(rest.items)):
                            self._task_failed(
                                rest,
                                k,
                                self._death_error(
                                    w, rest, k, exitcode, crash_stack, anonymous=True
                                ),
                            )
                        continue
                requeue.append(rest)
        w.inflight.clear()
        self._pending.extendleft(reversed(requeue))

    def _read_slot(self, index: int) -> tuple[int, int, int, bool]:
        view = self._slot_view
        base = 4 * index
        while True:  # the worker may be writing: read until two reads agree
            a = tuple(view[base : base + 4])
            b = tuple(view[base : base + 4])
            if a == b:
                return a[0], a[1], a[2], a[3] == 1

    def _death_error(
        self,
        w: _Worker,
        chunk: _Chunk,
        pos: int,
        exitcode: int | None,
        stack: str,
        anonymous: bool = False,
    ) -> WorkerDied:
        how, signame = describe_exit(exitcode)
        index = chunk.start + pos
        item = _serialize.describe(chunk.items[pos])
        what = (
            f"while loading or starting task {index}"
            if anonymous
            else f"while running task {index}"
        )
        msg = f"worker process {w.pid} {how} {what} (input: {item})."
        msg += " The worker was replaced and the other tasks went on."
        if stack.strip():
            msg += f"\nIts Python stack when it crashed:\n{stack.rstrip()}"
        return WorkerDied(
            msg, index=index, item=item, exitcode=exitcode, signal_name=signame, stack=stack
        )

    def _timeout_error(self, chunk: _Chunk, pos: int, stack: str) -> TaskTimeout:
        index = chunk.start + pos
        timeout = chunk.job.options.timeout
        return TaskTimeout(
            f"task {index} (input: {_serialize.describe(chunk.items[pos])}) ran past its "
            f"timeout of {timeout} s; its worker was stopped and replaced. "
            f"Its Python stack when stopped:\n{stack.rstrip() or '(not available)'}",
            index=index,
            timeout=timeout,
            stack=stack,
        )

    def _fire_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, seq = heapq.heappop(timers)
            chunk = self._chunks.get(seq)
            if (
                chunk is None
                or chunk.worker is None
                or chunk.worker.state is not WorkerState.RUNNING
            ):
                continue
            w = chunk.worker
            timeout = chunk.job.options.timeout
            assert timeout is not None
            s_seq, s_pos, s_start, running = self._read_slot(w.index)
            if s_seq == seq and running:
                deadline = s_start / 1e9 + timeout
                if deadline <= now:
                    self._stop_for_timeout(w, chunk, s_pos)
                    continue
                heapq.heappush(timers, (deadline, next(_seqs), seq))
            else:  # not started yet, or between tasks
                heapq.heappush(timers, (now + timeout, next(_seqs), seq))

    def _stop_for_timeout(self, w: _Worker, chunk: _Chunk, pos: int) -> None:
        w.signal(signal.SIGUSR1)  # faulthandler dumps the stack to the stack pipe
        stack = w.read_stack(wait_s=1.0)
        w.kill()
        w.kill_reason = ("timeout", chunk.seq, pos, stack)
        w.state = WorkerState.STOPPING

    # -- workers ---------------------------------------------------------------------
    def _start_worker(self, index: int, method: str, inherited: list[int]) -> _Worker:
        self._slot_view[4 * index : 4 * index + 4] = memoryview(bytes(32)).cast("q")
        return _Worker(
            index,
            method,
            self._slots_fd,
            self._alive_r,
            inherited,
            self._worker_config,
        )

    def _watch(self, w: _Worker) -> None:
        self._selector.register(w.result_fd, selectors.EVENT_READ, ("result", w))
        self._selector.register(w.sentinel, selectors.EVENT_READ, ("exit", w))

    @staticmethod
    def _sweep(w: _Worker) -> None:
        """Result segments a dead worker made that we never received."""
        _shm.sweep(f"gilfree-{os.getpid()}-r{w.pid}-")

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

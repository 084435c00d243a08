"""The manager: one thread, one event loop, owning the workers and every chunk in flight.

It blocks in one ``select`` over the wake pipe, every worker's result pipe and
every worker's sentinel: a result, a death, a new submission or a timeout
each wakes it at once, and nothing polls. It never writes to a pipe that could
block it (writes are non-blocking, the rest waits for writability), so a worker
that stops reading cannot stall it. It never shares a lock with a worker, so a
worker dying at any instant cannot leave the pool wedged. Every other blocking
call it makes (reaping, the fork server) has a time bound; the stack of a task
that overran is read as it comes, like a result (``_timeouts``).

Other threads talk to it only through ``enqueue``, ``forget``, ``stop`` and
``withdraw_pending``, which change the state below ``_lock`` and wake it; the
rest is the manager thread's own: the worker processes (a ``Crew``), the
chunks and where they are (a ``Ledger``), the selector, the timeouts (a
``Timeouts``). When it cannot go on (no worker can be started, a worker's
initializer failed, a bug of its own) it *breaks*: every chunk it holds fails
with ``PoolBroken``, and so does every later submission.
"""

from __future__ import annotations

import collections
import pickle
import select
import threading
import time
from typing import Any

from .. import _serialize, _shm
from ..errors import PoolBroken
from . import _recovery, _wire
from ._crew import Crew
from ._ledger import Ledger
from ._procs import Poller, WakePipe
from ._state import Chunk, PoolState, Worker, WorkerState
from ._timeouts import Timeouts, kept

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
#: Distinct fork servers that may die under one pool before it gives up (a
#: task that kills its worker's parent would otherwise loop for ever).
MAX_SERVER_DEATHS = 3


class Manager:
    def __init__(
        self,
        workers: int,
        config: dict[str, Any],
        *,
        start_method: str | None,
        arena: _shm.Arena,
        init_blob: bytes | None,
    ) -> None:
        # Shared with callers' threads, changed only under _lock.
        self._lock = threading.Lock()
        self._state = PoolState.RUNNING
        self._incoming: collections.deque[Chunk] = collections.deque()
        self._forgotten: list[int] = []  # function keys callers evicted
        self._withdraw = False  # stop(cancel_pending=True) asked; done by the loop
        self.error: PoolBroken | None = None
        # The manager thread's own.
        self.size = workers
        self.stats = collections.Counter[str]()
        self._arena = arena
        self._init_blob = init_blob
        self._ledger = Ledger(arena, self.stats)
        self._free: collections.deque[Worker] = collections.deque()  # stale entries skipped
        self._stop_deadline: float | None = None
        self._killed = False
        # The first workers are forked before our own pipes exist (the children
        # would inherit them) and before our thread runs.
        self._crew = Crew(workers, config, start_method)
        self._crew.start_all(start_method)
        self._waker = WakePipe()
        self._selector: Poller[tuple[str, Worker | None]] = Poller()
        self._selector.register(self._waker.fd, select.EPOLLIN, ("wake", None))
        self._timeouts = Timeouts(self._ledger, self._crew.slots, self._selector)
        for w in self._crew:
            self._enlist(w)
        # The thread holds the manager, never the ProcessPool: a pool no one
        # holds is collected, and its finalizer stops us.
        self._thread = threading.Thread(target=self._run, name="gilfree-pool-manager", daemon=True)
        self._thread.start()

    # -- called from any thread ------------------------------------------------------
    @property
    def state(self) -> PoolState:
        return self._state

    def enqueue(self, chunks: list[Chunk]) -> None:
        with self._lock:
            if self._state is PoolState.RUNNING:
                # Nothing to queue (every item failed to pickle): no wake-up,
                # which the manager would not clear, finding nothing to take,
                # and which would then swallow every later one.
                if chunks:
                    self._incoming.extend(chunks)
                    self._waker.wake()
                return
        for chunk in chunks:
            chunk.release()
        self.check_open()

    def check_open(self) -> None:
        """Raise unless submissions are accepted."""
        state = self._state
        if state is PoolState.RUNNING:
            return
        if state is PoolState.BROKEN:
            raise self.broken_error()
        raise RuntimeError("cannot schedule new work after the pool was shut down")

    def broken_error(self) -> PoolBroken:
        """A fresh copy of the pool's PoolBroken (one instance raised twice grows its traceback)."""
        err = self.error or _recovery.broken("its manager thread is gone")
        fresh = PoolBroken(*err.args)
        fresh.__cause__ = err.__cause__
        return fresh

    def forget(self, key: int) -> None:
        with self._lock:
            self._forgotten.append(key)

    def stop(self, kill: bool = False, cancel_pending: bool = False) -> None:
        """CLOSING (finish queued work) or KILLING (stop now); returns at once.

        ``cancel_pending``: after its next dispatch round the manager drops the
        queued chunks whose jobs agree (``withdraw``); chunks sent to a worker run.
        """
        with self._lock:
            if cancel_pending and self._state is PoolState.RUNNING:
                self._withdraw = True
            if kill and self._state in (PoolState.RUNNING, PoolState.CLOSING):
                self._state = PoolState.KILLING
            elif self._state is PoolState.RUNNING:
                self._state = PoolState.CLOSING
            self._waker.wake(force=True)

    def withdraw_pending(self) -> None:
        """Drop the queued chunks whose jobs agree (``withdraw``) and go on running."""
        with self._lock:
            self._withdraw = self._withdraw or self._state is PoolState.RUNNING
            self._waker.wake(force=True)

    def join(self) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def pids(self) -> list[int]:
        return self._crew.pids()

    # -- the loop ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not hang callers
            self._break(f"its manager thread failed with {type(exc).__name__}: {exc}", exc)
        finally:
            self._close()

    def _loop(self) -> None:
        while not (self._state is not PoolState.RUNNING and self._crew.live == 0):
            for kind, w in self._selector.poll(self._next_timeout()):
                if w is None:
                    self._waker.drain()
                elif w.state is WorkerState.DEAD:
                    continue  # a stale event from this batch; its fds may be reused
                elif kind == "result":
                    self._on_readable(w)
                elif kind == "exit":
                    self._on_exit(w)
                elif kind == "stack":
                    self._timeouts.on_stack(w)
                else:
                    self._on_writable(w)
            self._take_incoming()
            self._timeouts.fire()
            self._dispatch()
            self._progress_shutdown()

    def _next_timeout(self) -> float | None:
        deadline = self._timeouts.next_at()
        if self._stop_deadline is not None:
            deadline = min(deadline or self._stop_deadline, self._stop_deadline)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _take_incoming(self) -> None:
        if not self._incoming and not self._forgotten:
            # Safe without the lock: an append we miss comes with a wake-up
            # byte, written after it, that brings us back here.
            return
        with self._lock:
            self._waker.clear()
            incoming, self._incoming = self._incoming, collections.deque()
            forgotten, self._forgotten = self._forgotten, []
        self._ledger.pending.extend(incoming)
        for key in forgotten:  # rare: only when callers' function cache overflows
            self._ledger.fn_time.pop(key, None)
            for w in self._crew:
                if key in w.fn_keys:
                    w.fn_keys.discard(key)
                    self._send(w, (_wire.FORGET, key))

    # -- dispatch ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        if self._state is not PoolState.RUNNING and self._state is not PoolState.CLOSING:
            return
        ledger = self._ledger
        pending, free = ledger.pending, self._free
        while pending and free:
            w = free.popleft()
            if w.state is not WorkerState.RUNNING or len(w.inflight) >= PREFETCH:
                continue  # a stale entry
            if (
                w.inflight
                and pending[0].job.input_done
                and len(pending) < self.size
                and ledger.predicted_s(w.inflight[-1]) > PREFETCH_MAX_S
            ):
                continue  # the tail: re-added when its chunk completes
            budget = self._crew.budget(w)
            if budget == 0:
                continue  # it retires after its running chunk
            chunk = pending.popleft()
            if chunk.job.cancelled or not chunk.job.begin():
                chunk.release()
                free.appendleft(w)
                continue
            if len(chunk.items) > budget:  # recycling: never send past max_tasks
                whole, chunk = chunk, ledger.piece(chunk, 0, budget)
                pending.appendleft(ledger.piece(whole, budget, len(whole.items)))
                whole.release()
            w.assigned += len(chunk.items)
            self._assign(w, chunk)
            if len(w.inflight) < PREFETCH:
                free.append(w)

    def _assign(self, w: Worker, chunk: Chunk) -> None:
        key, fn_blob = chunk.fn
        if key not in w.fn_keys:
            self._send(w, (_wire.FN, key, fn_blob))
            w.fn_keys.add(key)
        self._ledger.sent_to(w, chunk)
        # Careful mode times each task (for timeouts) and streams results of
        # long chunks; fast mode is for chunks known to be short.
        careful = chunk.timeout is not None or self._ledger.predicted_s(chunk) > CAREFUL_ABOVE_S
        self._send(w, (_wire.CHUNK, chunk.seq, key, chunk.blob, careful))
        if chunk.timeout is not None:
            self._timeouts.arm(chunk)
        self.stats["chunks"] += 1

    def _send(self, w: Worker, msg: tuple[Any, ...]) -> None:
        try:
            w.writer.send(pickle.dumps(msg, _serialize.PROTOCOL))
        except OSError:
            return  # the worker is dying; its sentinel will tell us
        self._want_write(w, w.writer.waiting)

    def _want_write(self, w: Worker, want: bool) -> None:
        if want == w.writing or w.state is WorkerState.DEAD:
            return
        if want:
            self._selector.register(w.proc.task_fd, select.EPOLLOUT, ("write", w))
        else:
            self._unwatch(w.proc.task_fd)
        w.writing = want

    def _on_writable(self, w: Worker) -> None:
        try:
            w.writer.flush()
        except OSError:
            self._want_write(w, False)
            return
        self._want_write(w, w.writer.waiting)

    # -- what workers send back ------------------------------------------------------------
    def _on_readable(self, w: Worker) -> None:
        for raw in w.reader.read():
            self._handle(w, raw)
        if w.reader.eof:  # it is exiting; its sentinel will say so
            self._unwatch(w.proc.result_fd)

    def _handle(self, w: Worker, raw: bytes | bytearray) -> None:
        ledger = self._ledger
        try:
            msg = pickle.loads(raw)
        except BaseException as exc:
            # A result's __reduce__ runs here, in the manager thread; even a
            # SystemExit from it fails only that chunk's tasks, not the pool.
            if w.inflight:
                ledger.unloadable(w, w.inflight[0], exc)
                self._offer(w)
            return
        kind = msg[0]
        if kind == _wire.RESULT:
            _, seq, offset, values, failures, elapsed, final = msg
            chunk = ledger.sent.get(seq)
            keep = kept(w, seq, offset, len(values))
            if keep is not None:  # from the task that overran on: a TaskTimeout
                values, final = values[:keep], False
                failures = [f for f in failures if f[0] < offset + keep]
            if chunk is not None and keep != 0:
                ledger.results(chunk, offset, values, failures, elapsed)
                if final:
                    ledger.settle(w, chunk)
                    self._offer(w)
        elif kind == _wire.LOADFAIL:
            chunk = ledger.sent.get(msg[1])
            if chunk is not None:
                ledger.load_failed(w, chunk, msg[2])
                self._offer(w)
        elif kind == _wire.RETIRE:
            w.retiring()
            self.stats["recycled"] += 1
        elif kind == _wire.INITOK:
            w.init_returned()
        elif kind == _wire.INITFAIL:
            cause = _serialize.with_remote_traceback(msg[1], msg[2])
            reason = f"the initializer raised {type(msg[1]).__name__}: {msg[1]} in worker {w.pid}"
            self._break(reason, cause)

    def _offer(self, w: Worker) -> None:
        """`w` has room for another chunk."""
        if w.state is WorkerState.RUNNING:
            self._free.append(w)

    # -- deaths and timeouts ---------------------------------------------------------------
    def _on_exit(self, w: Worker) -> None:
        # Results the worker wrote before it died are still in the pipe: keep them.
        while not w.reader.eof:
            frames = w.reader.read()
            if not frames and not w.reader.eof:
                break
            for raw in frames:
                self._handle(w, raw)
        if self._timeouts.dumping(w):  # it died before its stack dump was over
            self._timeouts.kill(w)
        self._unwatch(w.proc.result_fd)
        self._unwatch(w.proc.sentinel)
        self._want_write(w, False)
        exitcode, server_died = w.proc.exit_status()
        cause, culprit, stack = self._crew.diagnose(w, server_died)
        if self._init_blob is not None and not w.initialized and cause is _recovery.Cause.CRASH:
            # As when it raises (INITFAIL): another worker would die the same way.
            self._crew.buried(w)
            how = _recovery.describe_exit(exitcode, in_task=False)[0]
            self._break(f"worker {w.pid} {how} while running the initializer")
            return
        if w.inflight:
            self._ledger.recover(w, cause, culprit, exitcode, stack)
        expected = w.state in (WorkerState.RETIRING, WorkerState.STOPPING)
        self._crew.buried(w)
        if server_died:
            if self._crew.server_deaths > MAX_SERVER_DEATHS:
                self._break(f"its fork server died {self._crew.server_deaths} times")
        elif not expected:
            self.stats["deaths"] += 1
        if self._state is PoolState.RUNNING or (
            self._state is PoolState.CLOSING and self._ledger.busy
        ):
            self._replace(w.index)

    def _replace(self, index: int) -> None:
        """Start a worker in a dead one's place; break the pool if none can start."""
        try:
            w = self._crew.replace(index)
        except OSError as exc:
            self._break(f"no worker process could be started ({exc})", exc)
            return
        self._enlist(w)
        self.stats["started"] += 1

    def _enlist(self, w: Worker) -> None:
        """Watch a new worker, send it the initializer, and offer it work."""
        self._selector.register(w.proc.result_fd, select.EPOLLIN, ("result", w))
        self._selector.register(w.proc.sentinel, select.EPOLLIN, ("exit", w))
        if self._init_blob is not None:
            self._send(w, (_wire.INIT, self._init_blob))
        self._free.extend([w] * PREFETCH)

    def _unwatch(self, fd: int) -> None:
        self._selector.unregister(fd)

    # -- stopping and breaking -------------------------------------------------------------
    def _progress_shutdown(self) -> None:
        state = self._state
        if self._withdraw:
            # Here, after a dispatch round, as concurrent.futures cancels after
            # filling its call queue: idle workers got their first chunks.
            # Chunks submitted just before stop() may still wait in _incoming.
            self._withdraw = False
            self._take_incoming()
            self._dispatch()
            self._ledger.withdraw_pending()
        if state is PoolState.RUNNING:
            return
        if state is PoolState.KILLING:
            if self._ledger.busy:
                self._ledger.fail_all(RuntimeError("the pool was shut down before this task ran"))
            if not self._killed:
                self._killed = True
                for w in self._crew:
                    w.kill()
        elif state is PoolState.CLOSING and not self._ledger.busy:
            if self._stop_deadline is None:
                self._stop_deadline = time.monotonic() + STOP_GRACE_S
                for w in self._crew:
                    self._want_write(w, False)
                    w.stop()
            elif time.monotonic() >= self._stop_deadline:
                for w in self._crew:
                    w.kill()

    def _break(self, reason: str, cause: BaseException | None = None) -> None:
        """The pool cannot go on: fail everything it holds, refuse new work, stop workers."""
        err = _recovery.broken(reason, cause)
        with self._lock:
            if self._state in (PoolState.BROKEN, PoolState.CLOSED):
                return
            self.error = err  # before the state: readers check the state without the lock
            self._state = PoolState.BROKEN
            incoming, self._incoming = self._incoming, collections.deque()
        self._ledger.pending.extend(incoming)
        self._ledger.fail_all(err)
        for w in self._crew:
            w.kill()

    def _close(self) -> None:
        """The manager's last act: nothing it does may raise or block unbounded."""
        with self._lock:
            left = bool(self._incoming)
        if left or self._ledger.busy:  # only a bug leaves work here
            self._break("it stopped with tasks left")
        with self._lock:
            if self._state is not PoolState.BROKEN:
                self._state = PoolState.CLOSED
            self._waker.close()
        for close in (self._crew.close, self._arena.close, self._selector.close):
            try:
                close()
            except Exception:
                pass

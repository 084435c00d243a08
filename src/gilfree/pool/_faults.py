"""The manager's handling of deaths and timeouts: who was running what, and what now.

A mixin of ``ProcessPool`` (see ``_pool``): every method runs in the manager
thread. A dead worker's slot names the task it was running; that task fails
with ``WorkerDied`` (or ``TaskTimeout`` when we stopped it) or is retried, and
the rest of its chunks go back to the front of the queue.
"""

from __future__ import annotations

import heapq
import os
import signal
import time

from .. import _serialize, _shm
from ..errors import TaskTimeout, WorkerDied
from ._procs import WorkerState, describe_exit
from ._records import Chunk, PoolState, Worker, seqs

#: Deaths a chunk may cause without any task of it running before its tasks
#: fail (a crash while unpickling its items, say).
MAX_ANONYMOUS_DEATHS = 2


class FaultHandling:
    def _on_exit(self, w: Worker) -> None:
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

    def _recover(self, w: Worker, exitcode: int | None) -> None:
        """Give every task the dead worker held an outcome or a new home."""
        # A worker recycled on purpose (it said RETIRE) failed nothing: its
        # chunks just go back to the queue.
        blameless = w.state is WorkerState.RETIRING
        culprit: tuple[int, int] | None = None  # (chunk seq, position)
        timeout_stack: str | None = None
        if w.kill_reason is not None and w.kill_reason[0] == "timeout":
            _, seq, pos, timeout_stack = w.kill_reason
            culprit = (seq, pos)
        elif not blameless:
            seq, pos, _start, running = self._read_slot(w.index)
            if running:
                culprit = (seq, pos)
        crash_stack = w.read_stack() if timeout_stack is None else ""
        requeue: list[Chunk] = []
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
                if culprit is None and not blameless and chunk is w.inflight[0]:
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
        w: Worker,
        chunk: Chunk,
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

    def _timeout_error(self, chunk: Chunk, pos: int, stack: str) -> TaskTimeout:
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
                heapq.heappush(timers, (deadline, next(seqs), seq))
            else:  # not started yet, or between tasks
                heapq.heappush(timers, (now + timeout, next(seqs), seq))

    def _stop_for_timeout(self, w: Worker, chunk: Chunk, pos: int) -> None:
        w.signal(signal.SIGUSR1)  # faulthandler dumps the stack to the stack pipe
        stack = w.read_stack(wait_s=1.0)
        w.kill()
        w.kill_reason = ("timeout", chunk.seq, pos, stack)
        w.state = WorkerState.STOPPING

    @staticmethod
    def _sweep(w: Worker) -> None:
        """Result segments a dead worker made that we never received."""
        _shm.sweep(f"gilfree-{os.getpid()}-r{w.pid}-")

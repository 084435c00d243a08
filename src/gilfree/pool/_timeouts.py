"""Tasks' timeouts, for the manager: when to look at each chunk in flight, and
the workers whose task overran, from the moment it did until they are killed.

A task that overruns ``timeout=`` is lost from that instant: its worker is
asked for its stack (SIGUSR1: faulthandler writes it to the stack pipe), gets
no more work, and whatever it sends from that task on is dropped
(``kept``), so a task that ends a moment late is still a
``TaskTimeout``. The manager reads the dump as it comes, alongside every other
worker's results, and kills the worker once the pipe has been quiet for
``_stacks.BURST_GAP_S`` (faulthandler writes one dump in quick bursts with no
end marker), or ``DUMP_WAIT_S`` after the overrun at the latest. It never
waits for a dump in its own thread: with many tasks overrunning, the 50 ms
each waited held up every other worker's results.
"""

from __future__ import annotations

import heapq
import select
import signal
import time

from .. import _stacks
from ._ledger import Ledger
from ._procs import Poller, Slots
from ._state import Chunk, Worker, WorkerState, seqs

#: The longest a worker whose task overran may take to write its stack before
#: it is killed without one (a process stopped in the kernel never writes).
DUMP_WAIT_S = 1.0


def kept(w: Worker, seq: int, offset: int, count: int) -> int | None:
    """How many of ``count`` outcomes ``w`` sent from task ``offset`` of chunk
    ``seq`` to keep: those before a task of its that overran, or None for all."""
    reason = w.kill_reason
    if reason is None or seq != reason[0] or offset + count <= reason[1]:
        return None
    return max(0, reason[1] - offset)


class Timeouts:
    """The timer heap of chunks with a timeout, and the workers being dumped."""

    def __init__(
        self, ledger: Ledger, slots: Slots, poller: Poller[tuple[str, Worker | None]]
    ) -> None:
        self._ledger = ledger
        self._slots = slots
        self._poller = poller  # the manager's: a dumping worker's stack pipe is watched there
        self._heap: list[tuple[float, int, int]] = []  # (when, tiebreak, chunk seq)
        #: Workers whose task overran: when to kill them, and their stack so far.
        self._dumping: dict[Worker, tuple[float, float, list[bytes]]] = {}

    def arm(self, chunk: Chunk) -> None:
        """``chunk`` was sent: look at it once its first task could have overrun."""
        assert chunk.timeout is not None
        heapq.heappush(self._heap, (time.monotonic() + chunk.timeout, next(seqs), chunk.seq))

    def next_at(self) -> float | None:
        """When the manager must next call ``fire`` (monotonic), or None."""
        at = self._heap[0][0] if self._heap else None
        for kill_at, _, _ in self._dumping.values():  # empty but for overruns
            at = kill_at if at is None else min(at, kill_at)
        return at

    def fire(self) -> None:
        """Look at the chunks that are due: a worker whose task overran is asked
        for its stack, its pipe watched (as ``("stack", w)``: pass it to
        ``on_stack``). Workers whose dump is over are killed."""
        heap = self._heap
        if not heap and not self._dumping:
            return  # no timeout= in flight: the usual case costs nothing
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, seq = heapq.heappop(heap)
            chunk = self._ledger.sent.get(seq)
            w = None if chunk is None else chunk.worker
            if chunk is None or chunk.timeout is None or w is None:
                continue
            if w.state is not WorkerState.RUNNING:
                continue
            s_seq, s_pos, s_start, running = self._slots.read(w.index)
            if s_seq == seq and running:
                deadline = s_start / 1e9 + chunk.timeout
                if deadline <= now:
                    w.overran(seq, s_pos)
                    w.proc.signal(signal.SIGUSR1)  # faulthandler dumps the stack to its pipe
                    self._dumping[w] = (now + DUMP_WAIT_S, now + DUMP_WAIT_S, [])
                    self._poller.register(w.proc.stack_fd, select.EPOLLIN, ("stack", w))
                    continue
                heapq.heappush(heap, (deadline, next(seqs), seq))
            else:  # not started yet, or between tasks
                heapq.heappush(heap, (now + chunk.timeout, next(seqs), seq))
        if self._dumping:
            for w, (kill_at, _, _) in list(self._dumping.items()):
                if kill_at <= now:
                    self.kill(w)

    def dumping(self, w: Worker) -> bool:
        return w in self._dumping

    def on_stack(self, w: Worker) -> None:
        """``w``'s stack pipe is readable: keep what it wrote; kill it when quiet."""
        entry = self._dumping.get(w)
        if entry is None:
            return
        _, latest, chunks = entry
        data, ended = _stacks.drain(w.proc.stack_fd)
        chunks.append(data)
        if ended:  # no more can come (and the pipe would read as ready for ever)
            self.kill(w)
            return
        quiet = time.monotonic() + _stacks.BURST_GAP_S
        self._dumping[w] = (min(latest, quiet), latest, chunks)

    def kill(self, w: Worker) -> None:
        """Kill ``w``, an overrun's worker, with the stack it wrote (also when it
        exited by itself first: then the stack is what the pipe still holds)."""
        _, _, chunks = self._dumping.pop(w)
        self._poller.unregister(w.proc.stack_fd)
        chunks.append(_stacks.drain(w.proc.stack_fd)[0])
        assert w.kill_reason is not None
        seq, pos, _ = w.kill_reason
        w.kill((seq, pos, b"".join(chunks).decode("utf-8", "replace")))

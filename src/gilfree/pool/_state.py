"""What the pool knows about jobs, chunks and workers, and the states they pass through.

The pool depends on nothing above it: a job is anything with the few methods
of ``JobLike`` (gilfree's ``backends._base.Job`` is one), and each chunk
carries its own timeout and retry budget, set by whoever submits it.
"""

from __future__ import annotations

import collections
import enum
import itertools
from collections.abc import Callable
from typing import Any, Protocol

from . import _wire
from ._procs import WorkerProcess

#: One sequence for chunks and timer entries (unique ids, heap tie-breaks).
seqs = itertools.count(1)


class JobLike(Protocol):
    """What the pool needs of a job: a function, and sinks for its outcomes.

    ``deliver``/``fail``/``record`` are called from the pool's manager thread;
    every index submitted gets exactly one ``deliver`` or ``fail``.
    """

    fn: Callable[[Any], Any]
    #: True once the job wants no more outcomes (queued work is dropped).
    cancelled: bool
    #: True once every item has been submitted: the pool may then favour
    #: balance over throughput for the job's tail.
    input_done: bool

    def begin(self) -> bool:
        """Called just before work of the job is sent to a worker; False: drop it."""
        ...

    def deliver(self, start: int, values: list[Any]) -> None: ...

    def fail(self, index: int, exc: BaseException) -> None: ...

    def record(self, n: int, seconds: float) -> None: ...

    def mean_task_seconds(self) -> float | None: ...

    def withdraw(self) -> bool:
        """Shutdown cancels queued work: True if this job's queued chunk may be dropped."""
        ...


class Lease(Protocol):
    """Shared-memory segments a chunk's pickled items need (see ``gilfree._shm``)."""

    def release(self) -> None: ...


class PoolState(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"  # finish queued work, then stop workers
    KILLING = "killing"  # stop workers now, fail queued work
    BROKEN = "broken"  # cannot go on: queued and later work fail with PoolBroken
    CLOSED = "closed"


class WorkerState(enum.Enum):
    RUNNING = "running"  # accepting chunks
    RETIRING = "retiring"  # told us it will exit (recycling); no new chunks
    STOPPING = "stopping"  # we closed its task pipe or killed it
    DEAD = "dead"  # its exit was seen and it was reaped


class Chunk:
    """Consecutive items of one job, pickled once, run by one worker at a time."""

    __slots__ = (
        "blob",
        "by_value",
        "deaths",
        "done",
        "fn",
        "history",
        "items",
        "job",
        "lease",
        "retries",
        "seq",
        "start",
        "timeout",
        "worker",
    )

    def __init__(
        self,
        job: JobLike,
        start: int,
        items: list[Any],
        blob: bytes,
        lease: Lease | None,
        fn: tuple[int, bytes],
        *,
        timeout: float | None = None,
        retries: int = 0,
        history: tuple[str, ...] = (),
        by_value: bool = False,
    ) -> None:
        self.seq = next(seqs)
        self.job = job
        self.start = start
        self.items = items
        self.blob = blob
        self.lease = lease
        self.fn = fn  # (key, pickled function)
        self.timeout = timeout
        self.retries = retries
        # How earlier attempts of a retried task ended (here, or before it
        # reached the pool: backend="auto"'s probe); one attempt each.
        self.history = history
        self.by_value = by_value
        self.done = 0  # leading items whose results arrived
        self.deaths = 0  # deaths it caused with none of its tasks running
        self.worker: Worker | None = None

    @property
    def attempt(self) -> int:
        """Attempts its tasks already had: 0 on the first run."""
        return len(self.history)

    @property
    def key(self) -> int:
        return self.fn[0]

    def release(self) -> None:
        """No task of this chunk will run any more: its segments may go (once)."""
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release()


class Worker:
    """One worker process (held, not inherited) and the manager's bookkeeping for it.

    Only the manager thread touches a Worker; its state changes in the named
    methods below.
    """

    __slots__ = (
        "assigned",
        "fn_keys",
        "index",
        "inflight",
        "initialized",
        "kill_reason",
        "proc",
        "reader",
        "state",
        "writer",
        "writing",
    )

    def __init__(self, index: int, proc: WorkerProcess) -> None:
        self.index = index
        self.proc = proc
        self.state = WorkerState.RUNNING
        self.inflight: collections.deque[Chunk] = collections.deque()
        self.assigned = 0  # tasks sent, for max_tasks_per_worker
        self.fn_keys: set[int] = set()
        self.reader = _wire.FrameReader(proc.result_fd)
        self.writer = _wire.FrameWriter(proc.task_fd)
        self.writing = False  # registered for writability
        #: Set when we kill it for a timeout: (chunk seq, position, stack).
        self.kill_reason: tuple[int, int, str] | None = None
        #: Its pool's initializer returned in it (INITOK).
        self.initialized = False

    @property
    def pid(self) -> int:
        pid: int = self.proc.pid
        return pid

    def init_returned(self) -> None:
        """The pool's initializer ran to its end in it."""
        self.initialized = True

    def retiring(self) -> None:
        """It said it will exit after its current chunk (recycling)."""
        if self.state is WorkerState.RUNNING:
            self.state = WorkerState.RETIRING

    def stop(self) -> None:
        """Ask for an orderly exit: no more chunks, EOF after the current one."""
        self.proc.close_task_pipe()
        if self.state is not WorkerState.DEAD:
            self.state = WorkerState.STOPPING

    def overran(self, seq: int, pos: int) -> None:
        """Task ``pos`` of chunk ``seq`` overran its timeout: no more work; what
        it sends from that task on is dropped; it is killed once its stack is read."""
        self.kill_reason = (seq, pos, "")
        if self.state is WorkerState.RUNNING:
            self.state = WorkerState.STOPPING

    def kill(self, reason: tuple[int, int, str] | None = None) -> None:
        """SIGKILL it now; ``reason`` says which task's timeout did it."""
        if reason is not None:
            self.kill_reason = reason
        self.proc.kill()
        if self.state is not WorkerState.DEAD:
            self.state = WorkerState.STOPPING

    def dead(self) -> None:
        """Its exit was seen: close our ends and reap it."""
        self.proc.release()
        self.state = WorkerState.DEAD

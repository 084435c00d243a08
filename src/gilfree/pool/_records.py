"""What the manager knows about each chunk and each worker."""

from __future__ import annotations

import collections
import enum
import itertools
from typing import Any

from ..backends._base import Job
from . import _wire
from ._procs import WorkerProcess

#: One sequence for chunks and timer entries (unique ids, heap tie-breaks).
seqs = itertools.count(1)


class PoolState(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"  # finish queued work, then stop workers
    KILLING = "killing"  # stop workers now, drop queued work
    CLOSED = "closed"


class Chunk:
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
        self.seq = next(seqs)
        self.job = job
        self.start = start
        self.items = items
        self.blob = blob
        self.key = key
        self.attempt = attempt
        self.by_value = by_value
        self.done = 0  # leading items whose results arrived
        self.deaths = 0
        self.worker: Worker | None = None


class Worker(WorkerProcess):
    """A worker process plus the pool's bookkeeping for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inflight: collections.deque[Chunk] = collections.deque()
        self.assigned = 0  # tasks sent, for max_tasks_per_worker
        self.fn_keys: set[int] = set()
        self.reader = _wire.FrameReader(self.result_fd)
        self.writer = _wire.FrameWriter(self.task_fd)
        self.writing = False  # registered for writability

"""The process backend: gilfree's own pool, for CPU-bound Python."""

from __future__ import annotations

from typing import Any

from .._options import Options, parse_size, usable_cpus
from ..errors import ConfigurationError
from ..pool import ProcessPool
from ._base import Backend, Job


class ProcessBackend(Backend):
    name = "process"
    #: Work per chunk. A round trip to a worker costs ~0.1 ms, so 20 ms chunks
    #: keep it under 1%; the tail waits at most one chunk.
    chunk_target_s = 0.02

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.workers = options.workers or usable_cpus()
        self._pool = ProcessPool(
            self.workers,
            start_method=options.start_method,
            max_tasks_per_worker=options.max_tasks_per_worker,
            max_worker_memory=parse_size("max_worker_memory", options.max_worker_memory),
            share_threshold=_share_threshold(options),
            # Options gains these with issue 13; getattr until it has.
            initializer=getattr(options, "initializer", None),
            initargs=getattr(options, "initargs", ()),
        )

    def max_chunk(self, job: Job) -> int:
        return job.options.max_tasks_per_worker or 1 << 30

    def submit(self, job: Job, start: int, items: list[Any], attempt: int = 0) -> None:
        # Each chunk carries its own limits: the pool knows nothing of Options.
        opts = job.options
        # Attempts made elsewhere (auto's probe) count against the retries,
        # and the note of a task that fails for good lists them first.
        history = job.earlier.get(start, ()) if attempt else ()
        if len(history) != attempt:
            history = ("failed before it reached the pool",) * attempt
        self._pool.submit(
            job, start, items, timeout=opts.timeout, retries=opts.retries, history=history
        )

    def withdraw(self, job: Job) -> None:
        self._pool.withdraw(job)

    def check(self) -> None:
        """Raise ``PoolBroken`` if the pool cannot go on."""
        self._pool.check()

    cancels_pending = True

    def cancel_pending(self) -> None:
        self._pool.withdraw_pending()

    def shutdown(
        self, *, wait: bool = True, kill: bool = False, cancel_pending: bool = False
    ) -> None:
        self._pool.shutdown(wait=wait, kill=kill, cancel_pending=cancel_pending)

    def statistics(self) -> dict[str, Any]:
        return {"backend": self.name, **self._pool.statistics()}


def _share_threshold(options: Options) -> int:
    """``share_threshold`` in bytes. ``Options`` parsed it already, but its field is
    typed ``int | str`` (what callers may pass), and it let None through."""
    threshold = parse_size("share_threshold", options.share_threshold)
    if threshold is None:
        raise ConfigurationError("share_threshold=None must be a positive number of bytes")
    return threshold

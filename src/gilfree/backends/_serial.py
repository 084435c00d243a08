"""The serial backend: a plain loop in the caller's thread.

It is what the planner picks for tiny tasks, so it stays a loop: chunks of
about ``chunk_target_s`` of work, one queue hand-off per chunk. With a
``timeout`` it runs on one helper thread instead, because only a thread can be
abandoned when a call overruns (see the thread backend).
"""

from __future__ import annotations

from typing import Any

from .._options import Options
from ._base import Backend, Job
from ._run import run_items


class SerialBackend(Backend):
    name = "serial"
    #: Read-ahead per hand-off; 2 ms keeps imap lazy while making the per-chunk
    #: engine overhead (~2 us) negligible for tiny tasks.
    chunk_target_s = 0.002

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.workers = 1
        self._delegate: Backend | None = None
        if options.timeout is not None:
            from ._thread import ThreadBackend

            self._delegate = ThreadBackend(options.with_(workers=1))

    @property
    def window(self) -> int:
        return 1

    def max_chunk(self, job: Job) -> int:
        return self._delegate.max_chunk(job) if self._delegate is not None else 1 << 30

    def submit(self, job: Job, start: int, items: list[Any], attempt: int = 0) -> None:
        if self._delegate is not None:
            self._delegate.submit(job, start, items, attempt)
        elif job.begin():
            run_items(job, start, items, attempt)

    def cancel(self, job: Job) -> None:
        super().cancel(job)
        if self._delegate is not None:
            self._delegate.cancel(job)

    def shutdown(self, *, wait: bool = True, kill: bool = False) -> None:
        if self._delegate is not None:
            self._delegate.shutdown(wait=wait, kill=kill)

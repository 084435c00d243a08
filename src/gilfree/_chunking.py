"""Automatic chunk sizes from measured task time.

A chunk is the batch of consecutive items sent in one round trip. Too small and
tiny tasks pay a round trip each (~100 us to a process); too large and the last
chunk of a slow run leaves the other workers idle. The size is the smaller of
two ceilings, raised to one floor:

* ``target_s / mean``: about ``target_s`` seconds of work per chunk, the
  backend's trade-off between round-trip overhead and tail latency;
* ``remaining / (workers * BALANCE_DIVISOR)``: guided self-scheduling, so
  chunks shrink as the input runs out and the last ones are short;
* but never under ``MIN_CHUNK_S / mean`` (tiny tasks keep chunks of at least
  ~2 ms of work, or the tail degenerates into single-item round trips), once
  the mean rests on ``FLOOR_SAMPLES`` items.

Until the first measurement (or the planner's probe) every chunk holds one item: a single slow
item costs one task's time, while a wrong guess of 100 items of a 50 ms
function would cost five seconds.
"""

from __future__ import annotations

import math

from .backends._base import Backend, Job

#: Chunks per worker still to come when the input length is known. 4 is what
#: multiprocessing.Pool.map uses; shrinking geometrically keeps the tail short.
BALANCE_DIVISOR = 4
#: Work per chunk below which round trips dominate (one round trip ~ 0.1 ms).
MIN_CHUNK_S = 0.002
#: Hard ceiling: bounds parent memory in flight (window x this) and the cost of
#: a lost chunk. With 100,000 an ordered imap of 10^6 tiny tasks read 697,473
#: items ahead for its first 10 results; 200,000 x*x tasks still ran level with
#: multiprocessing.Pool.map at this size (its chunks are 25,000).
MAX_CHUNK = 16_384
#: Items measured before the floor may join items that the balance ceiling
#: keeps apart. One fast first call is no evidence the rest are fast:
#: ``Executor.map(time.sleep, [0, 0, 6], timeout=5)`` on threads joined the
#: second 0 to the 6 when the first call's 10 us came back before the second
#: chunk was cut, so its result missed the map's timeout (CPython's
#: test_map_timeout, seen in CI). The floor is for the tail of a long run of
#: tiny tasks, by which time thousands are measured.
FLOOR_SAMPLES = 64


class Chunker:
    def __init__(self, backend: Backend, job: Job, total: int | None) -> None:
        self.fixed = job.options.chunksize
        self.target_s = backend.chunk_target_s
        self.workers = max(1, backend.workers)
        self.total = total
        self.job = job
        self.max_chunk = backend.max_chunk(job)
        self.min_chunk = backend.min_chunk(job)

    def next_size(self, submitted: int) -> int:
        if self.fixed is not None:
            return min(self.fixed, self.max_chunk)
        if self.target_s <= 0:
            return 1
        mean = self.job.mean_task_seconds()
        if mean is None:
            return 1
        remaining = None if self.total is None else self.total - submitted
        size = first_size(self.target_s, self.workers, remaining, mean, measured=self.job.stats_n)
        return min(max(size, self.min_chunk), self.max_chunk)


def first_size(
    target_s: float,
    workers: int,
    remaining: int | None,
    mean: float,
    *,
    measured: int,
) -> int:
    """Items in the next chunk, given ``mean`` seconds per item over ``measured``
    items (see the module docstring)."""
    mean = max(mean, 1e-9)
    size = target_s / mean
    if remaining is not None:
        size = min(size, math.ceil(max(1, remaining) / (max(1, workers) * BALANCE_DIVISOR)))
    if measured >= FLOOR_SAMPLES:
        size = max(size, MIN_CHUNK_S / mean)
    return int(max(1, min(size, MAX_CHUNK)))

"""The chunker's policy as a table: chunk size from measured task time."""

from __future__ import annotations

import pytest

from gilfree._chunking import MAX_CHUNK, Chunker
from gilfree._options import make_options
from gilfree.backends import Backend, StreamJob


class Shape(Backend):
    """A backend that runs nothing: only its sizing attributes matter to the chunker."""

    name = "shape"

    def __init__(self, target_s, workers, max_chunk):
        super().__init__(make_options())
        self.chunk_target_s = target_s
        self.workers = workers
        self._max = max_chunk

    def max_chunk(self, job):
        return self._max

    def submit(self, job, start, items):
        raise AssertionError("the chunker never submits")

    def shutdown(self, *, wait=True, kill=False):
        pass


BIG = 1 << 30
CASES = [
    # (name, target_s, workers, max_chunk, chunksize, total, submitted, mean, expected);
    # the mean is measured over 1,000 items unless a case says otherwise.
    ("fixed chunksize wins", 0.02, 2, BIG, 7, None, 0, 1e-6, 7),
    ("fixed chunksize, backend ceiling", 0.02, 2, 3, 7, None, 0, 1e-6, 3),
    ("no target: one item per chunk", 0.0, 2, BIG, None, None, 0, 1e-6, 1),
    ("nothing measured yet: one item", 0.02, 2, BIG, None, 1000, 0, None, 1),
    ("1 ms tasks: 20 ms of work", 0.02, 2, BIG, None, None, 0, 1e-3, 20),
    ("1 us tasks: capped at MAX_CHUNK", 0.02, 2, BIG, None, None, 0, 1e-6, MAX_CHUNK),
    # Balancing alone would say ceil(1000 / 8) = 125; the 2 ms floor says 2000.
    ("the 2 ms floor beats balancing for tiny tasks", 0.02, 2, BIG, None, 1000, 0, 1e-6, 2000),
    ("guided: chunks shrink as the input runs out", 0.02, 2, BIG, None, 100, 90, 1e-2, 2),
    ("tasks longer than the target: one item", 0.02, 2, BIG, None, None, 0, 1.0, 1),
    ("backend ceiling (max_tasks_per_worker)", 0.02, 2, 5, None, None, 0, 1e-4, 5),
]
FEW = [
    # (name, target_s, workers, max_chunk, total, submitted, mean, measured, expected)
    # CPython's test_map_timeout: map(time.sleep, [0, 0, 6], timeout=5) on 32
    # threads. The first call's 10 us must not join the next 0 to the 6.
    ("one fast call does not join the last items", 0.002, 32, BIG, 3, 1, 1e-5, 1, 1),
    ("63 calls: still no floor", 0.02, 2, BIG, 1000, 0, 1e-6, 63, 125),
    ("64 calls: the floor", 0.02, 2, BIG, 1000, 0, 1e-6, 64, 2000),
    ("few calls still size an endless input by the target", 0.02, 2, BIG, None, 1, 1e-3, 1, 20),
]


@pytest.mark.parametrize(
    "name, target_s, workers, max_chunk, chunksize, total, submitted, mean, expected",
    CASES,
    ids=[c[0] for c in CASES],
)
def test_next_size(name, target_s, workers, max_chunk, chunksize, total, submitted, mean, expected):
    job = StreamJob(abs, make_options(chunksize=chunksize))
    if mean is not None:
        job.record(1000, 1000 * mean)
    chunker = Chunker(Shape(target_s, workers, max_chunk), job, total)
    assert chunker.next_size(submitted) == expected


@pytest.mark.parametrize(
    "name, target_s, workers, max_chunk, total, submitted, mean, measured, expected",
    FEW,
    ids=[c[0] for c in FEW],
)
def test_the_floor_waits_for_enough_measured_items(
    name, target_s, workers, max_chunk, total, submitted, mean, measured, expected
):
    job = StreamJob(abs, make_options())
    job.record(measured, measured * mean)
    chunker = Chunker(Shape(target_s, workers, max_chunk), job, total)
    assert chunker.next_size(submitted) == expected

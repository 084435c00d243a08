"""Every pickled chunk's shared-memory lease is released exactly once, when no queued
or running task of that chunk needs it: done, failed, re-chunked, cancelled or closed."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gilfree import WorkerDied
from gilfree.pool import ProcessPool

pytestmark = pytest.mark.timeout(60)


class CountingLease:
    def __init__(self, ledger, inner):
        self.ledger, self.inner, self.released = ledger, inner, 0

    def release(self):
        self.released += 1
        self.inner.release()
        with self.ledger.lock:
            self.ledger.live.discard(self)


class Ledger:
    """Wraps a pool's arena so that every lease it hands out is tracked."""

    def __init__(self, pool):
        self.lock = threading.Lock()
        self.made: list[CountingLease] = []
        self.live: set[CountingLease] = set()
        arena = pool._arena
        real = arena.dumps

        def dumps(items, *, by_value=False):
            blob, inner = real(items, by_value=by_value)
            lease = CountingLease(self, inner)
            with self.lock:
                self.made.append(lease)
                self.live.add(lease)
            return blob, lease

        arena.dumps = dumps  # the pool and its manager share this arena

    def check_all_released_once(self):
        assert self.made, "no lease was handed out"
        assert [lease.released for lease in self.made] == [1] * len(self.made)


def _square_slowly(x):
    time.sleep(0.3)
    return x * x


def _die_on_2(x):
    if x == 2:
        os._exit(4)
    return x


def _fail_on_1(x):
    if x == 1:
        raise ValueError(x)
    return x


def test_a_lease_lives_while_its_task_runs_and_goes_when_it_is_done(sink):
    pool = ProcessPool(1)
    ledger = Ledger(pool)
    try:
        job = sink(_square_slowly)
        pool.submit(job, 0, [3])
        time.sleep(0.1)  # queued or running: not released
        assert len(ledger.live) == 1
        assert job.take(1) == {0: (True, 9)}
        deadline = time.monotonic() + 5
        while ledger.live and time.monotonic() < deadline:
            time.sleep(0.01)
        ledger.check_all_released_once()
    finally:
        pool.shutdown()


@pytest.mark.parametrize(
    "fn, retries, expect",
    [
        (abs, 0, {i: i for i in range(6)}),
        (_die_on_2, 0, {0: 0, 1: 1, 2: WorkerDied, 3: 3, 4: 4, 5: 5}),  # re-chunked
        (_fail_on_1, 2, {0: 0, 1: ValueError, 2: 2, 3: 3, 4: 4, 5: 5}),  # retried twice
    ],
    ids=["done", "crash", "retries"],
)
def test_each_lease_is_released_exactly_once(sink, fn, retries, expect):
    pool = ProcessPool(2)
    ledger = Ledger(pool)
    try:
        job = sink(fn)
        pool.submit(job, 0, list(range(6)), retries=retries)
        got = job.take(6)
        for i, want in expect.items():
            ok, value = got[i]
            if isinstance(want, type):
                assert not ok and isinstance(value, want)
            else:
                assert ok and value == want
    finally:
        pool.shutdown()
    ledger.check_all_released_once()
    if fn is not abs:
        assert len(ledger.made) > 1  # the pieces had leases of their own


def test_cancelled_and_killed_work_releases_its_leases(sink):
    pool = ProcessPool(1)
    ledger = Ledger(pool)
    running, cancelled = sink(_square_slowly), sink(abs)
    pool.submit(running, 0, [1, 2])
    for k in range(5):
        pool.submit(cancelled, k, [k])
    cancelled.cancelled = True
    time.sleep(0.1)
    pool.shutdown(kill=True)
    ledger.check_all_released_once()

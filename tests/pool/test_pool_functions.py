"""A function is pickled once per pool while it lives, however many jobs run it."""

from __future__ import annotations

import gc

import pytest

from gilfree.pool import ProcessPool

pytestmark = pytest.mark.timeout(60)


class Counted:
    """A callable that counts how often the parent pickles it."""

    pickles = 0

    def __init__(self, add):
        self.add = add

    def __call__(self, x):
        return x + self.add

    def __reduce__(self):
        Counted.pickles += 1
        return (Counted, (self.add,))


def test_jobs_of_one_function_pickle_it_once(sink):
    Counted.pickles = 0
    fn = Counted(10)
    pool = ProcessPool(1, start_method="fork")
    try:
        jobs = [sink(fn) for _ in range(5)]  # as Executor.submit makes one job per call
        for k, job in enumerate(jobs):
            pool.submit(job, 0, [k])
        assert [job.take(1) for job in jobs] == [{0: (True, k + 10)} for k in range(5)]
        assert Counted.pickles == 1
        # Another function is pickled on its own, and runs as itself.
        other = sink(Counted(100))
        pool.submit(other, 0, [1])
        assert other.take(1) == {0: (True, 101)}
        assert Counted.pickles == 2
    finally:
        pool.shutdown()


def test_the_cache_does_not_keep_a_function_alive(sink):
    fn = Counted(1)
    pool = ProcessPool(1, start_method="fork")
    try:
        job = sink(fn)
        pool.submit(job, 0, [1])
        assert job.take(1) == {0: (True, 2)}
        alive = len(pool._fns)
        del fn, job
        gc.collect()
        assert len(pool._fns) == alive - 1
        assert pool._last_fn is not None and pool._last_fn[0]() is None
    finally:
        pool.shutdown()

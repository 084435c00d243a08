"""How often the pool pickles a function: once while it lives when its pickle
is only its name; for each job when it is pickled by value, so that each job
sees the function as it is when submitted (as concurrent.futures does)."""

from __future__ import annotations

import gc
import operator
import sys
import types

import pytest

from gilfree import _serialize
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


@pytest.fixture
def dumps_counted(monkeypatch):
    calls = []
    real = _serialize.dump_function

    def counting(fn):
        calls.append(fn)
        return real(fn)

    monkeypatch.setattr(_serialize, "dump_function", counting)
    return calls


def test_a_function_pickled_by_name_is_pickled_once(sink, dumps_counted):
    pool = ProcessPool(1, start_method="fork")
    try:
        jobs = [sink(operator.neg) for _ in range(5)]  # as Executor.submit makes one job per call
        for k, job in enumerate(jobs):
            pool.submit(job, 0, [k])
        assert [job.take(1) for job in jobs] == [{0: (True, -k)} for k in range(5)]
        assert dumps_counted == [operator.neg]
    finally:
        pool.shutdown()


def test_a_callable_object_is_pickled_for_each_job_and_seen_as_it_is_then(sink):
    Counted.pickles = 0
    fn = Counted(10)
    pool = ProcessPool(1, start_method="fork")
    try:
        first = sink(fn)
        pool.submit(first, 0, [1])
        assert first.take(1) == {0: (True, 11)}
        fn.add = 20  # concurrent.futures would pickle it again: so does the pool
        second = sink(fn)
        pool.submit(second, 0, [1])
        assert second.take(1) == {0: (True, 21)}
        assert Counted.pickles == 2
    finally:
        pool.shutdown()


def test_a_closure_is_seen_with_its_cells_as_they_are_at_each_job(sink):
    box = [1]

    def times(x):
        return x * box[0]

    pool = ProcessPool(1, start_method="fork")
    try:
        results = []
        for factor in (1, 10, 100):
            box[0] = factor
            job = sink(times)
            pool.submit(job, 0, [2])
            results.append(job.take(1))
        assert results == [{0: (True, 2)}, {0: (True, 20)}, {0: (True, 200)}]
    finally:
        pool.shutdown()


def test_a_function_pickled_by_value_is_pickled_once_per_job_not_per_chunk(sink, dumps_counted):
    # A __main__ function is a plain function pickled by value: re-pickling it
    # for each of a map's 20,000 one-item chunks made the pool 2x slower than
    # multiprocessing.Pool on the 64-worker benchmark.
    box = [3]

    def times(x):
        return x * box[0]

    pool = ProcessPool(1, start_method="fork")
    try:
        job = sink(times)
        for k in range(50):
            pool.submit(job, k, [k])
        assert job.take(50) == {k: (True, 3 * k) for k in range(50)}
        assert dumps_counted == [times]
        box[0] = 5  # a new job sees the function as it is now
        again = sink(times)
        pool.submit(again, 0, [1])
        assert again.take(1) == {0: (True, 5)}
        assert dumps_counted == [times, times]
    finally:
        pool.shutdown()


@pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="without a GIL (3.13t) a function made by exec outlived its last reference and "
    "gc.collect() even with no referrers at all, so freeing it cannot be observed there",
)
def test_the_cache_does_not_keep_a_function_alive(sink, monkeypatch):
    module = types.ModuleType("gilfree_test_named")
    exec("def plus_one(x):\n    return x + 1\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)  # importable: pickled by name
    pool = ProcessPool(1, start_method="fork")  # forked after: the worker has the module
    try:
        job = sink(module.plus_one)
        pool.submit(job, 0, [1])
        assert job.take(1) == {0: (True, 2)}
        assert len(pool._fns) == 1
        del job, module.plus_one
        gc.collect()
        assert len(pool._fns) == 0
        assert pool._last_fn is not None and pool._last_fn[0]() is None
    finally:
        pool.shutdown()

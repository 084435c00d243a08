"""A pool no one holds shuts its workers down; an initializer runs in every worker."""

from __future__ import annotations

import gc
import os
import time

import psutil
import pytest

import gilfree
from gilfree import PoolBroken, WorkerDied
from gilfree.pool import ProcessPool

pytestmark = pytest.mark.timeout(60)


def _gone(pids, within):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for p in pids:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_an_executor_dropped_without_shutdown_stops_its_workers():
    ex = gilfree.Executor(backend="process", workers=2)
    assert ex.submit(abs, -3).result(timeout=30) == 3
    pids = ex.statistics()[0]["pids"]
    assert len(pids) == 2
    del ex
    gc.collect()
    assert _gone(pids, 5.0), "workers outlived their dropped Executor"


def test_a_dropped_pool_finishes_queued_work_then_stops(sink):
    pool = ProcessPool(2)
    job = sink(_slow_square)
    pool.submit(job, 0, [1, 2, 3])
    pids = pool.statistics()["pids"]
    del pool
    gc.collect()
    got = job.take(3, timeout=10)
    assert got == {0: (True, 1), 1: (True, 4), 2: (True, 9)}
    assert _gone(pids, 5.0)


def _slow_square(x):
    time.sleep(0.2)
    return x * x


# -- initializer ----------------------------------------------------------------------
_configured = None


def _configure(value, extra):
    global _configured
    _configured = (value, extra, os.getpid())


def _read_config(_):
    return _configured


def _die(_):
    os._exit(5)


def test_initializer_runs_once_in_each_worker_before_its_first_task(sink):
    pool = ProcessPool(2, initializer=_configure, initargs=(7, "x"))
    try:
        job = sink(_read_config)
        pool.submit(job, 0, list(range(20)))
        got = job.take(20)
        assert all(ok for ok, _ in got.values())
        pids = pool.statistics()["pids"]
        for _ok, (value, extra, pid) in got.values():
            assert (value, extra) == (7, "x") and pid in pids
        # A replacement worker is initialized too.
        dead = sink(_die)
        pool.submit(dead, 0, [0])
        assert isinstance(dead.take(1)[0][1], WorkerDied)
        again = sink(_read_config)
        pool.submit(again, 0, list(range(10)))
        assert all(ok and v[:2] == (7, "x") for ok, v in again.take(10).values())
    finally:
        pool.shutdown()


def _bad_initializer():
    raise ValueError("no database here")


def test_a_failing_initializer_breaks_the_pool(sink):
    pool = ProcessPool(2, initializer=_bad_initializer)
    try:
        job = sink(abs)
        try:  # the workers may fail their initializer before or after this submit
            pool.submit(job, 0, [-1, -2, -3])
            errors = [v for ok, v in job.take(3, timeout=10).values() if not ok]
            assert len(errors) == 3
        except PoolBroken as raised:
            errors = [raised]
        assert all(isinstance(e, PoolBroken) for e in errors)
        err = errors[0]
        assert "initializer raised ValueError: no database here" in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert "_bad_initializer" in str(err.__cause__.__cause__)  # the worker's traceback
        with pytest.raises(PoolBroken):
            pool.submit(sink(abs), 0, [1])
    finally:
        pool.shutdown()


def _exiting_initializer():
    os._exit(3)


def test_an_initializer_that_kills_its_worker_breaks_the_pool(sink):
    """As when it raises: every worker would die the same way. It used to fork
    and lose a worker per task, each task failing with a WorkerDied that blamed it."""
    pool = ProcessPool(2, initializer=_exiting_initializer)
    try:
        job = sink(abs)
        try:
            pool.submit(job, 0, [-1, -2, -3])
            errors = [v for ok, v in job.take(3, timeout=10).values() if not ok]
            assert len(errors) == 3
        except PoolBroken as raised:
            errors = [raised]
        assert all(isinstance(e, PoolBroken) for e in errors), errors
        assert "exited with status 3 while running the initializer" in str(errors[0])
        with pytest.raises(PoolBroken):
            pool.submit(sink(abs), 0, [1])
        assert pool.statistics().get("started", 0) == 0  # none started to replace one
    finally:
        pool.shutdown()


def test_an_unpicklable_initializer_is_refused_up_front():
    import threading

    lock = threading.Lock()
    with pytest.raises(gilfree.SerializationError):
        ProcessPool(1, initializer=lambda: lock)

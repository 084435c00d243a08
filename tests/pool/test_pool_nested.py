"""What a task on a pool worker sees of its surroundings: no pool of its own
(a clear error, not multiprocessing's assertion), and the caller's sys.argv
whichever way the worker was started."""

from __future__ import annotations

import sys

import pytest

from gilfree.errors import ConfigurationError
from gilfree.pool import ProcessPool

pytestmark = pytest.mark.timeout(60)


def start_inner_pool(_):
    ProcessPool(1)  # raises in a worker
    return "started"


def argv_of_worker(_):
    return list(sys.argv)


@pytest.mark.parametrize("method", ["fork", "zygote"])
def test_a_task_cannot_start_a_pool_and_is_told_why(sink, method):
    pool = ProcessPool(1, start_method=method)
    try:
        job = sink(start_inner_pool)
        pool.submit(job, 0, [0])
        [(ok, exc)] = job.take(1).values()
        assert not ok
        assert isinstance(exc, ConfigurationError), exc
        assert "cannot start a process pool" in str(exc) and "backend='thread'" in str(exc)
    finally:
        pool.shutdown()


@pytest.mark.parametrize("method", ["fork", "zygote"])
def test_a_task_sees_the_callers_argv(sink, method, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["my_script.py", "--flag", "value"])
    pool = ProcessPool(1, start_method=method)
    try:
        job = sink(argv_of_worker)
        pool.submit(job, 0, [0])
        assert job.take(1) == {0: (True, ["my_script.py", "--flag", "value"])}
    finally:
        pool.shutdown()

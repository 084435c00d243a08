"""What a task on a pool worker sees of its surroundings: no pool of its own
(a clear error, not multiprocessing's assertion), and the caller's sys.argv,
environment, directory and import path whichever way the worker was started."""

from __future__ import annotations

import os
import sys

import pytest

from gilfree.errors import ConfigurationError
from gilfree.pool import ProcessPool

pytestmark = pytest.mark.timeout(60)


def start_inner_pool(_):
    ProcessPool(1)  # raises in a worker
    return "started"


def surroundings(_):
    return list(sys.argv), os.environ.get("GILFREE_TEST_MARK"), os.getcwd(), sys.path[0]


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


@pytest.mark.parametrize("method", ["fork", "zygote", "spawn"])
def test_a_task_sees_the_callers_argv_environment_directory_and_path(
    sink, method, monkeypatch, tmp_path
):
    from gilfree.pool import _zygote

    _zygote.get()  # started before the changes, as it is once any pool has used it
    monkeypatch.setattr(sys, "argv", ["my_script.py", "--flag", "value"])
    monkeypatch.setenv("GILFREE_TEST_MARK", "set after the fork server started")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    pool = ProcessPool(1, start_method=method)
    try:
        job = sink(surroundings)
        pool.submit(job, 0, [0])
        seen = (["my_script.py", "--flag", "value"], os.environ["GILFREE_TEST_MARK"])
        assert job.take(1) == {0: (True, (*seen, str(tmp_path), str(tmp_path)))}
    finally:
        pool.shutdown()

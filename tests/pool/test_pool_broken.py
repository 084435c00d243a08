"""The pool heals what it can (a dead fork server, dead workers) and breaks, loudly and
at once, where it cannot: every pending task fails with PoolBroken, later submits raise
it, nothing hangs."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import pytest

import gilfree
from gilfree import PoolBroken
from gilfree.pool import ProcessPool, _ledger, _manager, _zygote

pytestmark = pytest.mark.timeout(60)


def nap(x):
    time.sleep(0.3)
    return x * 2


def _kill_fork_server() -> int:
    z = _zygote.get()
    os.kill(z.pid, signal.SIGKILL)
    return z.pid


def _settled_within(futures, seconds):
    _done, not_done = concurrent.futures.wait(futures, timeout=seconds)
    return not not_done


def test_pool_broken_is_a_gilfree_error_and_a_broken_executor():
    assert issubclass(PoolBroken, gilfree.GilfreeError)
    assert issubclass(PoolBroken, concurrent.futures.BrokenExecutor)
    assert "PoolBroken" in gilfree.__all__


def test_killing_the_fork_server_under_an_executor_heals():
    with gilfree.Executor(backend="process", workers=2, start_method="zygote") as ex:
        assert ex.submit(nap, 0).result(timeout=30) == 0  # workers are up
        futures = [ex.submit(nap, i) for i in range(8)]
        old = _kill_fork_server()
        t0 = time.monotonic()
        assert _settled_within(futures, 5.0), "futures still pending 5 s after the kill"
        for i, f in enumerate(futures):  # healed: re-run, not failed
            exc = f.exception()
            assert exc is None or isinstance(exc, PoolBroken), exc
            if exc is None:
                assert f.result() == 2 * i
        assert time.monotonic() - t0 < 5.0
        # Still usable, from a fresh fork server.
        assert ex.submit(nap, 21).result(timeout=10) == 42
        assert _zygote.get().pid != old
        ex._backends[("process", 2)].check()  # not broken


def test_killing_the_fork_server_under_a_running_map_heals():
    results = []
    t_kill = None
    for value in gilfree.imap(
        nap, range(12), backend="process", workers=2, chunksize=1, start_method="zygote"
    ):
        results.append(value)
        if len(results) == 1:
            _kill_fork_server()
            t_kill = time.monotonic()
    assert time.monotonic() - t_kill < 5.0
    assert results == [2 * i for i in range(12)]


def test_a_fork_server_that_cannot_restart_breaks_the_pool(monkeypatch):
    ex = gilfree.Executor(backend="process", workers=2, start_method="zygote")
    try:
        assert ex.submit(nap, 1).result(timeout=30) == 2
        futures = [ex.submit(nap, i) for i in range(6)]
        monkeypatch.setattr(_zygote, "_SERVE", "import sys; sys.exit(3)")
        _kill_fork_server()
        assert _settled_within(futures, 5.0), "futures still pending 5 s after the kill"
        errors = [f.exception() for f in futures]
        assert any(isinstance(e, PoolBroken) for e in errors)
        broken = next(e for e in errors if isinstance(e, PoolBroken))
        assert "no worker process could be started" in str(broken)
        assert isinstance(broken.__cause__, OSError)
        # Later submits raise it; so does the backend's health check.
        with pytest.raises(PoolBroken):
            ex.submit(nap, 1)
        with pytest.raises(PoolBroken):
            ex._backends[("process", 2)].check()
    finally:
        ex.shutdown(wait=True)


def test_a_fork_server_that_dies_as_the_pool_starts_breaks_it(monkeypatch):
    """Each first worker gets two tries (the second from a fresh fork server):
    when both fail, creating the pool raises PoolBroken, not the fork
    server's own ZygoteGone (a ConnectionError callers do not expect)."""
    old = _zygote.get()
    monkeypatch.setattr(_zygote, "_SERVE", "import sys; sys.exit(3)")
    os.kill(old.pid, signal.SIGKILL)
    old._popen.wait(5)
    t0 = time.monotonic()
    with pytest.raises(PoolBroken, match="first workers could not start") as info:
        gilfree.map(nap, range(4), backend="process", workers=2, start_method="zygote")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(PoolBroken):  # an Executor starts its pool when made
        gilfree.Executor(backend="process", workers=2, start_method="zygote")
    assert time.monotonic() - t0 < 20


def test_a_running_map_fails_with_pool_broken_when_the_pool_breaks(monkeypatch):
    t_kill = None
    with pytest.raises(PoolBroken):  # the break happens mid-iteration
        for _value in gilfree.imap(
            nap, range(40), backend="process", workers=2, chunksize=1, start_method="zygote"
        ):
            if t_kill is None:
                monkeypatch.setattr(_zygote, "_SERVE", "import sys; sys.exit(3)")
                _kill_fork_server()
                t_kill = time.monotonic()
    assert time.monotonic() - t_kill < 5.0


def test_a_manager_error_breaks_the_pool_and_fails_every_pending_task(monkeypatch, sink):
    entered = threading.Event()

    def broken_on_result(self, *args):
        entered.set()
        raise KeyError("a bug in the manager")

    pool = ProcessPool(2)
    try:
        jobs = [sink(abs) for _ in range(3)]
        monkeypatch.setattr(_ledger.Ledger, "results", broken_on_result)
        submitted = []
        for k, job in enumerate(jobs):
            try:  # the pool may break (on the first result) before the last submits
                pool.submit(job, 0, [-k, -k - 1])
                submitted.append(job)
            except PoolBroken:
                pass
        assert submitted
        outcomes = [job.take(2, timeout=5.0) for job in submitted]
        assert entered.is_set()
        for got in outcomes:
            assert all(not ok and isinstance(v, PoolBroken) for ok, v in got.values())
        err = outcomes[0][0][1]
        assert "KeyError" in str(err) and isinstance(err.__cause__, KeyError)
        with pytest.raises(PoolBroken):
            pool.submit(sink(abs), 0, [1])
        with pytest.raises(PoolBroken):
            pool.check()
        assert pool.statistics()["state"] == "broken"
    finally:
        pool.shutdown()


def test_shutdown_of_a_broken_pool_returns_and_leaves_nothing(monkeypatch, sink):
    monkeypatch.setattr(
        _manager.Manager, "_dispatch", lambda self: (_ for _ in ()).throw(ValueError("bug"))
    )
    pool = ProcessPool(2)
    job = sink(abs)
    pool.submit(job, 0, [1])  # wakes the manager, which breaks
    assert not job.take(1, timeout=5.0)[0][0]
    t0 = time.monotonic()
    pool.shutdown()
    assert time.monotonic() - t0 < 5.0

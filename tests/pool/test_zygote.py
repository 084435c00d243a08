"""The fork server: workers it starts, their exit codes, and bounded round trips when
it is slow or gone."""

from __future__ import annotations

import os
import signal
import time

import pytest

from gilfree.pool import _zygote
from gilfree.pool._procs import Slots, WorkerProcess

pytestmark = pytest.mark.timeout(60)

CONFIG = {
    "parent": os.getpid(),
    "max_tasks": None,
    "max_memory": None,
    "share_threshold": 1 << 20,
    "blas_threads": 1,
}


@pytest.fixture
def plumbing():
    slots = Slots(1)
    alive_r, alive_w = os.pipe()
    yield slots, alive_r
    slots.close()
    os.close(alive_r)
    os.close(alive_w)


def test_a_worker_from_the_zygote_reports_its_exit_code(plumbing):
    slots, alive_r = plumbing
    proc = WorkerProcess(0, "zygote", slots.fd, alive_r, [], CONFIG)
    try:
        assert proc.fork_server == _zygote.get().pid
        proc.kill()
        assert proc.exit_status() == (-signal.SIGKILL, False)
    finally:
        proc.release()


def test_a_dead_zygote_is_reported_and_replaced(plumbing):
    slots, alive_r = plumbing
    proc = WorkerProcess(0, "zygote", slots.fd, alive_r, [], CONFIG)
    old = _zygote.get()
    try:
        os.kill(old.pid, signal.SIGKILL)
        t0 = time.monotonic()
        proc.wait(5)  # the worker dies with its zygote (PR_SET_PDEATHSIG)
        assert proc.exit_status() == (None, True)
        assert time.monotonic() - t0 < 5
    finally:
        proc.release()
    assert not old.alive()
    fresh = _zygote.get()
    assert fresh is not old and fresh.alive()
    with pytest.raises(_zygote.ZygoteGone):
        old.fork(CONFIG, [])


def test_status_of_a_worker_that_has_not_exited_is_bounded(plumbing):
    slots, alive_r = plumbing
    proc = WorkerProcess(0, "zygote", slots.fd, alive_r, [], CONFIG)
    try:
        z = _zygote.get()
        t0 = time.monotonic()
        assert z.status(proc.pid, timeout=0.2) is None  # still running: no answer yet
        assert time.monotonic() - t0 < 2
        proc.kill()
        proc.wait(5)
        # The late reply is matched to its pid, not to whatever is asked next.
        assert z.status(proc.pid) == -signal.SIGKILL
    finally:
        proc.release()


def test_a_hung_zygote_is_killed_after_its_reply_timeout(monkeypatch, plumbing):
    monkeypatch.setattr(_zygote, "_SERVE", "import time; time.sleep(60)")
    monkeypatch.setattr(_zygote, "REPLY_TIMEOUT_S", 0.5)
    hung = _zygote.Zygote()
    t0 = time.monotonic()
    with pytest.raises(_zygote.ZygoteGone, match="failed"):
        hung.fork(CONFIG, [])
    assert time.monotonic() - t0 < 5
    assert not hung.alive() and hung._popen.returncode == -signal.SIGKILL


def test_the_leak_guard_counts_a_worker_the_zygote_forked(plumbing, pytestconfig):
    """The zygote is long-lived by design; the workers it forks share its command
    line but are not: a leaked one must show up in the guard's list."""
    top = os.path.join(os.path.dirname(os.path.dirname(__file__)), "conftest.py")
    plugins = pytestconfig.pluginmanager.get_plugins()
    conftest = next(m for m in plugins if getattr(m, "__file__", "") == top)
    slots, alive_r = plumbing
    proc = WorkerProcess(0, "zygote", slots.fd, alive_r, [], CONFIG)
    try:
        children = conftest._children()
        assert proc.pid in children
        assert _zygote.get().pid not in children
    finally:
        proc.kill()
        proc.wait(5)
        proc.release()
    assert proc.pid not in conftest._children()


def test_ctrl_c_while_the_zygote_starts_neither_stops_nor_prints(monkeypatch, plumbing, capfd):
    """Ctrl-C reaches the whole process group, the zygote too. One that arrives
    while its interpreter starts (before its code can ignore SIGINT) once
    killed it with a KeyboardInterrupt traceback beside the caller's."""
    slots, alive_r = plumbing
    fresh = _zygote.Zygote()
    monkeypatch.setattr(_zygote, "_zygote", fresh)
    for _ in range(20):  # over its first 0.2 s, from its exec to its serving loop
        os.kill(fresh.pid, signal.SIGINT)
        time.sleep(0.01)
    proc = WorkerProcess(0, "zygote", slots.fd, alive_r, [], CONFIG)
    try:
        assert proc.fork_server == fresh.pid and fresh.alive()
        proc.kill()
        assert proc.exit_status() == (-signal.SIGKILL, False)
    finally:
        proc.release()
        fresh.close()
    assert "KeyboardInterrupt" not in capfd.readouterr().err

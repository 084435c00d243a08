"""Shared fixtures, and the leak guard every test runs under.

The guard fails a test that leaves behind a child process, a thread or a
gilfree shared-memory segment of this process. Leaked children are killed so
one leak does not cascade into the next test.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterable

import psutil
import pytest

#: Helper processes kept for the life of the interpreter by design: the fork
#: servers of multiprocessing and of gilfree (see gilfree/pool/_zygote.py).
_LONG_LIVED = ("resource_tracker", "forkserver", "gilfree.pool._zygote")
#: How long exiting processes and threads get to finish before they count as leaked.
_SETTLE_S = 5.0


# Started in the background by a non-interactive shell (`.ci/run &`), pytest
# inherits SIGINT ignored, and so would every Python the tests start: Ctrl-C
# would then do nothing there, and every test of it failed (so did CPython's
# test_threading test of interrupt_main, which spun until killed). A handler
# here is reset to the default in children at exec, as a terminal's shell has it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Processes of the session-wide Dask cluster: they outlive single tests on purpose.
_SESSION_PIDS: set[int] = set()


def register_session_pids(pids: Iterable[int]) -> None:
    """Processes that outlive single tests on purpose (a session-wide cluster):
    the leak guard ignores them, and a long-lived helper they start."""
    _SESSION_PIDS.update(pids)


def forget_session_pids() -> None:
    """The session-long processes are gone (their fixture ended)."""
    _SESSION_PIDS.clear()


@pytest.fixture
def session_pids():
    """``register_session_pids`` for a test module: ``import conftest`` there could
    find tests/pool/conftest.py instead of this one."""
    return register_session_pids


def _children() -> dict[int, str]:
    out = {}
    me = os.getpid()
    zygote = sys.modules.get("gilfree.pool._zygote")
    zygote_pid = getattr(getattr(zygote, "_zygote", None), "pid", None)
    for p in psutil.Process().children(recursive=True):
        if p.pid in _SESSION_PIDS:
            continue
        try:
            cmd = " ".join(p.cmdline())
            # Exited: a zombie, or "dead" while its parent (the zygote, for
            # the workers it forks) is reaping it (3.12 in test-pythons saw one).
            if p.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                continue
            parent = p.ppid()
        except psutil.Error:
            continue
        # A helper is long-lived, not its children: a worker the zygote forks
        # carries the zygote's command line, and must count when it leaks.
        helper = any(name in cmd for name in _LONG_LIVED) and (
            p.pid == zygote_pid or parent == me or parent in _SESSION_PIDS
        )
        if not helper:
            out[p.pid] = cmd
    return out


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def _segments() -> set[str]:
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return set()
    return {n for n in names if n.startswith(f"gilfree-{os.getpid()}-")}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``make test-pythons`` (GILFREE_TEST_PYTHONS=1) skips the tests marked
    ``skip_in_test_pythons(reason)``: heavy ones that ``make test`` runs on
    3.11 and whose outcome does not hinge on the interpreter, the reason says
    why. ci/test-pythons keeps the whole run under its time budget this way."""
    marker = item.get_closest_marker("skip_in_test_pythons")
    if marker is not None and os.environ.get("GILFREE_TEST_PYTHONS"):
        why = marker.args[0] if marker.args else "heavy, and make test runs it"
        pytest.skip(f"make test-pythons: {why}")


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """The planner caches machine costs on disk: keep the tests' copy in their tmp dir."""
    old = os.environ.get("GILFREE_CACHE_DIR")
    os.environ["GILFREE_CACHE_DIR"] = str(tmp_path_factory.mktemp("gilfree-cache"))
    yield
    if old is None:
        os.environ.pop("GILFREE_CACHE_DIR", None)
    else:
        os.environ["GILFREE_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def leak_guard(request):
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    before_children = set(_children())
    before_threads = _threads()
    before_segments = _segments()
    yield
    deadline = time.monotonic() + _SETTLE_S
    while True:
        children = {p: c for p, c in _children().items() if p not in before_children}
        threads = {t for t in _threads() - before_threads if not _ignorable(t)}
        segments = _segments() - before_segments
        if not (children or threads or segments) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in children:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    problems = []
    if children:
        problems.append(f"child processes left behind: {children}")
    if threads:
        problems.append(f"threads left behind: {sorted(t.name for t in threads)}")
    if segments:
        problems.append(f"shared-memory segments left behind: {sorted(segments)}")
    if problems:
        pytest.fail("; ".join(problems))


def _ignorable(t: threading.Thread) -> bool:
    # Threads owned by third-party libraries that outlive their objects by design.
    return t.name.startswith(("asyncio_", "AsyncProcess", "Dask-Offload", "TCP-Executor"))


BACKENDS = ["serial", "thread", "process", "dask"]


@pytest.fixture(scope="session")
def dask_cluster_address():
    """A real scheduler and two workers (command-line programs), shared by the session."""
    pytest.importorskip("distributed")
    from dask_cluster import LocalDaskCluster

    with LocalDaskCluster(n_workers=2, nthreads=2) as cluster:
        register_session_pids(p.pid for p in psutil.Process().children(recursive=True))
        yield cluster.address
    forget_session_pids()


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each local backend, and Dask against the session's real cluster."""
    if request.param == "dask":
        address = request.getfixturevalue("dask_cluster_address")
        monkeypatch.setenv("GILFREE_DASK_ADDRESS", address)
    return request.param

"""Crash cases at every pickling step (CPython's test_deadlock table), through
``gilfree.Executor``: each task gets an outcome, the pool goes on, nothing hangs.

Also the worker's identity (the caller's multiprocessing authkey) and
``shutdown(cancel_futures=True)`` cancelling in the pool, not the caller.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import gilfree
from gilfree import SerializationError, WorkerDied
from gilfree.pool import _zygote

pytestmark = pytest.mark.timeout(60)


def _exit() -> None:
    sys.exit(1)


class ExitAtPickle:
    def __reduce__(self):
        _exit()


class ExitAtUnpickle:
    def __reduce__(self):
        return _exit, ()


class ErrorAtPickle:
    def __reduce__(self):
        raise ValueError("no pickling here")


def make(cls):
    return cls()


@pytest.fixture(params=["fork", "zygote"])
def executor(request):
    with gilfree.Executor(backend="process", workers=2, start_method=request.param) as ex:
        yield ex


def still_works(ex: gilfree.Executor) -> None:
    assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_sys_exit_while_pickling_a_result_fails_that_task(executor):
    # Before: the worker died of it between tasks, its chunk was re-run, and
    # the future (and shutdown) waited for ever.
    fut = executor.submit(make, ExitAtPickle)
    with pytest.raises(SystemExit) as info:
        fut.result(timeout=30)
    assert any("pickling the result" in note for note in info.value.__notes__)
    still_works(executor)


def test_sys_exit_while_unpickling_a_result_in_the_parent_fails_that_task(executor):
    # Before: it escaped the manager thread and broke the whole pool.
    bad = executor.submit(make, ExitAtUnpickle)
    good = executor.submit(abs, -7)
    with pytest.raises(SerializationError, match="unpickled in the parent: SystemExit") as info:
        bad.result(timeout=30)
    assert isinstance(info.value.__cause__, SystemExit)
    assert good.result(timeout=30) == 7
    still_works(executor)


@pytest.mark.parametrize("cls, what", [(ExitAtPickle, "SystemExit"), (ErrorAtPickle, "ValueError")])
def test_an_argument_that_cannot_be_pickled_fails_that_task(executor, cls, what):
    # Before, either left the pool deaf: a submission with no chunk to queue
    # raised the manager's wake-up flag, which nothing then lowered.
    fut = executor.submit(id, cls())
    with pytest.raises(SerializationError, match=f"cannot be pickled: {what}"):
        fut.result(timeout=30)
    still_works(executor)


def test_sys_exit_while_unpickling_an_argument_in_the_worker_fails_that_task(executor):
    fut = executor.submit(id, ExitAtUnpickle())
    with pytest.raises((SerializationError, WorkerDied)):
        fut.result(timeout=30)
    still_works(executor)


def test_error_while_pickling_a_result_fails_that_task(executor):
    fut = executor.submit(make, ErrorAtPickle)
    with pytest.raises(SerializationError, match="no pickling here"):
        fut.result(timeout=30)
    still_works(executor)


# -- the worker's identity -------------------------------------------------------------------
def authkey(_):
    return bytes(multiprocessing.current_process().authkey)


@pytest.mark.parametrize("method", ["fork", "zygote", "spawn"])
def test_workers_carry_the_callers_authkey(method):
    # A multiprocessing Manager proxy passed to a task authenticates with it.
    mine = bytes(multiprocessing.current_process().authkey)
    with gilfree.Executor(backend="process", workers=1, start_method=method) as ex:
        assert ex.submit(authkey, None).result(timeout=30) == mine


def append_to(proxy):
    proxy.append(os.getpid())
    return len(proxy)


@pytest.mark.timeout(120)
def test_a_manager_proxy_works_in_a_zygote_worker():
    with multiprocessing.Manager() as manager:
        shared = manager.list()
        with gilfree.Executor(backend="process", workers=1, start_method="zygote") as ex:
            assert ex.submit(append_to, shared).result(timeout=60) == 1
        assert len(shared) == 1 and shared[0] != os.getpid()


def test_the_zygote_exits_quietly_when_its_parent_is_gone():
    """It used to print a BrokenPipeError traceback when its reply found no one."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with theirs:
        zygote = subprocess.Popen(
            [sys.executable, "-c", _zygote._SERVE, str(theirs.fileno()), repr(sys.path)],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    # A fork request whose reply cannot be delivered: the worker it starts
    # exits at once (its alive pipe has no writer), quietly.
    slots_fd = os.memfd_create("slots")
    os.ftruncate(slots_fd, 4 * 8)
    pipes = [os.pipe() for _ in range(4)]
    ends = [p[0] if k in (0, 3) else p[1] for k, p in enumerate(pipes)]
    task_r, result_w, stack_w, alive_r = ends
    for k, (r, w) in enumerate(pipes):  # only the worker keeps its ends
        os.close(w if k in (0, 3) else r)
    config = {
        "parent": os.getpid(),
        "max_tasks": None,
        "max_memory": None,
        "share_threshold": 1 << 20,
        "blas_threads": 1,
        "index": 0,
    }
    fds = [task_r, result_w, stack_w, alive_r, slots_fd]
    socket.send_fds(ours, [_zygote._pack(("fork", config))], fds)
    for fd in fds:
        os.close(fd)
    ours.shutdown(socket.SHUT_RDWR)
    ours.close()
    _out, err = zygote.communicate(timeout=30)
    assert zygote.returncode == 0
    assert b"Traceback" not in err, err.decode()


# -- shutdown(cancel_futures=True) -------------------------------------------------------------
def nap(_):
    time.sleep(0.05)
    return True


def test_cancel_futures_runs_what_the_pool_handed_out_and_cancels_the_rest():
    # Before: the caller's thread cancelled every queued future; with the
    # manager not yet round to hand any to a worker, that was sometimes all.
    # Now the manager cancels, after giving each idle worker its first chunks.
    ex = gilfree.Executor(backend="process", workers=2)
    futures = [ex.submit(nap, k) for k in range(40)]
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    ran = [f for f in futures if not f.cancelled()]
    assert len(cancelled) >= 30
    assert all(f.result(timeout=0) is True for f in ran)
    assert futures[0] in ran and futures[1] in ran


def test_cancel_futures_on_threads_cancels_only_what_no_thread_took():
    started, release = threading.Event(), threading.Event()

    def first(_):
        started.set()
        return release.wait(30)

    ex = gilfree.Executor(backend="thread", workers=1)
    head = ex.submit(first, None)
    assert started.wait(30)
    rest = [ex.submit(abs, -k) for k in range(20)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in rest)
    release.set()
    ex.shutdown(wait=True)
    assert head.result(timeout=0) is True


@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("wait", [True, False])
def test_cancel_futures_leaves_a_map_alone(backend, wait):
    # chunksize=1: far more chunks than the window holds, so most of the map
    # is submitted after shutdown began (it raised "cannot schedule new work
    # after shutdown" once chunks came out smaller).
    with gilfree.Executor(backend=backend, workers=2) as ex:
        it = ex.map(abs, range(-300, 0), chunksize=1)
        ex.shutdown(wait=wait, cancel_futures=True)
        assert list(it) == list(range(300, 0, -1))


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_map_read_across_its_shutdown_hands_on_what_ran_then_says_what_did_not(backend):
    ex = gilfree.Executor(backend=backend, workers=2)
    it = ex.map(abs, range(-300, 0), chunksize=1)
    assert next(it) == 300  # reading began: shutdown does not run the rest
    ex.shutdown(wait=True)
    got = []
    with pytest.raises(RuntimeError, match=r"shut down while this map was being read") as err:
        for value in it:
            got.append(value)
    # Nothing submitted is lost: every result before the cut, in order, then
    # the error naming the first item that never ran.
    assert 0 < len(got) < 299
    assert got == list(range(299, 299 - len(got), -1))
    assert f"items from #{len(got) + 1} on were not run" in str(err.value)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_an_exit_by_exception_cancels_queued_futures(backend):
    # Executor.__exit__ on KeyboardInterrupt kills: queued futures must still settle.
    # (A running thread cannot be stopped: its task settles when it returns.)
    with pytest.raises(KeyboardInterrupt), gilfree.Executor(backend=backend, workers=1) as ex:
        futures = [ex.submit(nap, k) for k in range(20)]
        raise KeyboardInterrupt
    for f in futures:  # (wait() counts a cancelled future as not done, as the stdlib's)
        if not f.cancelled():
            f.exception(timeout=30)
    assert sum(f.cancelled() for f in futures) >= 10


@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_an_unread_map_read_while_shutdown_drains_it_in_the_background(backend):
    # shutdown(wait=False) drains in a thread; the reader starts at once. Whoever
    # pulls first, every result arrives (the reader once came first, and the map
    # was cut as if its reading had begun before the shutdown).
    for _ in range(5):
        ex = gilfree.Executor(backend=backend, workers=None if backend == "serial" else 2)
        it = ex.map(abs, range(-100, 0), chunksize=1)
        ex.shutdown(wait=False)
        assert list(it) == list(range(100, 0, -1))


def _slow_first(x):
    time.sleep(2 if x == 0 else 0)
    return x


def test_shutdown_without_wait_does_not_wait_for_a_reader_blocked_in_next():
    ex = gilfree.Executor(backend="thread", workers=2)
    it = ex.map(_slow_first, range(100), chunksize=1)
    got = []
    reader = threading.Thread(target=lambda: got.append(next(it)))
    reader.start()
    time.sleep(0.3)  # the reader waits in next() for item 0
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 1.5
    reader.join(30)
    assert got == [0]
    with pytest.raises(RuntimeError, match="shut down while this map was being read"):
        list(it)


def _nap(x):
    time.sleep(0.05)
    return x


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_cancel_futures_cancels_queued_submits_before_it_drains_an_unread_map(backend):
    # The unread map is drained at shutdown; the queued submits ahead of it
    # were not cancelled until that drain ended, so every one of them ran
    # first (a new user: 0 of 300 cancelled, shutdown blocked 35 s).
    ex = gilfree.Executor(backend=backend, workers=2)
    futures = [ex.submit(_nap, i) for i in range(200)]
    it = ex.map(abs, range(-20, 0))
    time.sleep(0.2)
    t0 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 < 5
    assert sum(f.cancelled() for f in futures) >= 150
    assert all(f.result() == i for i, f in enumerate(futures) if not f.cancelled())
    assert list(it) == list(range(20, 0, -1))


INTERRUPTED_AT_FORK = """
import os, signal, sys
import gilfree
# Ctrl-C to the process group, as it reaches a worker just forked: before its
# code can ignore SIGINT.
os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signal.SIGINT))
assert gilfree.map(abs, [-1, -2, -3, -4], backend="process", workers=2) == [1, 2, 3, 4]
"""


def test_a_ctrl_c_that_reaches_a_worker_as_it_is_forked_is_dropped_quietly():
    """A worker ignores SIGINT (the caller decides). A SIGINT that arrived
    before the worker's code could ignore it printed KeyboardInterrupt on the
    caller's stderr."""
    out = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_AT_FORK],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert "KeyboardInterrupt" not in out.stderr and "Traceback" not in out.stderr, out.stderr

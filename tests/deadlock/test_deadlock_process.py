"""Locks shared with other processes join the wait-for graph of the process that made them.

The lock is pickled into each child (multiprocessing's own pickler for spawn,
cloudpickle bytes for fork, where Process arguments are not pickled), so the
child holds a proxy that asks the lock server of this process.

Cycles here go through RLocks: a plain Lock shared with other processes may be
released by a thread of a process the host cannot count, so a wait for one is
never reported (see gilfree.deadlock's rule); the timed and signal cases check that.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading

import cloudpickle
import pytest

import gilfree
from gilfree.deadlock import Lock, RLock
from gilfree.deadlock._graph import GRAPH
from gilfree.deadlock._proxy import RemoteLock, RemoteRLock
from gilfree.deadlock._server import current_server, shutdown

HERE = os.path.basename(__file__)
CONTEXTS = ["fork", "spawn"]


@pytest.fixture(autouse=True)
def _server_stops_clean():
    yield
    server = current_server()
    threads = server.threads() if server is not None else []
    folder = os.path.dirname(server.address) if server is not None else None
    shutdown()
    assert not any(t.is_alive() for t in threads), "a lock server thread outlived shutdown()"
    assert folder is None or not os.path.exists(folder), "the socket folder was left behind"
    assert GRAPH.waiting() == {}


def _pass(ctx_name, obj):
    """What to give Process(args=...) so that ``obj`` really is pickled."""
    return cloudpickle.dumps(obj) if ctx_name == "fork" else obj


def _take(obj):
    return pickle.loads(obj) if isinstance(obj, bytes) else obj


def _cycle_worker(locks, index, barrier, results):
    first, second = _take(locks)[index], _take(locks)[1 - index]
    threading.current_thread().name = f"proc-{index}"
    with first:
        barrier.wait(30)
        try:
            with second:
                results.put((index, os.getpid(), "acquired", ""))
        except gilfree.DeadlockError as exc:
            results.put((index, os.getpid(), "deadlock", str(exc)))


def _run(ctx, target, *args):
    proc = ctx.Process(target=target, args=args)
    proc.start()
    return proc


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ctx_name", CONTEXTS)
def test_cycle_across_two_processes_is_refused_in_one(ctx_name):
    ctx = multiprocessing.get_context(ctx_name)
    a, b = RLock("shared-a"), RLock("shared-b")
    barrier, results = ctx.Barrier(2), ctx.SimpleQueue()
    procs = [_run(ctx, _cycle_worker, _pass(ctx_name, [a, b]), i, barrier, results) for i in (0, 1)]
    got = sorted(results.get() for _ in procs)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    outcomes = [outcome for _, _, outcome, _ in got]
    assert sorted(outcomes) == ["acquired", "deadlock"], got
    message = next(msg for _, _, outcome, msg in got if outcome == "deadlock")
    for _, pid, _, _ in got:
        assert f"pid {pid}" in message
    assert "thread 'proc-0'" in message and "thread 'proc-1'" in message
    assert "RLock 'shared-a'" in message and "RLock 'shared-b'" in message
    assert message.count(f"{HERE}:") == 2  # where each process waits
    assert not a.locked() and not b.locked()


def _hold_then_want(lock_pair, held_evt, go_evt, results, timeout=-1):
    mine, theirs = _take(lock_pair)
    with mine:
        held_evt.set()
        go_evt.wait(30)
        try:
            ok = theirs.acquire(timeout=timeout)
            results.put(("acquired" if ok else "timeout", ""))
            if ok:
                theirs.release()
        except gilfree.DeadlockError as exc:
            results.put(("deadlock", str(exc)))


@pytest.mark.timeout(60)
def test_cycle_between_a_local_thread_and_a_child_process():
    """The child waits first; the main thread's request closes the cycle and is refused."""
    ctx = multiprocessing.get_context("fork")
    a, b = RLock("local-a"), RLock("child-b")
    held, go, results = ctx.Event(), ctx.Event(), ctx.SimpleQueue()
    with a:
        proc = _run(ctx, _hold_then_want, _pass("fork", [b, a]), held, go, results)
        assert held.wait(30)
        go.set()
        _wait_for_remote_waiter(proc.pid)
        with pytest.raises(gilfree.DeadlockError) as info:
            b.acquire()
    assert results.get() == ("acquired", "")  # released a, the child went on
    proc.join(30)
    message = str(info.value)
    assert f"pid {proc.pid}" in message and f"pid {os.getpid()}" in message
    assert "RLock 'local-a'" in message and "RLock 'child-b'" in message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [Lock, RLock])
def test_a_timed_wait_in_a_child_is_never_part_of_a_cycle(cls):
    """The child waits with a timeout: the main thread's unbounded request is not
    refused, the child's wait times out and releases what the main thread wants."""
    ctx = multiprocessing.get_context("fork")
    a, b = cls("local-a"), cls("child-b")
    held, go, results = ctx.Event(), ctx.Event(), ctx.SimpleQueue()
    with a:
        proc = _run(ctx, _hold_then_want, _pass("fork", [b, a]), held, go, results, 0.5)
        assert held.wait(30)
        go.set()
        _wait_for_remote_waiter(proc.pid)
        assert b.acquire() is True  # waits for the child's timeout, then gets b
        b.release()
    assert results.get() == ("timeout", "")
    proc.join(30)
    assert proc.exitcode == 0


def _wait_for_remote_waiter(pid, bound=20.0):
    import time

    deadline = time.monotonic() + bound
    pause = threading.Event()
    while not any(f"(pid {pid}," in w[0] for w in GRAPH.waiting().values()):
        assert time.monotonic() < deadline, "the child never waited for the lock"
        pause.wait(0.005)


def _die_holding(lock_bytes, held_evt):
    lock = _take(lock_bytes)
    lock.acquire()
    held_evt.set()
    os._exit(3)  # no release: the server must let go on its behalf


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ctx_name", CONTEXTS)
def test_a_dead_process_releases_what_it_held(ctx_name):
    ctx = multiprocessing.get_context(ctx_name)
    lock = Lock("orphan")
    held = ctx.Event()
    proc = _run(ctx, _die_holding, _pass(ctx_name, lock), held)
    assert held.wait(30)
    proc.join(30)
    assert proc.exitcode == 3
    assert lock.acquire(timeout=20), "the lock of a dead process was never released"
    lock.release()


def _use_remote(lock_bytes, results):
    lock = _take(lock_bytes)
    kind = type(lock).__name__
    assert lock.acquire(False)
    if isinstance(lock, RemoteRLock):
        assert lock.acquire()  # re-entry over the wire
        assert lock._is_owned()
        lock.release()
    else:
        # A timed self-acquire over the wire: it times out, nothing is refused.
        if lock.acquire(timeout=0.05) is False:
            kind += "+timed-out"
    locked = lock.locked()
    lock.release()
    results.put((kind, locked, lock.locked(), pickle.loads(pickle.dumps(lock)).name))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [Lock, RLock])
def test_proxy_semantics_in_a_spawned_child(cls):
    ctx = multiprocessing.get_context("spawn")
    lock, results = cls("remote"), ctx.SimpleQueue()
    proc = _run(ctx, _use_remote, lock, results)
    kind, locked, unlocked_after, name = results.get()
    proc.join(30)
    expected = "RemoteRLock" if cls is RLock else "RemoteLock+timed-out"
    assert (kind, locked, unlocked_after, name) == (expected, True, False, "remote")
    assert not lock.locked()


def test_proxy_fails_clearly_once_the_server_is_gone():
    lock = Lock("gone")
    proxy_args = lock.__reduce__()[1]
    proxy = RemoteLock(*proxy_args[:3], proxy_args[4])
    shutdown()
    with pytest.raises(gilfree.GilfreeError, match="lock server hosting 'gone'"):
        proxy.acquire()
    # pickling again starts a new server, and the lock is found there
    assert pickle.loads(pickle.dumps(lock)) is lock


def _gilfree_task(args):
    """Run in a gilfree process worker: hold mine, pass the gate, then want theirs."""
    mine, theirs, gate = args
    with mine:
        with gate:  # blocks until the test opens it, after both hold their first lock
            pass
        try:
            with theirs:
                return ("acquired", os.getpid(), type(mine).__name__)
        except gilfree.DeadlockError as exc:
            return ("deadlock", os.getpid(), str(exc))


@pytest.mark.timeout(90)
def test_cycle_across_gilfree_process_workers():
    a, b = RLock("task-a"), RLock("task-b")
    gates = [Lock("gate-0"), Lock("gate-1")]
    for gate in gates:
        gate.acquire()
    with gilfree.Executor(backend="process", workers=2) as pool:
        futures = [
            pool.submit(_gilfree_task, (a, b, gates[0])),
            pool.submit(_gilfree_task, (b, a, gates[1])),
        ]
        try:
            # Both workers now hold their first lock and wait at their gate.
            _wait_for_waiters_on({"gate-0", "gate-1"})
        finally:  # open the gates even on failure, so the pool can shut down
            for gate in gates:
                gate.release()
        results = sorted(f.result(timeout=60) for f in futures)
    assert [r[0] for r in results] == ["acquired", "deadlock"], results
    assert results[0][2] == "RemoteRLock"  # the worker had a proxy, not a copy
    message = results[1][2]
    assert len({r[1] for r in results}) == 2, "both tasks ran in one worker"
    for _, pid, _ in results:
        assert f"pid {pid}" in message
    assert "RLock 'task-a'" in message and "RLock 'task-b'" in message
    assert not a.locked() and not b.locked()


def _wait_for_waiters_on(lock_names, bound=60.0):
    import time

    deadline = time.monotonic() + bound
    pause = threading.Event()
    while not lock_names <= {w[1] for w in GRAPH.waiting().values()}:
        assert time.monotonic() < deadline, f"never saw waiters on {lock_names}"
        pause.wait(0.005)


def _wait_forever_on(lock_bytes, results):
    lock = _take(lock_bytes)
    try:
        lock.acquire()
        results.put("acquired")
    except gilfree.GilfreeError as exc:
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.timeout(60)
def test_shutdown_while_a_remote_thread_waits_ends_cleanly():
    ctx = multiprocessing.get_context("fork")
    lock, results = Lock("held-forever"), ctx.SimpleQueue()
    with lock:
        proc = _run(ctx, _wait_forever_on, _pass("fork", lock), results)
        _wait_for_remote_waiter(proc.pid)
        server = current_server()
        threads = server.threads()
        shutdown()
        assert not any(t.is_alive() for t in threads)
        outcome = results.get()
    proc.join(30)
    assert outcome.startswith("GilfreeError: the lock server hosting 'held-forever'"), outcome


@pytest.mark.timeout(60)
def test_fork_from_a_thread_made_under_the_patch(monkeypatch):
    """threading re-initialises the forking thread's (instrumented) locks in the child.

    A failing at-fork hook does not stop the child, it is only reported to
    ``sys.unraisablehook``: the child exits 0 only if that hook was not called.
    """
    from gilfree.deadlock import deadlock_detection

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    codes = []

    def fork_one():
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not unraisable else 7)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

    with deadlock_detection():
        thread = threading.Thread(target=fork_one, name="patched-forker")
    assert isinstance(thread._started._cond._lock, Lock)
    thread.start()
    thread.join(40)
    assert codes == [0]


@pytest.mark.timeout(60)
def test_a_waiter_killed_while_waiting_leaves_the_graph():
    ctx = multiprocessing.get_context("fork")
    lock, results = Lock("contended"), ctx.SimpleQueue()
    with lock:
        proc = _run(ctx, _wait_forever_on, _pass("fork", lock), results)
        _wait_for_remote_waiter(proc.pid)
        server = current_server()
        handlers = [t for t in server.threads() if t.name == "gilfree-lock-handler"]
        proc.kill()
        proc.join(30)
        for handler in handlers:  # it notices the hang-up within _WAKE_EVERY
            handler.join(10)
            assert not handler.is_alive()
        assert GRAPH.waiting() == {}
    assert results.empty()
    assert lock.acquire(False)  # nobody took it on the dead waiter's behalf
    lock.release()


def _bump(args):
    """Read-modify-write a counter file under a lock shared by every worker."""
    lock, path = args
    with lock:
        with open(path) as f:
            value = int(f.read())
        with open(path, "w") as f:
            f.write(str(value + 1))
    return type(lock).__name__


@pytest.mark.timeout(90)
def test_gilfree_map_workers_exclude_each_other(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    lock = RLock("counter")
    kinds = gilfree.map(
        _bump, [(lock, str(counter))] * 60, backend="process", workers=2, chunksize=1
    )
    assert set(kinds) == {"RemoteRLock"}
    assert counter.read_text() == "60"


def _signal_parent(lock_bytes, results):
    """The child releases a plain Lock the parent holds: the lock as a signal, across processes."""
    lock = _take(lock_bytes)
    lock.release()
    results.put("released")


@pytest.mark.timeout(60)
def test_a_child_process_may_release_a_shared_plain_lock_the_parent_waits_on():
    """The parent re-acquires a Lock it holds; no thread of its own could release it, but
    a child process can: the wait is not refused and ends when the child releases."""
    ctx = multiprocessing.get_context("spawn")
    lock, results = Lock("signal"), ctx.SimpleQueue()
    lock.acquire()
    payload = pickle.dumps(lock)  # shared before the wait: the host cannot count the child
    proc = _run(ctx, _signal_parent, payload, results)
    assert lock.acquire() is True
    assert results.get() == "released"
    proc.join(30)
    assert proc.exitcode == 0
    lock.release()

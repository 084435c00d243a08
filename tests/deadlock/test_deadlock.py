"""Deadlock detection (issues #6, #16): gilfree.Lock/RLock, the wait-for graph, the patch.

Races are forced with barriers and events: the threads of a cycle each take
their first lock, meet at a barrier, then ask for the next one. Whatever the
interleaving, exactly one request closes the cycle and must be refused.

A plain Lock may be released by any thread, so a cycle through one is a
deadlock only when no other thread of the process can run. In-process tests
cannot promise that (pytest and other tests may leave threads around), so
those cases run in a fresh interpreter (``run_script``). Timed waits, the
lock-as-signal pattern and the stdlib's forms are tested here; CPython's own
suites in test_deadlock_cpython.py, cross-process cases in test_deadlock_process.py.
"""

from __future__ import annotations

import os
import pickle
import queue
import random
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import gilfree
from gilfree.deadlock import Lock, RLock, deadlock_detection
from gilfree.deadlock._graph import GRAPH
from gilfree.deadlock._server import shutdown

HERE = os.path.basename(__file__)


@pytest.fixture(autouse=True)
def _no_waiters_left():
    yield
    assert GRAPH.waiting() == {}, "a wait stayed in the graph after its thread finished"


def run_cycle(locks, *, names=None):
    """Thread i holds locks[i] and then asks for locks[i+1]; returns (errors, acquired)."""
    n = len(locks)
    barrier = threading.Barrier(n, timeout=10)
    errors: list[tuple[str, gilfree.DeadlockError]] = []
    acquired: list[str] = []

    def worker(i):
        me = threading.current_thread().name
        with locks[i]:
            barrier.wait()
            try:
                with locks[(i + 1) % n]:
                    acquired.append(me)
            except gilfree.DeadlockError as exc:
                errors.append((me, exc))

    names = names or [f"cycle-{i}" for i in range(n)]
    threads = [threading.Thread(target=worker, args=(i,), name=names[i]) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
        assert not t.is_alive(), "a thread of the cycle is still stuck"
    return errors, acquired


def wait_until_in_graph(thread_name, bound=10.0):
    """Block until ``thread_name`` waits for a lock; no event exists for "is blocked"."""
    deadline = time.monotonic() + bound
    pause = threading.Event()
    while not any(f"thread {thread_name!r}" in w[0] for w in GRAPH.waiting().values()):
        assert time.monotonic() < deadline, f"{thread_name} never waited"
        pause.wait(0.001)


def assert_names_cycle(message, thread_names, lock_names):
    for name in thread_names:
        assert f"thread {name!r}" in message
    for name in lock_names:
        assert repr(name) in message
    # one "at file:line" per thread of the cycle, all in this file
    sites = re.findall(rf"at \S*{re.escape(HERE)}:(\d+)", message)
    assert len(sites) == len(thread_names), message


@pytest.mark.timeout(30)
def test_two_thread_cycle_is_refused_once_and_the_other_goes_on():
    """RLocks: only the owner may release, so the cycle is stuck whatever else runs."""
    a, b = RLock("a"), RLock("b")
    errors, acquired = run_cycle([a, b])
    assert len(errors) == 1 and len(acquired) == 1
    refused, exc = errors[0]
    assert isinstance(exc, gilfree.GilfreeError)
    assert f"thread {refused!r}" in str(exc).splitlines()[0]
    assert_names_cycle(str(exc), ["cycle-0", "cycle-1"], ["a", "b"])
    assert "cycle of 2 thread(s)" in str(exc)
    assert "plain Lock" not in str(exc)
    assert not a.locked() and not b.locked()


@pytest.mark.timeout(30)
def test_three_thread_cycle():
    locks = [RLock("x"), RLock("y"), RLock("z")]
    errors, acquired = run_cycle(locks)
    assert len(errors) == 1 and len(acquired) == 2
    message = str(errors[0][1])
    assert "cycle of 3 thread(s)" in message
    assert_names_cycle(message, ["cycle-0", "cycle-1", "cycle-2"], ["x", "y", "z"])
    assert "RLock 'y'" in message
    assert not any(lock.locked() for lock in locks)


@pytest.mark.timeout(60)
def test_long_cycle_of_eight_threads():
    locks = [RLock(f"L{i}") for i in range(8)]
    errors, acquired = run_cycle(locks)
    assert len(errors) == 1 and len(acquired) == 7
    assert "cycle of 8 thread(s)" in str(errors[0][1])


@pytest.mark.timeout(30)
def test_cycle_of_plain_locks_is_not_refused_while_another_thread_could_release():
    """The main thread runs, so it could release ``a``: no DeadlockError. It does."""
    a, b = Lock("a"), Lock("b")
    barrier = threading.Barrier(2, timeout=10)
    results: dict[str, object] = {}

    def worker(mine, theirs, name):
        with mine:
            barrier.wait()
            try:
                results[name] = theirs.acquire()
            except gilfree.DeadlockError as exc:  # a false positive
                results[name] = exc

    threads = [
        threading.Thread(target=worker, args=(a, b, "t0"), name="t0"),
        threading.Thread(target=worker, args=(b, a, "t1"), name="t1"),
    ]
    for t in threads:
        t.start()
    wait_until_in_graph("t0")
    wait_until_in_graph("t1")
    # Both wait and neither was refused. An outside thread ends it, as a plain Lock allows:
    a.release()  # t1 gets a and leaves, releasing b; t0 gets b and leaves, releasing a
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert results == {"t0": True, "t1": True}
    assert not a.locked() and b.locked()  # t0 took b and never released it
    b.release()


def run_script(body: str, timeout: float = 60) -> str:
    """Run ``body`` in a fresh interpreter, where the test knows every thread; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(60)
def test_reacquiring_a_lock_with_no_other_thread_is_a_cycle_of_one():
    out = run_script(
        """
        import gilfree
        lock = gilfree.Lock("solo")
        with lock:
            try:
                lock.acquire()
            except gilfree.DeadlockError as exc:
                print(exc)
            assert lock.locked()  # the refused request changed nothing
        assert not lock.locked()
        """
    )
    assert "would wait forever for Lock 'solo'" in out
    assert "cycle of 1 thread(s)" in out
    assert "no other thread exists to release it" in out
    assert "<string>:6 requests Lock 'solo'" in out  # where the request was made


@pytest.mark.timeout(120)
def test_a_lock_released_by_a_thread_started_a_moment_ago_is_not_refused():
    # CPython's test_foreign_thread: main holds a plain Lock, starts a thread
    # with _thread.start_new_thread that releases it, and acquires it again.
    # The new thread did not always show yet, and the request was refused as a
    # cycle of one: 67 of 300 runs of that test, 0 since the grace.
    probe = subprocess.run(
        [sys.executable, "-c", "import test.test_threading"], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"{sys.executable} has no test package")
    out = run_script(
        """
        import os, unittest
        from test import support
        import gilfree
        support.verbose = 0
        name = "test.test_threading.ThreadTests.test_foreign_thread"
        failed = 0
        with gilfree.deadlock_detection():
            for _ in range(150):
                suite = unittest.defaultTestLoader.loadTestsFromName(name)
                result = unittest.TextTestRunner(stream=open(os.devnull, "w")).run(suite)
                failed += len(result.errors) + len(result.failures)
        print("failed", failed)
        """
    )
    assert "failed 0" in out, out


@pytest.mark.timeout(60)
def test_plain_lock_cycle_is_refused_once_every_thread_is_blocked():
    """Main holds b and wants a; a worker holds a and wants b; no third thread exists."""
    out = run_script(
        """
        import threading, gilfree
        a, b = gilfree.Lock("a"), gilfree.Lock("b")
        barrier = threading.Barrier(2)
        outcome = {}

        def take(mine, theirs, name):
            with mine:
                barrier.wait()
                try:
                    with theirs:
                        outcome[name] = "acquired"
                except gilfree.DeadlockError as exc:
                    outcome[name] = str(exc)

        t = threading.Thread(target=take, args=(a, b, "worker"), name="worker")
        t.start()
        take(b, a, "main")
        t.join()
        refused = [msg for msg in outcome.values() if msg != "acquired"]
        assert len(refused) == 1, outcome
        print(refused[0])
        """
    )
    assert "cycle of 2 thread(s)" in out
    assert "thread 'worker'" in out and "thread 'MainThread'" in out
    assert "Lock 'a'" in out and "Lock 'b'" in out
    assert "the 1 other thread(s) of this process" in out


@pytest.mark.timeout(60)
def test_a_thread_joining_a_deadlock_is_refused_with_the_cycle_it_waits_on():
    """Workers deadlock on plain Locks while main still runs (not refused: main could
    release); main's own unbounded wait then leaves no thread able to, and is refused."""
    out = run_script(
        """
        import os, threading, time, gilfree
        a, b, gate = gilfree.Lock("a"), gilfree.Lock("b"), gilfree.RLock("gate")
        gate_held, barrier = threading.Event(), threading.Barrier(2)

        def take(mine, theirs, hold_gate):
            with mine:
                if hold_gate:
                    gate.acquire()
                    gate_held.set()
                barrier.wait()
                theirs.acquire()

        for i, pair in enumerate([(a, b), (b, a)]):
            threading.Thread(target=take, args=(*pair, i == 0), name=f"w{i}", daemon=True).start()
        gate_held.wait()
        from gilfree.deadlock._graph import GRAPH
        while len(GRAPH.waiting()) < 2:
            time.sleep(0.01)
        try:
            gate.acquire()
        except gilfree.DeadlockError as exc:
            print(exc)
        os._exit(0)  # the workers stay blocked: nobody was left to refuse
        """
    )
    assert "would wait forever for RLock 'gate'" in out
    assert "waits on a wait-for cycle of 2 thread(s) that never ends" in out
    assert "thread 'w0'" in out and "thread 'w1'" in out
    assert "Lock 'a'" in out and "Lock 'b'" in out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("patched", [False, True])
def test_holder_reacquires_and_another_thread_releases(patched):
    """The lock-as-signal pattern: the holder waits until another thread releases."""
    if patched:
        with deadlock_detection():
            lock = threading.Lock()
    else:
        lock = Lock("signal")
    lock.acquire()
    results: list[object] = []

    def waiter():
        try:
            results.append(lock.acquire())  # held by main: waits for main's release
            results.append(lock.acquire(timeout=0.01))  # now held by itself: times out
            results.append(lock.acquire())  # waits again: main releases once more
        except gilfree.DeadlockError as exc:
            results.append(exc)

    t = threading.Thread(target=waiter, name="signalled")
    t.start()
    wait_until_in_graph("signalled")
    lock.release()
    deadline = time.monotonic() + 10
    while len(results) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    wait_until_in_graph("signalled")
    lock.release()  # a foreign release: the waiter's self-wait ends
    t.join(10)
    assert results == [True, False, True]
    lock.release()


def test_rlock_reentry_is_not_a_wait():
    lock = RLock("r")
    with lock:
        with lock:
            assert lock.acquire(timeout=1)
            lock.release()
            assert lock._is_owned()
        assert lock.locked()
    assert not lock.locked() and not lock._is_owned()
    with pytest.raises(RuntimeError):
        lock.release()


@pytest.mark.timeout(30)
def test_rlock_release_by_a_thread_that_does_not_own_it_fails():
    lock = RLock()
    lock.acquire()
    failures = []

    def other():
        try:
            lock.release()
        except RuntimeError as exc:
            failures.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert len(failures) == 1 and lock.locked()
    lock.release()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cls", [Lock, RLock])
def test_timeout_and_non_blocking_keep_their_meaning(cls):
    lock = cls("held")
    held, done = threading.Event(), threading.Event()

    def holder():
        with lock:
            held.set()
            done.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        assert lock.acquire(False) is False
        assert lock.acquire(blocking=False) is False
        assert lock.acquire(timeout=0) is False
        assert lock.acquire(True, 0.05) is False
        with pytest.raises(ValueError):
            lock.acquire(False, 1)
        with pytest.raises(ValueError):
            lock.acquire(True, -5)
        assert GRAPH.waiting() == {}
    finally:
        done.set()
        t.join(10)
    assert lock.acquire(timeout=5) is True
    lock.release()


# -- timed waits are never deadlocks (issue #16) ----------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("patched", [False, True])
def test_timed_self_acquire_released_by_a_timer_returns_true(patched):
    if patched:
        with deadlock_detection():
            done = threading.Lock()
            done.acquire()
            timer = threading.Timer(0.2, done.release)
    else:
        done = Lock("done")
        done.acquire()
        timer = threading.Timer(0.2, done.release)
    timer.start()
    assert done.acquire(timeout=10) is True
    timer.join(10)
    done.release()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cls", [Lock, RLock])
def test_timed_self_acquire_times_out_and_leaves_the_lock_as_it_was(cls):
    lock = cls("state") if cls is Lock else threading.Lock()  # RLock re-entry never waits
    if cls is RLock:
        with deadlock_detection():
            lock = threading.Lock()
    lock.acquire()
    assert lock.acquire(timeout=0.01) is False
    lock.release()
    assert not lock.locked()
    assert lock.acquire(blocking=False)
    lock.release()


def _timed_against_unbounded(kind, timed_first):
    """Thread 'timed' holds A and wants B for 0.3 s; thread 'forever' holds B and wants A."""
    if kind == "patched-Lock":
        with deadlock_detection():
            a, b = threading.Lock(), threading.Lock()
    elif kind == "patched-RLock":
        with deadlock_detection():
            a, b = threading.RLock(), threading.RLock()
    else:
        cls = Lock if kind == "Lock" else RLock
        a, b = cls("A"), cls("B")
    both_hold = threading.Barrier(2, timeout=10)
    results: dict[str, object] = {}

    def timed():
        with a:
            both_hold.wait()
            if not timed_first:
                wait_until_in_graph("forever")
            try:
                results["timed"] = b.acquire(timeout=0.3)
            except gilfree.DeadlockError as exc:
                results["timed"] = exc

    def forever():
        with b:
            both_hold.wait()
            if timed_first:
                wait_until_in_graph("timed")
            try:
                results["forever"] = a.acquire()
                a.release()
            except gilfree.DeadlockError as exc:
                results["forever"] = exc

    threads = [
        threading.Thread(target=timed, name="timed"),
        threading.Thread(target=forever, name="forever"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    return results


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timed_first", [True, False], ids=["timed-waits-first", "timed-asks-last"])
@pytest.mark.parametrize("kind", ["Lock", "RLock", "patched-Lock", "patched-RLock"])
def test_a_timed_wait_is_never_part_of_a_reported_cycle(kind, timed_first):
    """Nobody gets DeadlockError: the timed wait times out and frees A for the other."""
    assert _timed_against_unbounded(kind, timed_first) == {"timed": False, "forever": True}


@pytest.mark.timeout(30)
def test_timed_waits_are_in_the_graph_but_never_refused():
    lock = RLock("held")
    held, done = threading.Event(), threading.Event()

    def holder():
        with lock:
            held.set()
            done.wait(10)

    t = threading.Thread(target=holder, name="holder")
    t.start()
    assert held.wait(10)
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=10)), name="tw")
    waiter.start()
    wait_until_in_graph("tw")
    assert [w[1] for w in GRAPH.waiting().values()] == ["held"]
    done.set()
    waiter.join(10)
    t.join(10)
    assert got == [True]
    lock._release_as(waiter.ident)  # waiter ended holding it; RLock ownership is strict
    assert not lock.locked()


@pytest.mark.parametrize("cls", [Lock, RLock])
def test_huge_timeouts_raise_overflow_error_as_threading_does(cls):
    lock = cls("big")
    with pytest.raises(OverflowError):
        lock.acquire(timeout=1e100)
    with pytest.raises(OverflowError):
        lock.acquire(timeout=threading.TIMEOUT_MAX + 1)
    assert lock.acquire(timeout=threading.TIMEOUT_MAX)
    lock.release()


def test_pickle_in_the_same_process_is_the_same_lock():
    lock = RLock("home")
    try:
        assert pickle.loads(pickle.dumps(lock)) is lock
    finally:
        shutdown()


def test_repr_has_the_stdlib_form_and_names_the_lock():
    lock = Lock()
    assert f"created at {__file__}:" in lock.name
    form = r"<unlocked gilfree\.Lock object name='Lock-\d+ .*' owner=None at 0x"
    assert re.match(form, repr(lock))
    with lock:
        assert re.match(r"<locked .* object (.*)?at .*>", repr(lock))
        assert f"owner={threading.get_ident()}" in repr(lock)
    rlock = RLock("r")
    with rlock, rlock:
        assert f"owner={threading.get_ident()} count=2 at" in repr(rlock)
    assert repr(rlock).startswith("<unlocked gilfree.RLock object name='r' ")
    with deadlock_detection():
        cond = threading.Condition()
    assert re.match(r"<Condition\(<unlocked .* object (.*)?at .*>, 0\)>", repr(cond))


# -- the patch ------------------------------------------------------------------


def test_patch_instruments_locks_made_inside_and_restores():
    original = threading.Lock, threading.RLock
    with deadlock_detection():
        assert isinstance(threading.Lock(), Lock)
        assert isinstance(threading.RLock(), RLock)
        with deadlock_detection():  # nested: still patched after the inner exit
            pass
        assert isinstance(threading.Lock(), Lock)
    assert (threading.Lock, threading.RLock) == original
    assert not isinstance(threading.Lock(), Lock)


def test_patched_locks_take_threading_s_arguments_and_names():
    with deadlock_detection():
        for args, kwargs in [((1,), {}), ((), {"a": 1}), ((1, 2), {"a": 1})]:
            with pytest.raises(TypeError, match=r"threading.Lock\(\) takes no arguments"):
                threading.Lock(*args, **kwargs)
        with pytest.raises(TypeError):

            class MyLock(threading.Lock):  # type: ignore[misc]
                pass

        with pytest.warns(DeprecationWarning, match="Passing arguments to RLock"):
            threading.RLock(1)
        # where check__all__ (CPython's test__all__) looks for the names of threading.__all__
        assert threading.Lock.__module__ == threading.RLock.__module__ == "threading"
        assert threading.Lock.__name__ == "Lock" and threading.RLock.__name__ == "RLock"


def test_patch_is_restored_after_an_exception():
    original = threading.Lock, threading.RLock
    with pytest.raises(KeyError), deadlock_detection():
        assert issubclass(threading.RLock, RLock)
        raise KeyError("boom")
    assert (threading.Lock, threading.RLock) == original


@pytest.mark.timeout(30)
def test_patched_threading_rlocks_detect_a_cycle():
    with deadlock_detection():
        a, b = threading.RLock(), threading.RLock()
    errors, acquired = run_cycle([a, b])
    assert len(errors) == 1 and len(acquired) == 1
    assert f"created at {__file__}:" in str(errors[0][1])


@pytest.mark.timeout(30)
def test_condition_semaphore_event_under_patch():
    with deadlock_detection():
        cond = threading.Condition()
        sem = threading.BoundedSemaphore(2)
        event = threading.Event()
    assert isinstance(cond._lock, RLock)
    items: list[int] = []
    consumed: list[int] = []

    def consumer():
        for _ in range(50):
            with cond:
                assert cond.wait_for(lambda: items, timeout=10)
                consumed.append(items.pop(0))
        event.set()

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(50):
        with sem, cond:
            with cond:  # RLock re-entry inside a Condition
                items.append(i)
            cond.notify()
    assert event.wait(10)
    t.join(10)
    assert consumed == list(range(50))
    assert sem.acquire() and sem.acquire() and not sem.acquire(blocking=False)
    sem.release()
    sem.release()
    with pytest.raises(ValueError):
        sem.release()


@pytest.mark.timeout(30)
def test_queue_under_patch():
    with deadlock_detection():
        q: queue.Queue[int | None] = queue.Queue(maxsize=4)
    assert isinstance(q.mutex, Lock)
    total = []

    def consume():
        s = 0
        while (item := q.get(timeout=10)) is not None:
            s += item
            q.task_done()
        q.task_done()
        total.append(s)

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(300):
        q.put(i, timeout=10)
    for _ in threads:
        q.put(None, timeout=10)
    q.join()
    for t in threads:
        t.join(10)
    assert sum(total) == sum(range(300))
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


# -- stress: no false positives ---------------------------------------------------


@pytest.mark.timeout(60)
def test_stress_consistent_order_never_raises():
    """8 threads x 2,000 nested acquisitions of random subsets in one global order."""
    locks = [Lock(f"s{i}") if i % 2 else RLock(f"s{i}") for i in range(6)]
    counters = [0] * len(locks)
    barrier = threading.Barrier(8, timeout=10)
    failures: list[BaseException] = []

    def worker(seed):
        rng = random.Random(seed)
        barrier.wait()
        try:
            for _ in range(2_000):
                chosen = sorted(rng.sample(range(len(locks)), rng.randint(1, 3)))
                for i in chosen:
                    locks[i].acquire()
                for i in chosen:
                    counters[i] += 1
                for i in reversed(chosen):
                    locks[i].release()
        except BaseException as exc:  # a DeadlockError here is a false positive
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert failures == []
    expected = [0] * len(locks)
    for seed in range(8):
        rng = random.Random(seed)
        for _ in range(2_000):
            for i in rng.sample(range(len(locks)), rng.randint(1, 3)):
                expected[i] += 1
    assert counters == expected  # every increment happened under its lock
    assert not any(lock.locked() for lock in locks)


@pytest.mark.timeout(90)
def test_stress_inverted_orders_with_timed_waits_never_raise():
    """Unbounded waits only in one global order, timed waits against it: every
    possible cycle has a timed wait in it, so nothing may ever be refused."""
    locks = [Lock(f"t{i}") if i % 2 else RLock(f"t{i}") for i in range(5)]
    counters = [0] * len(locks)
    barrier = threading.Barrier(6, timeout=10)
    failures: list[BaseException] = []
    done, timeouts = [0] * 6, [0] * 6

    def worker(seed):
        rng = random.Random(seed)
        barrier.wait()
        try:
            for _ in range(500):
                chosen = rng.sample(range(len(locks)), rng.randint(2, 3))
                taken = []
                for i in chosen:
                    # a wait against the global order (for a lower lock) is timed
                    timed = any(j > i for j in taken)
                    if locks[i].acquire(timeout=0.002 if timed else -1):
                        taken.append(i)
                        time.sleep(0)  # let the others run while it holds: real waits
                    else:
                        timeouts[seed] += 1
                        break
                if len(taken) == len(chosen):
                    for i in taken:
                        counters[i] += 1
                    done[seed] += 1
                for i in reversed(taken):
                    locks[i].release()
        except BaseException as exc:  # a DeadlockError here is a false positive
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # preempt lock holders often: many real waits
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(80)
            assert not t.is_alive()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
    assert sum(counters) > 0 and sum(done) > 0
    assert sum(timeouts) > 0, "no wait against the order ever timed out: the race never ran"
    assert not any(lock.locked() for lock in locks)


def test_public_names():
    import gilfree.deadlock as dl

    assert dl.__all__ == ["Lock", "RLock", "deadlock_detection"]
    assert gilfree.Lock is Lock and gilfree.RLock is RLock
    assert gilfree.deadlock_detection is deadlock_detection
    assert issubclass(gilfree.DeadlockError, gilfree.GilfreeError)


# -- unbounded joins under the patch ------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("join_first", [False, True], ids=["join-closes", "request-closes"])
def test_join_while_holding_the_lock_the_thread_needs(join_first):
    """Main holds an RLock and joins a thread that wants it: whichever wait comes
    second closes the cycle and is refused; the join then ends."""
    lock = RLock("needed")
    go, outcome = threading.Event(), []

    def worker():
        go.wait(10)
        if join_first:
            wait_until_in_graph("MainThread")
        try:
            with lock:
                outcome.append("acquired")
        except gilfree.DeadlockError as exc:
            outcome.append(exc)

    t = threading.Thread(target=worker, name="needs-it")
    with deadlock_detection():
        t.start()
        with lock:
            go.set()
            if join_first:
                t.join()  # the worker's request is refused, it ends, the join returns
                assert isinstance(outcome[0], gilfree.DeadlockError)
                message = str(outcome[0])
                assert "thread 'needs-it'" in message.splitlines()[0]
                assert "joins thread 'needs-it'" in message
            else:
                wait_until_in_graph("needs-it")
                with pytest.raises(gilfree.DeadlockError) as info:
                    t.join()
                message = str(info.value)
                assert "would wait forever for the end of thread 'needs-it'" in message
                assert "asks to join thread 'needs-it'" in message
                assert "RLock 'needed', held by thread 'MainThread'" in message
        t.join(10)
    assert not t.is_alive()
    assert "cycle of 2 thread(s)" in message
    assert outcome == [outcome[0]] and (join_first or outcome == ["acquired"])


def test_join_keeps_threading_s_errors_and_timeouts():
    with deadlock_detection():
        t = threading.Thread(target=lambda: None)
        with pytest.raises(RuntimeError, match="before it is started"):
            t.join()
        with pytest.raises(RuntimeError, match="current thread"):
            threading.current_thread().join()
        t.start()
        t.join()
        t.join()  # a finished thread joins again at once
        assert threading.Thread.join.__name__ == "join"
    assert GRAPH.waiting() == {}


@pytest.mark.timeout(60)
def test_plain_lock_cycle_of_workers_is_refused_while_main_joins():
    """The common script: two workers deadlock on threading.Lock while main joins them."""
    out = run_script(
        """
        import threading, time, gilfree
        from gilfree.deadlock._graph import GRAPH

        with gilfree.deadlock_detection():
            a, b = threading.Lock(), threading.Lock()
            outcome = {}

            def work(mine, theirs, name):
                with mine:
                    while not any("MainThread" in w[0] for w in GRAPH.waiting().values()):
                        time.sleep(0.005)  # until main is in join()
                    try:
                        with theirs:
                            outcome[name] = "acquired"
                    except gilfree.DeadlockError as exc:
                        outcome[name] = str(exc)

            workers = [threading.Thread(target=work, args=(a, b, "w0"), name="w0"),
                       threading.Thread(target=work, args=(b, a, "w1"), name="w1")]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
        refused = [msg for msg in outcome.values() if msg != "acquired"]
        assert len(refused) == 1, outcome
        print(refused[0])
        """
    )
    assert "cycle of 2 thread(s)" in out
    assert "thread 'w0'" in out and "thread 'w1'" in out
    assert "the 2 other thread(s) of this process" in out

"""Deadlock detection (issue #6): gilfree.Lock/RLock, the wait-for graph, the patch.

Races are forced with barriers and events: the threads of a cycle each take
their first lock, meet at a barrier, then ask for the next one. Whatever the
interleaving, exactly one request closes the cycle and must be refused.
Cross-process cases live in test_deadlock_process.py.
"""

from __future__ import annotations

import os
import pickle
import queue
import random
import re
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
    a, b = Lock("a"), Lock("b")
    errors, acquired = run_cycle([a, b])
    assert len(errors) == 1 and len(acquired) == 1
    refused, exc = errors[0]
    assert isinstance(exc, gilfree.GilfreeError)
    assert f"thread {refused!r}" in str(exc).splitlines()[0]
    assert_names_cycle(str(exc), ["cycle-0", "cycle-1"], ["a", "b"])
    assert "cycle of 2 thread(s)" in str(exc)
    assert not a.locked() and not b.locked()


@pytest.mark.timeout(30)
def test_three_thread_cycle():
    locks = [Lock("x"), RLock("y"), Lock("z")]
    errors, acquired = run_cycle(locks)
    assert len(errors) == 1 and len(acquired) == 2
    message = str(errors[0][1])
    assert "cycle of 3 thread(s)" in message
    assert_names_cycle(message, ["cycle-0", "cycle-1", "cycle-2"], ["x", "y", "z"])
    assert "RLock 'y'" in message
    assert not any(lock.locked() for lock in locks)


@pytest.mark.timeout(60)
def test_long_cycle_of_eight_threads():
    locks = [Lock(f"L{i}") for i in range(8)]
    errors, acquired = run_cycle(locks)
    assert len(errors) == 1 and len(acquired) == 7
    assert "cycle of 8 thread(s)" in str(errors[0][1])


def test_reacquiring_a_lock_you_hold_is_a_cycle_of_one():
    lock = Lock("solo")
    with lock:
        with pytest.raises(gilfree.DeadlockError, match="cycle of 1 thread") as info:
            lock.acquire()
        assert lock.locked()  # the refused request changed nothing
    assert not lock.locked()
    assert f"{HERE}:" in str(info.value)


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


@pytest.mark.timeout(30)
def test_timed_wait_is_an_edge_while_it_lasts():
    """A thread in a timed wait is part of the graph: closing the cycle is refused."""
    a, b = Lock("a"), Lock("b")
    holding, waiting_result = threading.Event(), []
    t_ready = threading.Event()

    def first():
        with a:
            holding.set()
            t_ready.wait(10)
            # b is held by the main thread: this timed wait is an edge first -> b
            waiting_result.append(b.acquire(timeout=10))
            if waiting_result[-1]:
                b.release()

    t = threading.Thread(target=first, name="timed")
    t.start()
    with b:
        assert holding.wait(10)
        t_ready.set()
        wait_until_in_graph("timed")
        with pytest.raises(gilfree.DeadlockError, match="'timed'"):
            a.acquire()
    t.join(10)
    assert waiting_result == [True]


def test_pickle_in_the_same_process_is_the_same_lock():
    lock = RLock("home")
    try:
        assert pickle.loads(pickle.dumps(lock)) is lock
    finally:
        shutdown()


def test_repr_names_the_lock_and_creation_site():
    lock = Lock()
    assert f"created at {__file__}:" in lock.name
    assert "unlocked" in repr(lock)
    with lock:
        assert "locked by" in repr(lock)


# -- the patch ------------------------------------------------------------------


def test_patch_instruments_locks_made_inside_and_restores():
    original = threading.Lock, threading.RLock
    with deadlock_detection():
        assert isinstance(threading.Lock(), Lock)
        assert isinstance(threading.RLock(), RLock)
        with deadlock_detection():  # nested: still patched after the inner exit
            pass
        assert threading.Lock is Lock
    assert (threading.Lock, threading.RLock) == original
    assert not isinstance(threading.Lock(), Lock)


def test_patch_is_restored_after_an_exception():
    original = threading.Lock, threading.RLock
    with pytest.raises(KeyError), deadlock_detection():
        assert threading.RLock is RLock
        raise KeyError("boom")
    assert (threading.Lock, threading.RLock) == original


@pytest.mark.timeout(30)
def test_patched_plain_threading_locks_detect_a_cycle():
    with deadlock_detection():
        a, b = threading.Lock(), threading.Lock()
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


def test_public_names():
    import gilfree.deadlock as dl

    assert dl.__all__ == ["Lock", "RLock", "deadlock_detection"]
    assert gilfree.Lock is Lock and gilfree.RLock is RLock
    assert gilfree.deadlock_detection is deadlock_detection
    assert issubclass(gilfree.DeadlockError, gilfree.GilfreeError)

"""The deadlock detector under load, with no GIL to serialise its graph (issue 15).

Runs on every interpreter; it matters on a free-threaded build (3.13t,
``sys._is_gil_enabled()`` False), where the threads below really update the
wait-for graph at once (``make test-pythons`` runs it there). Everything goes
through ``deadlock_detection()``: the locks are the ``threading.Lock`` and
``threading.RLock`` the patch hands out, as user code would make them.

Two claims, checked together so that each is tested while the other loads the
graph: 8 threads x 2,000 nested acquisitions in one global order are never
refused (no false report), while forced cycles of RLocks, built with barriers
round after round, are each refused exactly once (every real cycle found).
Cycles use RLocks: a cycle through a plain Lock is reported only once no other
thread can run, which the busy workers here never allow (test_deadlock.py runs
those cases in a fresh interpreter).
"""

from __future__ import annotations

import random
import sys
import threading
import time

import pytest

import gilfree
from gilfree.deadlock import Lock, deadlock_detection
from gilfree.deadlock._graph import GRAPH

WORKERS = 8
ACQUISITIONS = 2_000
ROUNDS = 40  # forced cycles; sizes 2..4 threads, in turn
GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
WHERE = f"Python {sys.version.split()[0]}, GIL {'on' if GIL else 'off'}"


@pytest.fixture(autouse=True)
def _no_waiters_left():
    yield
    assert GRAPH.waiting() == {}, "a wait stayed in the graph after its thread finished"


def _plan(seed: int, n_locks: int) -> list[list[int]]:
    """The lock subsets worker ``seed`` takes, each in the global (ascending) order."""
    rng = random.Random(seed)
    return [sorted(rng.sample(range(n_locks), rng.randint(1, 3))) for _ in range(ACQUISITIONS)]


def _ordered_worker(locks, counters, plan, start, failures):
    start.wait()
    try:
        for chosen in plan:
            for i in chosen:
                locks[i].acquire()
                time.sleep(0)  # yield while holding: the others really wait for it
            for i in chosen:
                counters[i] += 1  # guarded by locks[i]: a lost update shows a broken lock
            for i in reversed(chosen):
                locks[i].release()
    except BaseException as exc:  # a DeadlockError here is a false report
        failures.append(exc)


def _cycle_round(size: int, round_no: int) -> tuple[list[gilfree.DeadlockError], int]:
    """``size`` threads each hold one RLock, meet, then ask for the next one's."""
    locks = [threading.RLock() for _ in range(size)]
    met = threading.Barrier(size, timeout=30)
    refused: list[gilfree.DeadlockError] = []
    acquired = [0]
    guard = threading.Lock()

    def member(i: int) -> None:
        with locks[i]:
            met.wait()
            try:
                with locks[(i + 1) % size], guard:
                    acquired[0] += 1
            except gilfree.DeadlockError as exc:
                with guard:
                    refused.append(exc)

    threads = [
        threading.Thread(target=member, args=(i,), name=f"cycle{round_no}-{i}") for i in range(size)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{WHERE}: round {round_no}: a thread of the cycle is stuck"
    return refused, acquired[0]


@pytest.mark.timeout(300)
def test_eight_threads_never_falsely_refused_while_every_forced_cycle_is_found() -> None:
    with deadlock_detection():
        locks = [threading.Lock() if i % 2 else threading.RLock() for i in range(6)]
        assert all(isinstance(lock, (Lock, gilfree.RLock)) for lock in locks)
        counters = [0] * len(locks)
        plans = [_plan(seed, len(locks)) for seed in range(WORKERS)]
        # The workers and the cycle rounds start together: both load the graph.
        start = threading.Barrier(WORKERS + 1, timeout=30)
        failures: list[BaseException] = []
        workers = [
            threading.Thread(
                target=_ordered_worker,
                args=(locks, counters, plans[w], start, failures),
                name=f"ordered-{w}",
            )
            for w in range(WORKERS)
        ]
        for t in workers:
            t.start()
        start.wait()
        outcomes = []
        for r in range(ROUNDS):
            size = 2 + r % 3
            refused, acquired = _cycle_round(size, r)
            outcomes.append((r, size, len(refused), acquired, refused))
        for t in workers:
            t.join(240)
            assert not t.is_alive(), f"{WHERE}: an ordered worker is stuck"

    assert failures == [], f"{WHERE}: false reports: {failures[:3]}"
    expected = [0] * len(locks)
    for plan in plans:
        for chosen in plan:
            for i in chosen:
                expected[i] += 1
    assert counters == expected, f"{WHERE}: an update was lost under a lock"
    missed = [(r, size, n) for r, size, n, _, _ in outcomes if n != 1]
    assert not missed, f"{WHERE}: rounds (round, size, refusals) not refused exactly once: {missed}"
    for r, size, _, acquired, refused in outcomes:
        assert acquired == size - 1, f"{WHERE}: round {r}: {acquired} of {size} went on"
        assert f"cycle of {size} thread(s)" in str(refused[0])
    assert not any(lock.locked() for lock in locks)


@pytest.mark.timeout(180)
def test_a_cycle_of_eight_threads_is_found_in_every_round() -> None:
    """The longest cycle, 8 threads released by one barrier, many times over:
    whichever request closes it, exactly one is refused and 7 go on."""
    with deadlock_detection():
        for r in range(25):
            refused, acquired = _cycle_round(WORKERS, r)
            assert len(refused) == 1 and acquired == WORKERS - 1, (
                f"{WHERE}: round {r}: {len(refused)} refused, {acquired} went on"
            )
            assert f"cycle of {WORKERS} thread(s)" in str(refused[0])

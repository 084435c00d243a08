"""The thread backend's bookkeeping under 64 threads, with no GIL to serialise it.

These run on every interpreter; they matter on a free-threaded build (3.13t,
``sys._is_gil_enabled()`` False), where 64 threads really run at once and any
bookkeeping that leaned on the GIL (a plain ``+=`` on a shared counter, a
check-then-act on a dict) loses or doubles results. ``make test-pythons`` runs
them there. Concurrency is forced with a barrier: the first 64 tasks meet
before any returns, so all 64 threads are proven to be running together.
"""

from __future__ import annotations

import collections
import sys
import threading

import pytest

import gilfree
from gilfree._engine import Run
from gilfree._options import Options
from gilfree.backends import StreamJob
from gilfree.backends._thread import ThreadBackend

THREADS = 64
N = 20_000
GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
WHERE = f"Python {sys.version.split()[0]}, GIL {'on' if GIL else 'off'}"


class Calls:
    """How many times each item was called, and that 64 threads met."""

    def __init__(self, parties: int = THREADS) -> None:
        self.lock = threading.Lock()
        self.count: collections.Counter[int] = collections.Counter()
        self.threads: set[int] = set()
        self.barrier = threading.Barrier(parties)

    def __call__(self, x: int) -> int:
        if x < self.barrier.parties:
            # Raises BrokenBarrierError (the task fails, the test says why)
            # when fewer than 64 threads run at once.
            self.barrier.wait(timeout=60)
        with self.lock:
            self.count[x] += 1
            self.threads.add(threading.get_ident())
        return x * x

    def assert_each_once(self, n: int) -> None:
        twice = sorted(k for k, c in self.count.items() if c > 1)
        never = sorted(set(range(n)) - set(self.count))
        assert not twice and not never, f"{WHERE}: called twice {twice[:10]}, never {never[:10]}"
        assert len(self.threads) >= THREADS, f"{WHERE}: only {len(self.threads)} threads ran"


@pytest.mark.timeout(180)
def test_map_on_64_threads_loses_and_duplicates_nothing() -> None:
    calls = Calls()
    out = gilfree.map(calls, range(N), backend="thread", workers=THREADS, chunksize=1)
    assert out == [x * x for x in range(N)], WHERE
    calls.assert_each_once(N)


@pytest.mark.timeout(180)
def test_unordered_imap_on_64_threads_yields_each_index_once() -> None:
    calls = Calls()
    seen = collections.Counter(
        gilfree.imap(calls, range(N), backend="thread", workers=THREADS, ordered=False)
    )
    assert seen == collections.Counter(x * x for x in range(N)), WHERE
    calls.assert_each_once(N)


def _fails_on_multiples_of_7(attempts: collections.Counter[int], lock: threading.Lock):
    def fn(x: int) -> int:
        with lock:
            attempts[x] += 1
        if x % 7 == 0:
            raise ValueError(f"bad {x}")
        return x

    return fn


@pytest.mark.timeout(180)
def test_failures_and_retries_on_64_threads_land_in_their_own_slots() -> None:
    attempts: collections.Counter[int] = collections.Counter()
    fn = _fails_on_multiples_of_7(attempts, threading.Lock())
    n = 5_000
    out = gilfree.map(
        fn, range(n), backend="thread", workers=THREADS, chunksize=1, retries=1, errors="return"
    )
    for x, value in enumerate(out):
        if x % 7 == 0:
            assert isinstance(value, ValueError) and str(value) == f"bad {x}", (WHERE, x, value)
        else:
            assert value == x, (WHERE, x, value)
    # A failing task runs twice (one retry), the others once: no retry lost or doubled.
    assert attempts == collections.Counter({x: 2 if x % 7 == 0 else 1 for x in range(n)}), WHERE


class _Progress:
    def __init__(self) -> None:
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n  # only ever called from the engine's (the test's) thread


def _run_engine(calls: Calls) -> tuple[Run, StreamJob, _Progress, list]:
    backend = ThreadBackend(Options(backend="thread", workers=THREADS, chunksize=1))
    job = StreamJob(calls, backend.options)
    run = Run(backend, job, iter(range(N)), ordered=True, total=N)
    run.progress = progress = _Progress()
    try:
        run.start()
        events = list(run.events())
    finally:
        backend.shutdown(wait=True)
    return run, job, progress, events


@pytest.mark.timeout(180)
def test_engine_window_and_progress_under_64_threads() -> None:
    """The engine's in-flight count returns to zero and the progress bar is
    advanced once per item while 64 threads deliver."""
    calls = Calls()
    run, _, progress, events = _run_engine(calls)
    values = [v for ok, _, vs in events if ok for v in vs]
    assert all(ok for ok, _, _ in events), WHERE
    assert values == [x * x for x in range(N)], WHERE
    assert run.finished and run._outstanding == 0, WHERE
    assert progress.done == N, WHERE
    calls.assert_each_once(N)


@pytest.mark.timeout(180)
def test_job_task_counter_counts_every_task_under_64_threads() -> None:
    """``Job.record`` (the task count and time that size the next chunks) is
    called by every worker thread; with no GIL a plain ``+=`` loses updates."""
    _, job, _, _ = _run_engine(Calls())
    assert job.stats_n == N, f"{WHERE}: the job counted {job.stats_n} tasks of {N}"


@pytest.mark.timeout(180)
def test_executor_submits_from_64_threads_at_once() -> None:
    per_thread = 200
    start = threading.Barrier(THREADS)
    futures: list[list] = [[] for _ in range(THREADS)]

    with gilfree.Executor(backend="thread", workers=THREADS) as ex:

        def submitter(k: int) -> None:
            start.wait(timeout=60)
            futures[k] = [ex.submit(pow, k * per_thread + j, 2) for j in range(per_thread)]

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        results = [f.result(timeout=60) for fs in futures for f in fs]
    assert results == [x * x for x in range(THREADS * per_thread)], WHERE

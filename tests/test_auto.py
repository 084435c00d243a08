"""backend="auto": the probe's calls count as real calls, and the plan is used."""

from __future__ import annotations

import os
import threading
import time

import pytest

import gilfree

pytestmark = pytest.mark.timeout(120)


class Recorder:
    """Appends each input to a file, so calls in any process are counted."""

    def __init__(self, path, work):
        self.path, self.work = path, work

    def __call__(self, x):
        with open(self.path, "a") as f:
            f.write(f"{x}\n")
        if self.work == "sleep":
            time.sleep(0.01)
        elif self.work == "cpu":
            sum(i * i for i in range(20_000))
        elif self.work == "fail" and x == 3:
            raise KeyError(x)
        return x * 2


@pytest.mark.parametrize("n", [40, 300], ids=["probe-leading", "probe-spread"])
@pytest.mark.parametrize("work", ["tiny", "sleep", "cpu"])
def test_auto_map_calls_each_item_exactly_once(tmp_path, work, n):
    # Over 64 items a list is probed at indices spread over all of it.
    path = tmp_path / "calls"
    out = gilfree.map(Recorder(str(path), work), list(range(n)), backend="auto")
    assert out == [x * 2 for x in range(n)]
    calls = sorted(int(line) for line in path.read_text().split())
    assert calls == list(range(n)), "an item was run twice or not at all"


def test_auto_imap_spread_probe_keeps_order_and_runs_each_once(tmp_path):
    path = tmp_path / "calls"
    got = list(gilfree.imap(Recorder(str(path), "tiny"), list(range(500)), errors="return"))
    assert got == [x * 2 for x in range(500)]
    assert sorted(int(v) for v in path.read_text().split()) == list(range(500))


def test_auto_keeps_a_failed_probe_result_in_its_slot(tmp_path):
    out = gilfree.map(Recorder(str(tmp_path / "c"), "fail"), range(6), errors="return")
    assert isinstance(out[3], KeyError) and out[5] == 10


def test_auto_retries_a_sample_that_failed_in_the_probe(tmp_path):
    marker = tmp_path / "failed-once"

    def flaky(x):
        if x == 1 and not marker.exists():
            marker.touch()
            raise ConnectionError("first attempt")
        return x

    assert gilfree.map(flaky, range(5), retries=1) == list(range(5))


def test_auto_imap_is_lazy_and_ordered():
    it = gilfree.imap(abs, (-i for i in range(10**7)))
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()


def test_executor_plans_once_per_function(monkeypatch):
    from gilfree import _auto

    calls = []
    real = _auto._plan

    def counting(fn, samples, **kw):
        calls.append(fn)
        return real(fn, samples, **kw)

    monkeypatch.setattr(_auto, "_plan", counting)
    with gilfree.Executor() as ex:
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
        assert [ex.submit(abs, -i).result() for i in range(5)] == list(range(5))
        assert list(ex.map(abs, [-4])) == [4]
        assert ex.submit(os.getpid).result() > 0
        for i in range(5):  # a new lambda each time, one code object
            assert ex.submit(lambda x: x + 1, i).result() == i + 1
    assert len(calls) == 3  # abs once, os.getpid once, the lambda once


class BigArgRecorder:
    """Records the index of each call's argument ``(index, rows)``, and which
    process ran it; ``rows`` is a large object graph (~1.5 MB pickled)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, arg):
        index, rows = arg
        with open(self.path, "a") as f:
            f.write(f"{index} {os.getpid()}\n")
        return index + len(rows)


def walk_rows(arg):
    index, rows = arg
    total = 0
    for a, b, _ in rows:
        total += a * b
    return total + index


ROWS = [(i, i % 7, "x") for i in range(150_000)]


@pytest.fixture
def threaded():
    """Another thread in the caller: the probe cannot fork and runs on the pool
    (a single-threaded caller probes large arguments in a forked child, see
    test_auto_large.py)."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    yield
    stop.set()
    other.join()


@pytest.mark.timeout(60)
def test_large_arguments_send_the_workers_fewer_samples(tmp_path, threaded):
    """Pickling 16 samples of ~1.5 MB to the probe's workers costs more than
    the probe's budget: it sends 1 call alone and 2 for the two threads, runs
    each in a worker, and the plan says so."""
    path = tmp_path / "calls"
    items = [(k, ROWS) for k in range(16)]
    plan = gilfree.advise(BigArgRecorder(str(path)), items, budget=0.5)
    calls = [line.split() for line in path.read_text().splitlines()]
    assert sorted(int(i) for i, _ in calls) == [0, 1, 2], calls
    assert all(int(pid) != os.getpid() for _, pid in calls)
    assert sorted(plan.outcomes) == [0, 1, 2]
    assert all(plan.outcomes[k] == (True, k + len(ROWS)) for k in range(3))
    assert any(
        r.startswith("The probe sent its workers 3 of the 16 samples (1 call alone, then 2 on")
        for r in plan.reasons
    ), plan.explain()
    assert plan.profile.thread_scaling is not None or "Thread scaling was not measured" in (
        plan.explain()
    )


def test_small_arguments_are_all_sent(tmp_path):
    path = tmp_path / "calls"
    plan = gilfree.advise(BigArgRecorder(str(path)), [(k, ()) for k in range(16)], budget=0.5)
    assert len(plan.outcomes) > 3
    assert not any("The probe sent its workers" in r for r in plan.reasons), plan.explain()


@pytest.mark.timeout(60)
def test_pure_python_on_large_arguments_with_a_gil_sends_one_sample(threaded):
    """With a GIL the bytecode of a pure-Python loop already says what two
    threads would show; without one, the two threads are timed."""
    from gilfree.planner._features import gil_enabled

    plan = gilfree.advise(walk_rows, [(k, ROWS) for k in range(16)], budget=0.5)
    if gil_enabled():
        assert sorted(plan.outcomes) == [0], plan.explain()
        assert any("the bytecode shows only pure-Python loops" in r for r in plan.reasons)
        assert plan.backend != "process", plan.explain()  # pickling costs more than the work
    else:
        assert sorted(plan.outcomes) == [0, 1, 2], plan.explain()
    assert plan.outcomes[0] == (True, walk_rows((0, ROWS)))


@pytest.mark.timeout(60)
def test_auto_map_with_large_arguments_runs_each_item_once(tmp_path):
    path = tmp_path / "calls"
    items = [(k, ROWS) for k in range(12)]
    out = gilfree.map(BigArgRecorder(str(path)), items)
    assert out == [k + len(ROWS) for k in range(12)]
    calls = sorted(int(line.split()[0]) for line in path.read_text().splitlines())
    assert calls == list(range(12))

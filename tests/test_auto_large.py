"""backend="auto" with large arguments: a single-threaded caller probes in a
bare forked child, which inherits the samples, two-thread phase included; a
caller with other threads probes on the pool, which sends fewer samples."""

from __future__ import annotations

import os
import threading
import time

import pytest
from test_auto import ROWS, walk_rows

import gilfree
from gilfree.planner import clear_cache
from gilfree.planner._reading import BUSY_SHARE

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def fresh_plans():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def forking():
    """The forked probe needs a caller with no other thread."""
    if threading.active_count() != 1:
        pytest.skip("the test runner has other threads: the probe would not fork")


class NapRecorder:
    """Sleeps 2 ms (two threads overlap it), records which process ran each
    input ``(index, rows)``; ``crash_at`` ends its process on that index."""

    def __init__(self, path, crash_at=None):
        self.path = path
        self.crash_at = crash_at

    def __call__(self, arg):
        index, rows = arg
        with open(self.path, "a") as f:
            f.write(f"{index} {os.getpid()}\n")
        if index == self.crash_at:
            os._exit(3)
        time.sleep(0.002)
        return index + len(rows)


def calls_of(path):
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]


def test_large_arguments_are_probed_in_a_forked_child_two_threads_included(tmp_path, forking):
    path = tmp_path / "calls"
    items = [(k, ROWS) for k in range(16)]
    plan = gilfree.advise(NapRecorder(path), items, budget=0.5)
    calls = calls_of(path)
    pids = {pid for _, pid in calls}
    assert len(pids) == 1 and os.getpid() not in pids, calls  # one child, not the caller
    assert sorted(i for i, _ in calls) == sorted(plan.outcomes), calls  # each once
    assert len(plan.outcomes) > 4, plan.explain()  # serial calls and two threads' calls
    assert all(plan.outcomes[k] == (True, k + len(ROWS)) for k in plan.outcomes)
    assert not any("The probe sent its workers" in r for r in plan.reasons), plan.explain()
    assert plan.profile.thread_scaling is not None, plan.explain()  # the phase ran
    # Sleeping calls overlap on two threads, unless other programs held the
    # CPUs (3.12 in make test-pythons, beside the other venvs' installs: 0.19x
    # at 31% busy, where the plan trusts the bytecode's sleep instead; and
    # 1.28x below that share, so any clear overlap will do).
    if plan.profile.busy_share < BUSY_SHARE:
        assert plan.profile.thread_scaling > 1.1, plan.explain()
    assert plan.backend == "thread", plan.explain()


def test_pure_python_on_large_arguments_skips_the_threads_with_a_gil(forking):
    from gilfree.planner._features import gil_enabled

    items = [(k, ROWS) for k in range(16)]
    plan = gilfree.advise(walk_rows, items, budget=0.5)
    assert plan.outcomes and all(
        plan.outcomes[k] == (True, walk_rows(items[k])) for k in plan.outcomes
    )
    assert plan.backend != "process", plan.explain()  # pickling costs more than the work
    assert any("to pickle" in r for r in plan.reasons), plan.explain()
    if gil_enabled():
        assert any("the bytecode shows only pure-Python loops" in r for r in plan.reasons)
        assert plan.profile.thread_scaling is None
    else:
        assert plan.profile.thread_scaling is not None, plan.explain()


@pytest.mark.parametrize("crash_at", [1, 10], ids=["serial phase", "two-thread phase"])
def test_a_crash_in_the_forked_large_argument_probe_fails_that_item_alone(
    tmp_path, forking, crash_at
):
    path = tmp_path / "calls"
    items = [(k, ROWS) for k in range(12)]
    out = gilfree.map(NapRecorder(path, crash_at=crash_at), items, errors="return")
    assert isinstance(out[crash_at], gilfree.WorkerDied), out[crash_at]
    assert out[:crash_at] + out[crash_at + 1 :] == [
        k + len(ROWS) for k in range(12) if k != crash_at
    ]
    ran = [i for i, _ in calls_of(path)]
    assert set(ran) == set(range(12))
    # The serial phase's outcomes arrive call by call: none of them runs again.
    # The two threads' arrive together at their end: when a crash ends them,
    # the samples they held (the last four) are probed again on the pool.
    again = {i for i in ran if ran.count(i) > 1}
    assert again <= ({8, 9, 10, 11} if crash_at == 10 else set()), ran


def test_auto_map_with_large_arguments_runs_each_item_once(tmp_path):
    path = tmp_path / "calls"
    items = [(k, ROWS) for k in range(12)]
    assert gilfree.map(NapRecorder(path), items) == [k + len(ROWS) for k in range(12)]
    assert sorted(i for i, _ in calls_of(path)) == list(range(12))

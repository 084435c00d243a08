"""One conformance suite, run against every local backend."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time

import pytest

import gilfree
from gilfree.errors import ConfigurationError, RemoteTraceback

pytestmark = pytest.mark.timeout(60)


def square(x):
    return x * x


class Boom(ValueError):
    pass


def stuck_on_2(x):
    if x == 2:
        time.sleep(60)
    return x


def fail_on_3(x):
    if x == 3:
        raise Boom(f"bad input {x}")
    return x


def test_map_returns_results_in_order(backend):
    assert gilfree.map(square, range(50), backend=backend) == [x * x for x in range(50)]


def test_map_of_nothing(backend):
    assert gilfree.map(square, [], backend=backend) == []


def test_lambdas_and_closures_work(backend):
    offset = 7
    assert gilfree.map(lambda x: x + offset, range(5), backend=backend) == [7, 8, 9, 10, 11]

    def make_adder(n):
        return lambda x: x + n

    assert gilfree.map(make_adder(100), [1, 2], backend=backend) == [101, 102]


def test_imap_ordered_and_unordered(backend):
    assert list(gilfree.imap(square, range(30), backend=backend)) == [x * x for x in range(30)]
    got = list(gilfree.imap(square, range(30), backend=backend, ordered=False))
    assert sorted(got) == [x * x for x in range(30)]


def test_unordered_imap_yields_fast_results_before_a_slow_one():
    def nap(x):
        time.sleep(0.5 if x == 0 else 0.0)
        return x

    got = list(gilfree.imap(nap, range(6), backend="thread", ordered=False, workers=3))
    assert got[-1] == 0 and sorted(got) == list(range(6))


def test_imap_reads_input_lazily_with_a_bounded_window(backend):
    pulled = itertools.count()

    def source():
        for i in range(1_000_000):
            next(pulled)
            yield i

    it = gilfree.imap(square, source(), backend=backend, workers=_two(backend))
    try:
        first = [next(it) for _ in range(10)]
    finally:
        it.close()
    assert first == [x * x for x in range(10)]
    consumed = next(pulled)
    # The window holds a few chunks of ~2-20 ms of work each: far from all of it.
    assert consumed < 500_000, f"read {consumed} items ahead for 10 results"


def test_errors_raise_keeps_original_type(backend):
    with pytest.raises(Boom, match="bad input 3"):
        gilfree.map(fail_on_3, range(10), backend=backend)


def test_process_errors_carry_the_worker_traceback():
    with pytest.raises(Boom) as info:
        gilfree.map(fail_on_3, range(10), backend="process")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on_3" in cause.tb and "raise Boom" in cause.tb


def test_errors_return_fills_the_failed_slot(backend):
    out = gilfree.map(fail_on_3, range(6), backend=backend, errors="return")
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
    assert isinstance(out[3], Boom)


def test_errors_return_in_imap(backend):
    out = list(gilfree.imap(fail_on_3, range(6), backend=backend, errors="return"))
    assert isinstance(out[3], Boom) and out[5] == 5


def test_imap_indexed_reports_every_index_once(backend):
    seen = sorted(
        (i, ok)
        for i, ok, _ in gilfree._api.imap_indexed(
            fail_on_3, range(8), backend=backend, ordered=False
        )
    )
    assert seen == [(i, i != 3) for i in range(8)]


class Flaky:
    """Fails the first `n` calls per item, counting in a file so processes share it."""

    def __init__(self, path, n):
        self.path, self.n = path, n

    def __call__(self, x):
        with open(self.path, "a+") as f:
            f.seek(0)
            count = f.read().count(f"{x},")
            f.write(f"{x},")
        if count < self.n:
            raise ConnectionError(f"transient failure {count} of {x}")
        return x


def test_retries_rerun_failed_tasks(backend, tmp_path):
    flaky = Flaky(str(tmp_path / "calls"), 2)
    assert gilfree.map(flaky, range(4), backend=backend, retries=2) == [0, 1, 2, 3]
    with pytest.raises(ConnectionError):
        gilfree.map(Flaky(str(tmp_path / "calls2"), 2), range(2), backend=backend, retries=1)


def test_explicit_chunksize(backend):
    assert gilfree.map(square, range(100), backend=backend, chunksize=7) == [
        x * x for x in range(100)
    ]


def test_timeout_fails_the_task_on_time_and_others_finish(backend):
    release = threading.Event()

    def slow_on_2(x):
        if x == 2:
            release.wait(3)  # thread/serial: returns soon after the test ends
            time.sleep(0 if release.is_set() else 30)
        return x

    # An Event cannot reach another process.
    fn = stuck_on_2 if backend in ("process", "dask") else slow_on_2
    t0 = time.monotonic()
    out = gilfree.map(fn, range(5), backend=backend, timeout=0.5, errors="return")
    elapsed = time.monotonic() - t0
    release.set()
    assert out[:2] == [0, 1] and out[3:] == [3, 4]
    assert isinstance(out[2], gilfree.TaskTimeout) and isinstance(out[2], TimeoutError)
    assert "_on_2" in out[2].stack
    assert elapsed < 10
    time.sleep(0.2)  # let an abandoned thread see the event and finish


@pytest.mark.parametrize(
    "bad",
    [
        {"backend": "gpu"},
        {"workers": 0},
        {"chunksize": -1},
        {"timeout": 0},
        {"retries": -1},
        {"errors": "ignore"},
        {"max_worker_memory": "lots"},
        {"share_threshold": 0},
    ],
)
def test_bad_options_name_the_problem(bad):
    with pytest.raises(ConfigurationError, match=next(iter(bad)).rstrip("s")[:5]):
        gilfree.map(square, [1], **bad)


def test_a_misspelt_option_is_a_type_error_naming_it():
    # Options are keyword parameters: Python itself names the unknown one.
    with pytest.raises(TypeError, match="wrkers"):
        gilfree.map(square, [1], wrkers=2)


@pytest.mark.parametrize(
    ("backend", "option"),
    [
        ("thread", {"max_worker_memory": "1GB"}),
        ("thread", {"max_tasks_per_worker": 3}),
        ("serial", {"workers": 4}),
        ("serial", {"start_method": "fork"}),
        ("process", {"address": "tcp://127.0.0.1:1"}),
    ],
)
def test_an_option_that_does_not_apply_is_an_error_naming_it(backend, option):
    name = next(iter(option))
    with pytest.raises(ConfigurationError, match=f"{name}=.*does not apply to backend='{backend}'"):
        gilfree.map(square, [1], backend=backend, **option)
    with pytest.raises(ConfigurationError, match=name):
        gilfree.Executor(backend=backend, **option)


def test_auto_warns_about_an_option_its_choice_does_not_use():
    with pytest.warns(RuntimeWarning, match="max_tasks_per_worker=3 not used"):
        # x * x is planned onto a plain loop, where recycling workers means nothing.
        assert gilfree.map(square, range(100), max_tasks_per_worker=3) == [
            x * x for x in range(100)
        ]


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 << 20), ("1GB", 10**9), ("2G", 2 << 30), ("1.5 KiB", 1536), (4096, 4096)],
)
def test_sizes_accept_the_usual_strings(text, size):
    from gilfree._options import Options

    assert Options(max_worker_memory=text).max_worker_memory == size
    assert Options(share_threshold=text).share_threshold == size


def test_not_callable():
    with pytest.raises(ConfigurationError, match="not callable"):
        gilfree.map(42, [1], backend="serial")


def test_progress_bar_goes_to_stderr(backend, capsys):
    assert gilfree.map(square, range(20), backend=backend, progress=True) == [
        x * x for x in range(20)
    ]
    assert "20/20" in capsys.readouterr().err


# -- Executor ------------------------------------------------------------------
def test_executor_is_a_concurrent_futures_executor(backend):
    with gilfree.Executor(backend=backend, workers=_two(backend)) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        futures = [ex.submit(pow, 2, i) for i in range(8)]
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        assert [f.result(timeout=30) for f in futures] == [2**i for i in range(8)]
        assert list(ex.map(lambda a, b: a + b, range(5), range(5))) == [0, 2, 4, 6, 8]
        failed = ex.submit(fail_on_3, 3)
        assert isinstance(failed.exception(timeout=30), Boom)
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(square, 1)


@pytest.mark.parametrize("backend", ["auto", "serial", "thread", "process", "dask"], indirect=True)
@pytest.mark.parametrize("wait", [True, False])
def test_work_submitted_before_shutdown_all_runs(backend, wait):
    # As concurrent.futures: shutdown() waits for (or, with wait=False, leaves
    # running) every call already submitted. On auto, the calls that waited for
    # their function's plan failed with "cannot schedule new futures after shutdown".
    ex = gilfree.Executor(backend=backend, workers=_two(backend))
    futures = [ex.submit(square, i) for i in range(10)]
    ex.shutdown(wait=wait)
    assert [f.result(timeout=30) for f in futures] == [x * x for x in range(10)]


@pytest.mark.parametrize("wait", [True, False])
def test_calls_that_waited_for_their_plan_run_when_shutdown_comes_meanwhile(wait):
    # The planner used to leave the set shutdown joins before it dispatched
    # the calls that waited for its plan: shutdown closed the pool between
    # the two (1 run in ~50 on 3.13t), and those futures failed with "cannot
    # schedule new work after the pool was shut down".
    for _ in range(8):
        ex = gilfree.Executor(workers=2)
        futures = [ex.submit(square, i) for i in range(10)]
        ex.shutdown(wait=wait)
        assert [f.result(timeout=30) for f in futures] == [x * x for x in range(10)]


@pytest.mark.parametrize("backend", ["auto", "serial", "thread", "process", "dask"], indirect=True)
def test_map_results_are_read_after_the_with_block(backend):
    # The concurrent.futures idiom: map inside the block, read after it. The
    # process backend had sent only a first window of items when the pool shut.
    with gilfree.Executor(backend=backend, workers=_two(backend)) as ex:
        listed = ex.map(square, range(200))
        generated = ex.map(square, (x for x in range(50)))  # no length known
        failing = ex.map(fail_on_3, range(6))
    assert list(listed) == [x * x for x in range(200)]
    assert list(generated) == [x * x for x in range(50)]
    with pytest.raises(Boom):
        list(failing)
    ex = gilfree.Executor(backend=backend, workers=_two(backend))
    later = ex.map(square, range(30))
    ex.shutdown(wait=False)
    assert list(later) == [x * x for x in range(30)]


def test_leaving_the_block_while_reading_an_endless_map_does_not_hang():
    # A map whose reading has begun is the reader's: shutdown does not try to
    # run the rest of an endless input.
    started = time.monotonic()
    with gilfree.Executor(backend="process", workers=2) as ex:
        endless = ex.map(square, itertools.count())
        assert [next(endless) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert time.monotonic() - started < 30


def test_executor_reuses_its_workers():
    import os

    with gilfree.Executor(backend="process", workers=2) as ex:
        first = set(ex.map(lambda _: os.getpid(), range(20)))
        second = {ex.submit(os.getpid).result() for _ in range(10)}
        assert first | second <= {p for p in ex.statistics()[0]["pids"]}


def test_executor_shutdown_cancels_pending_futures(backend):
    gate = threading.Event()
    ex = gilfree.Executor(backend=backend, workers=1)
    try:
        if backend == "serial":
            pytest.skip("serial submit runs inline: nothing is ever pending")
        if backend in ("process", "dask"):
            blocker = ex.submit(time.sleep, 0.5)
        else:
            blocker = ex.submit(gate.wait, 5)
        pending = [ex.submit(square, i) for i in range(5)]
        time.sleep(0.1)
    finally:
        gate.set()
        ex.shutdown(wait=True, cancel_futures=True)
    assert blocker.done()
    assert any(f.cancelled() for f in pending)
    assert all(f.cancelled() or f.result() is not None for f in pending)


def test_executor_map_timeout():
    with gilfree.Executor(backend="thread", workers=2) as ex:
        it = ex.map(time.sleep, [0.0, 2.0], timeout=0.3)
        next(it)
        with pytest.raises(TimeoutError):
            next(it)


def _two(backend):
    """Two workers, where the backend has workers (serial is one by definition)."""
    return 1 if backend == "serial" else 2


def test_an_empty_input_gives_nothing(backend):
    assert gilfree.map(square, [], backend=backend) == []
    assert list(gilfree.imap(square, [], backend=backend)) == []
    assert list(gilfree.imap(square, iter([]), backend=backend, ordered=False)) == []
    with gilfree.Executor(backend=backend, workers=_two(backend)) as ex:
        assert list(ex.map(square, [])) == []


def _breaks_at(n):
    for i in range(20):
        if i == n:
            raise ValueError(f"the input broke at {n}")
        yield i


@pytest.mark.parametrize("n", [0, 5, 13])
def test_an_input_that_raises_yields_every_earlier_result_first(backend, n):
    # As a plain loop: every item read before the input failed has its result.
    got = []
    with pytest.raises(ValueError, match=f"the input broke at {n}"):
        for r in gilfree.imap(square, _breaks_at(n), backend=backend):
            got.append(r)
    assert got == [i * i for i in range(n)]


def test_auto_keeps_the_results_before_a_failing_input():
    got = []
    with pytest.raises(ValueError, match="the input broke at 5"):
        for r in gilfree.imap(square, _breaks_at(5)):
            got.append(r)
    assert got == [0, 1, 4, 9, 16]


@pytest.mark.parametrize(
    "bad",
    [{"timeout": float("inf")}, {"timeout": 1e10}, {"progress": "yes"}, {"ordered": "no"}],
)
def test_values_no_backend_could_use_are_refused(bad):
    func = gilfree.imap if "ordered" in bad else gilfree.map
    with pytest.raises(ConfigurationError, match=next(iter(bad))):
        list(func(square, [1], **bad))

"""The default path keeps every promise: backend="auto" runs no probe call in the caller.

Crashes (segfault, os._exit) and hangs are put in the items the planner
probes -- the first ones, and on an indexable input the ones it spreads its
samples over -- on map, imap, Executor.submit/map and advise. Crash cases run
in a child interpreter, so that a regression fails one test instead of
killing the test session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import gilfree
from gilfree import TaskTimeout, WorkerDied

pytestmark = pytest.mark.timeout(120)

CRASHY = textwrap.dedent(
    """
    import ctypes, os, sys, time
    import gilfree

    def crashy(x):
        if x in CRASH_SEGV:
            ctypes.string_at(0)
        if x in CRASH_EXIT:
            os._exit(3)
        return x * 2

    def show(out):
        return [type(v).__name__ if isinstance(v, BaseException) else v for v in out]
    """
)


def run_script(body: str, segv=(0,), exit_=(7,), timeout=90) -> subprocess.CompletedProcess:
    code = (
        f"CRASH_SEGV = {set(segv)!r}\nCRASH_EXIT = {set(exit_)!r}\n"
        + CRASHY
        + textwrap.dedent(body)
    )
    return run_python(code, timeout)


def run_python(code: str, timeout: float) -> subprocess.CompletedProcess:
    # A hang prints every thread's stack (on stderr, which the asserts show)
    # before the subprocess timeout would lose it: once, on 3.13t in a full
    # suite, a script here printed nothing for 90 s, and not again in 50 tries.
    dump = f"import faulthandler; faulthandler.dump_traceback_later({timeout - 20}, exit=True)\n"
    return subprocess.run(
        [sys.executable, "-c", dump + code], capture_output=True, text=True, timeout=timeout
    )


def test_map_probed_crashes_are_worker_died_and_the_caller_lives():
    proc = run_script(
        """
        out = gilfree.map(crashy, range(20), errors="return")
        print(show(out))
        """
    )
    assert proc.returncode == 0, proc.stderr
    expected = ["WorkerDied" if x in (0, 7) else 2 * x for x in range(20)]
    assert proc.stdout.strip() == str(expected)


def test_map_spread_probe_crash_on_the_last_item():
    # 300 items: the probe samples index 0, 299, 150, ...
    proc = run_script(
        """
        out = gilfree.map(crashy, list(range(300)), errors="return")
        print(show(out))
        """,
        segv=(299,),
        exit_=(150,),
    )
    assert proc.returncode == 0, proc.stderr
    expected = ["WorkerDied" if x in (150, 299) else 2 * x for x in range(300)]
    assert proc.stdout.strip() == str(expected)


def test_map_errors_raise_raises_worker_died_in_a_living_caller():
    proc = run_script(
        """
        try:
            gilfree.map(crashy, range(20))
        except gilfree.WorkerDied as exc:
            print("caught", type(exc).__name__)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "caught WorkerDied"


def test_imap_and_executor_survive_probed_crashes():
    proc = run_script(
        """
        print(show(gilfree.imap(crashy, iter(range(12)), errors="return")))
        with gilfree.Executor() as ex:
            f = ex.submit(crashy, 0)
            print(type(f.exception(timeout=60)).__name__)
            print(ex.submit(crashy, 3).result(timeout=60))
        with gilfree.Executor(errors="return") as ex:
            print(show(ex.map(crashy, range(10))))
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == str(["WorkerDied" if x in (0, 7) else 2 * x for x in range(12)])
    assert lines[1] == "WorkerDied"
    assert lines[2] == "6"
    assert lines[3] == str(["WorkerDied" if x in (0, 7) else 2 * x for x in range(10)])


def test_advise_reports_a_crashing_sample_and_keeps_processes():
    proc = run_script(
        """
        plan = gilfree.advise(crashy, list(range(10)))
        print(plan.backend)
        print(sorted(type(v).__name__ for ok, v in plan.outcomes.values() if not ok))
        print(plan.explain())
        """
    )
    assert proc.returncode == 0, proc.stderr
    backend, failed, *explain = proc.stdout.strip().splitlines()
    # Item 0 crashed in the serial phase; item 7 in the two-thread task, whose
    # items are then not blamed one by one (a map runs them again alone).
    assert failed.startswith("['WorkerDied'"), failed
    # A fast function would run inline, but what crashed a worker would crash
    # the caller there: auto keeps such a job on processes.
    assert backend == "process", "\n".join(explain)
    assert any("crashed the worker" in line for line in explain)


def slow_first(x):
    if x == 0:
        time.sleep(60)
    return x


def test_timeout_applies_to_probed_items():
    started = time.monotonic()
    out = gilfree.map(slow_first, range(40), timeout=1, errors="return")
    elapsed = time.monotonic() - started
    assert isinstance(out[0], TaskTimeout) and isinstance(out[0], TimeoutError)
    assert out[1:] == list(range(1, 40))
    assert elapsed < 20, elapsed


def test_executor_submit_returns_at_once_and_times_out():
    with gilfree.Executor(timeout=1) as ex:
        started = time.monotonic()
        fut = ex.submit(slow_first, 0)
        assert time.monotonic() - started < 1.0  # planning runs off this thread
        assert isinstance(fut.exception(timeout=30), TaskTimeout)
        assert ex.submit(slow_first, 5).result(timeout=30) == 5


def sleepy(x):
    time.sleep(2)
    return x


def test_executor_submit_does_not_block_for_the_probed_call():
    with gilfree.Executor() as ex:
        started = time.monotonic()
        futures = [ex.submit(sleepy, i) for i in range(3)]
        assert time.monotonic() - started < 1.0
        assert [f.result(timeout=60) for f in futures] == [0, 1, 2]


@pytest.mark.parametrize("slow", [0, 5])  # the first probe batch, and a later one
def test_an_auto_executor_map_timeout_bounds_its_probed_calls(slow):
    # The map's timeout is a deadline from the call, as in concurrent.futures;
    # a probed sample that outlasts it made map() itself block for the whole
    # call (a new user: 60 s for timeout=2), and no TimeoutError followed.
    proc = run_python(
        textwrap.dedent(
            f"""
            import os, sys, time, gilfree

            def f(x):
                time.sleep(3600 if x == {slow} else 0.01)
                return x

            if __name__ == "__main__":
                ex = gilfree.Executor()
                t0 = time.monotonic()
                got = []
                try:
                    for r in ex.map(f, range(10), timeout=2):
                        got.append(r)
                except TimeoutError:
                    print("TimeoutError", time.monotonic() - t0 < 15, got == list(range(len(got))))
                # The slow call still runs (on threads, when planned there), and
                # exit waits for running calls, as concurrent.futures' does.
                sys.stdout.flush()
                os._exit(0)
            """
        ),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["TimeoutError", "True", "True"], proc.stdout


def napping(x):
    # Well past the pool's stack read (_stacks.BURST_GAP_S, 50 ms) after a
    # timeout: a call that ends within it still returns its value (see the note).
    time.sleep(0.3)
    return x


@pytest.mark.parametrize("timeout", [0, -1])
def test_an_auto_executor_map_with_no_time_left_raises_timeout_error(timeout):
    # As concurrent.futures: a deadline already past. The probe's bound was
    # the timeout itself, and 0 made a ConfigurationError (timeout=0 must be > 0).
    with gilfree.Executor() as ex:
        with pytest.raises(TimeoutError):
            list(ex.map(napping, range(5), timeout=timeout))
        # The plan made under that deadline is not kept: a map without one probes
        # again and runs every item.
        assert not ex._plans, ex._plans
        assert list(ex.map(napping, range(5))) == list(range(5))
        assert ex._plans


def test_auto_shutdown_without_wait_does_not_wait_for_a_plan_being_made():
    # The first call of a function is its probe; shutdown(wait=False) joined
    # the planning thread, so it blocked for the whole call (a new user: 10 s).
    ex = gilfree.Executor()
    futures = [ex.submit(sleepy, i) for i in range(2)]
    started = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - started < 1.0
    assert [f.result(timeout=60) for f in futures] == [0, 1]
    ex.shutdown(wait=True)  # again, waiting: every worker is gone after it


def slow_zero(x):
    if x == 0:
        time.sleep(60)
    return x


def test_a_bad_budget_is_a_configuration_error():
    with pytest.raises(gilfree.ConfigurationError, match="budget=-1"):
        gilfree.advise(abs, [1, 2], budget=-1)


def test_advise_with_timeout_reports_the_hung_sample():
    plan = gilfree.advise(slow_zero, list(range(8)), timeout=1)
    ok, value = plan.outcomes[0]
    assert not ok and isinstance(value, TaskTimeout)
    # Only a worker process can be stopped: the plan stays there (it was serial).
    assert plan.backend == "process", plan.explain()


def flaky_crash(path):
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(5)
    return "second try"


def test_retries_apply_to_a_probed_item_whose_worker_died(tmp_path):
    paths = [str(tmp_path / f"m{i}") for i in range(3)]
    assert gilfree.map(flaky_crash, paths, retries=1) == ["second try"] * 3
    out = gilfree.map(flaky_crash, [str(tmp_path / "n")], retries=0, errors="return")
    assert isinstance(out[0], WorkerDied)


def square(x):
    return x * x


def test_a_second_map_of_a_function_that_crashed_stays_on_processes():
    # The planner caches its measurements per function: the crash is kept with them.
    proc = run_script(
        """
        print(show(gilfree.map(crashy, range(20), errors="return")))
        print(show(gilfree.map(crashy, range(20), errors="return")))
        """
    )
    assert proc.returncode == 0, proc.stderr
    expected = str(["WorkerDied" if x in (0, 7) else 2 * x for x in range(20)])
    assert proc.stdout.strip().splitlines() == [expected, expected]


def test_a_tiny_function_runs_inline_and_the_plan_says_so():
    # 2,000 items, not 200,000: in the forked child of a process as large as
    # pytest, copy-on-write faults can inflate x * x to ~1.4 us a call (3.15,
    # once in a full suite), which makes 200,000 of them worth two processes.
    plan = gilfree.advise(square, list(range(64)), total=2_000)
    assert plan.backend == "serial", plan.explain()
    assert any("run in this process" in r for r in plan.reasons), plan.reasons
    assert isinstance(plan.chunksize, int) and plan.chunksize >= 1


def cpu(n):
    return sum(i * i for i in range(n))


def test_plan_chunksize_is_the_int_the_engine_starts_with():
    plan = gilfree.advise(cpu, [20_000] * 40, total=10_000)
    assert isinstance(plan.chunksize, int) and plan.chunksize >= 1
    if plan.backend != "serial":
        assert any("adapt as the job runs" in r for r in plan.reasons), plan.reasons


def hang(x):
    time.sleep(60)


def test_ctrl_c_while_probing_is_clean(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        textwrap.dedent(
            """
            import time, gilfree, sys
            def hang(x):
                time.sleep(60)
            print("ready", flush=True)
            try:
                gilfree.map(hang, range(10))
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # inside the probe: item 0 is running in a worker
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert "interrupted" in out, err
    assert proc.returncode == 0, err


class CountingFailure:
    """Appends each call's input to a file (any process); item 0 always fails."""

    def __init__(self, path, how):
        self.path, self.how = path, how

    def __call__(self, x):
        with open(self.path, "a") as f:
            f.write(f"{x}\n")
        if x == 0:
            if self.how == "exit":
                os._exit(3)
            raise ValueError("always")
        return x


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_retries_count_the_probe_as_the_first_attempt(tmp_path, how):
    path = tmp_path / "calls"
    out = gilfree.map(CountingFailure(str(path), how), range(12), retries=2, errors="return")
    assert isinstance(out[0], WorkerDied if how == "exit" else ValueError)
    assert out[1:] == list(range(1, 12))
    calls = [int(v) for v in path.read_text().split()]
    assert calls.count(0) == 3  # retries=2: three attempts in all, the probe's included


@pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="without a GIL this function is planned onto threads, which run in this "
    "process (README: what holds on each backend); the rule tested is serial's",
)
def test_executor_submit_of_a_fast_function_keeps_later_crashes_in_workers():
    # Only the first call is probed; a quick function is not moved into this
    # process on the strength of it, so a crash in a later call is WorkerDied.
    proc = run_script(
        """
        with gilfree.Executor() as ex:
            fs = [ex.submit(crashy, x) for x in range(1, 12)]
            print([type(f.exception()).__name__ if f.exception() else f.result() for f in fs])
        """,
        segv=(10,),
        exit_=(),
    )
    assert proc.returncode == 0, proc.stderr
    expected = ["WorkerDied" if x == 10 else 2 * x for x in range(1, 12)]
    assert proc.stdout.strip() == str(expected)


def test_an_executor_knows_what_a_map_of_the_same_function_saw():
    proc = run_script(
        """
        print(show(gilfree.map(crashy, range(20), errors="return"))[0])
        with gilfree.Executor(backend="auto") as ex:
            f = ex.submit(crashy, 0)
            print(type(f.exception(timeout=60)).__name__)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["WorkerDied", "WorkerDied"]


def first_and_last(a):
    time.sleep(0.2)  # still being planned when the caller changes the array
    return float(a[0]), float(a[-1])


def test_executor_auto_submit_sees_the_arguments_as_they_were_at_submit():
    np = pytest.importorskip("numpy")
    a = np.zeros(1 << 18)  # 2 MiB: goes to workers through shared memory
    with gilfree.Executor() as ex:
        first = ex.submit(first_and_last, a)  # probed in a planning thread
        waiting = ex.submit(first_and_last, a)  # waits for the plan
        a[0], a[-1] = 7.0, 9.0
        assert first.result(timeout=60) == (0.0, 0.0)
        assert waiting.result(timeout=60) == (0.0, 0.0)
        assert ex.submit(first_and_last, a).result(timeout=60) == (7.0, 9.0)


def hangs_on_zero(x):
    if x == 0:
        time.sleep(3600)
    return x


@pytest.mark.skip_in_test_pythons(
    "waits out advise's default 10 s bound, which is plain arithmetic on every interpreter;"
    " test_advise_with_timeout_reports_the_hung_sample covers the hung sample everywhere"
)
def test_advise_returns_even_when_a_sample_hangs():
    started = time.monotonic()
    plan = gilfree.advise(hangs_on_zero, list(range(8)), budget=0.2)
    assert time.monotonic() - started < 60
    ok, value = plan.outcomes[0]
    assert not ok and isinstance(value, TaskTimeout)


# -- a function that looks tiny is probed in a bare forked child (gilfree._probe_fork) --
TINY = textwrap.dedent(
    """
    import os, sys, threading, time
    import gilfree
    from gilfree import _auto

    def sq(x):  # inert: arithmetic alone, probed in this process (planner._inert)
        return x * x

    def sq_abs(x):  # tiny, but it calls a function: probed in a forked child
        return abs(x) * x

    def nested(x):  # looks tiny: the loop is in helper, which the probe reaches on item 3
        return helper(x)

    def helper(x):
        return sum(range(10**10)) if x == 3 else x

    def lock_at_1(x):
        return threading.Lock() if x == 1 else x

    def slowish(x):  # looks tiny, but each call takes ~1 ms
        return work(x)

    def work(x):
        return sum(range(30_000)) + x

    assert _auto.looks_tiny(sq_abs) and _auto.looks_tiny(nested) and _auto.looks_tiny(lock_at_1)
    """
)


def run_tiny(body: str, timeout=90) -> subprocess.CompletedProcess:
    return run_python(TINY + textwrap.dedent(body), timeout)


def test_calls_that_overrun_the_timeout_in_the_probe_are_timeouts():
    # Half the calls nap past timeout=: the probe's two-thread task ran some
    # of them to the end (its limit is longer), and they came back as values.
    proc = run_python(
        textwrap.dedent(
            """
            import time, gilfree

            def f(x):
                if x % 2 == 0:
                    time.sleep(0.06)
                return x

            out = gilfree.map(f, range(40), timeout=0.02, errors="return")
            late = [isinstance(v, gilfree.TaskTimeout) for v in out]
            print([i for i, t in enumerate(late) if t != (i % 2 == 0)])
            print(all(v == i for i, v in enumerate(out) if i % 2))
            """
        ),
        120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "True"], proc.stdout


def test_arguments_that_cannot_be_pickled_are_run_where_the_plan_runs_them():
    # Every sample failed to reach the probe's process: the plan took processes
    # on the bytecode alone, and all 48 items came back as SerializationError.
    proc = run_python(
        textwrap.dedent(
            """
            import threading, gilfree

            def work(x):
                t = 0
                for i in range(20_000):
                    t += i
                return t

            out = gilfree.map(work, [threading.Lock() for _ in range(48)], errors="return")
            print(sum(v == sum(range(20_000)) for v in out))
            import gilfree.planner
            gilfree.planner.clear_cache()
            plan = gilfree.advise(work, [threading.Lock() for _ in range(8)])
            said = any("argument 0 cannot be pickled" in r for r in plan.reasons)
            print(plan.backend != "process", said)
            """
        ),
        120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["48", "True True"], proc.stdout


def test_a_tiny_function_is_probed_without_a_process_pool():
    proc = run_tiny(
        """
        from gilfree import _probe_fork
        data = list(range(5000))
        print(gilfree.map(sq_abs, data) == [x * x for x in data])
        print("gilfree.pool" in sys.modules, threading.active_count())
        gilfree.planner.clear_cache()  # probe again, for the plan's outcomes and reasons
        forks = []
        fork = os.fork
        os.fork = lambda: forks.append(1) or fork()
        # 20,000 items: a loop by far (at 200,000, a loaded CI machine read
        # the calls slow enough once for processes to be predicted faster).
        plan = gilfree.advise(sq_abs, data[:64], total=20_000)
        print(plan.backend, plan.outcomes and all(ok for ok, _ in plan.outcomes.values()))
        print(any("ran in a worker process first" in r for r in plan.reasons), forks)
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")[:4]
    assert lines == ["True", "False 1", "serial True", "True [1]"], proc.stdout


def test_an_inert_function_is_probed_in_the_caller_and_the_plan_says_so():
    # Arithmetic on small numbers can neither crash nor hang: no fork, no pool,
    # even with another thread running (which rules out the forked probe).
    proc = run_tiny(
        """
        stop = threading.Event()
        other = threading.Thread(target=stop.wait)
        other.start()
        forks = []
        fork = os.fork
        os.fork = lambda: forks.append(1) or fork()
        data = list(range(5000))
        print(gilfree.map(sq, data) == [x * x for x in data], forks)
        print("gilfree.pool" in sys.modules)
        gilfree.planner.clear_cache()
        plan = gilfree.advise(sq, data[:64], total=200_000)
        print(plan.backend, all(ok for ok, _ in plan.outcomes.values()), len(plan.outcomes))
        print(any("64 probe calls ran in this process" in r for r in plan.reasons))
        # Strings are not small numbers: probed in a worker process (a pool here).
        gilfree.planner.clear_cache()
        print(gilfree.map(sq, ["a", "b"], errors="return")[0].__class__.__name__)
        print("gilfree.pool" in sys.modules, forks)
        stop.set()
        other.join()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:6] == [
        "True []",
        "False",
        "serial True 64",
        "True",
        "TypeError",
        "True []",
    ], proc.stdout


def test_a_tiny_function_crashing_in_its_forked_probe_is_worker_died_for_that_item():
    proc = run_script(
        """
        from gilfree import _auto
        assert _auto.looks_tiny(crashy)
        out = gilfree.map(crashy, list(range(100)), errors="return")
        print(show(out) == ["WorkerDied" if x in (0, 7) else 2 * x for x in range(100)])
        print(out[0].signal_name, "probe process" in str(out[0]), "in crashy" in out[0].stack)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "SIGSEGV", "True", "True"], proc.stdout


def test_a_failure_found_by_the_probe_names_its_input_index_not_its_sample_number():
    # The probe numbers its samples (0, 99, 49, ... spread over the input), and
    # its second phase numbered those after a first crash from 0 again: input
    # 10 came back as "task 9" (a new user's trial) and the last input as "task 1".
    proc = run_script(
        """
        out = gilfree.map(crashy, list(range(100)), errors="return")
        gilfree.planner.clear_cache()
        unordered = gilfree.imap(crashy, list(range(100)), errors="return", ordered=False)
        for got in (list(enumerate(out)), [(None, v) for v in unordered]):
            failed = [(i, v) for i, v in got if isinstance(v, BaseException)]
            print(sorted(v.index for _, v in failed),
                  all(i in (None, v.index) and v.item == str(v.index) for i, v in failed),
                  all(f"task {v.index} (input: {v.index})" in str(v) for _, v in failed))
        """,
        segv=(0, 10, 99),
        exit_=(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[0, 10, 99] True True"] * 2, proc.stdout


def test_an_auto_executor_maps_a_tiny_function_inline_and_submits_it_to_processes():
    # Executor(auto).map follows a serial plan as gilfree.map does (it sent
    # 20,000 x + 1 calls to processes: 31-43 ms against 3.8 ms in a loop), and
    # an Executor that has mapped only tiny functions started no pool at all.
    proc = run_tiny(
        """
        data = list(range(2000))
        with gilfree.Executor() as ex:
            print(list(ex.map(sq, data)) == [x * x for x in data])
            print([s["backend"] for s in ex.statistics()], "gilfree.pool" in sys.modules)
            print(ex.submit(sq, 3).result(timeout=60))  # submit never runs a call here
            print(sorted(s["backend"] for s in ex.statistics()))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "True",
        "['serial'] False",
        "9",
        "['process', 'serial']",
    ], proc.stdout


def test_a_tiny_looking_call_that_hangs_in_the_forked_probe_times_out():
    proc = run_tiny(
        """
        t0 = time.monotonic()
        out = gilfree.map(nested, range(20), errors="return", timeout=1)
        print(time.monotonic() - t0 < 15)
        print(type(out[3]).__name__, "in helper" in out[3].stack)
        print(out[:3] + out[4:] == [x for x in range(20) if x != 3])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "TaskTimeout", "True", "True"], proc.stdout


def test_an_unpicklable_result_in_the_forked_probe_names_the_result_not_a_wrapper():
    proc = run_tiny(
        """
        plan = gilfree.advise(lock_at_1, list(range(20)))
        ok, err = plan.outcomes[1]
        print(type(err).__name__, err.what, "Measured" in str(err))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["SerializationError", "result", "False"], proc.stdout


def test_a_result_only_the_probe_had_to_pickle_is_returned_when_the_plan_runs_here():
    # The forked probe pickles results back; a plan that runs calls in this
    # process never does. The call is run again here, so the first map and a
    # planned one agree (a new user: the first gave SerializationError for
    # the lock, the second returned it).
    proc = run_tiny(
        """
        for _ in range(2):
            out = gilfree.map(lock_at_1, range(20), errors="return")
            print(type(out[1]).__name__, out[:1] + out[2:] == [x for x in range(20) if x != 1])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["lock", "True", "lock", "True"], proc.stdout


def test_ctrl_c_while_the_forked_probe_runs_kills_the_probe_child(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        TINY.replace("10**10", "10**12")
        + textwrap.dedent(
            """
            import psutil
            print("ready", flush=True)
            try:
                gilfree.map(nested, range(3, 13))
            except KeyboardInterrupt:
                print("interrupted", len(psutil.Process().children()), flush=True)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # item 3 is running in the probe's child
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert "interrupted 0" in out, err
    assert proc.returncode == 0, err


def test_a_caller_with_threads_does_not_fork_its_probe():
    # A fork copies one thread; a lock another thread holds would stay locked.
    proc = run_tiny(
        """
        stop = threading.Event()
        other = threading.Thread(target=stop.wait)
        other.start()
        print(gilfree.map(sq_abs, list(range(500))) == [x * x for x in range(500)])
        stop.set()
        other.join()
        print("gilfree.pool" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"], proc.stdout


def lock_at_1_with_a_loop(x):
    for _ in range(2):  # a loop: not "tiny", so the probe runs on a pool worker
        pass
    return threading.Lock() if x == 1 else x


def test_an_unpicklable_result_in_the_pool_probe_names_the_result_not_a_wrapper():
    from gilfree import _auto

    assert not _auto.looks_tiny(lock_at_1_with_a_loop)
    plan = gilfree.advise(lock_at_1_with_a_loop, list(range(20)))
    _ok, err = plan.outcomes[1]
    assert isinstance(err, gilfree.SerializationError), err
    assert "result of type lock" in str(err) and "Measured" not in str(err)
    # map: the lock where the plan runs calls here (nothing pickles it), else
    # the error; the first (probing) call and a planned one agree.
    first = gilfree.map(lock_at_1_with_a_loop, range(20), errors="return")
    again = gilfree.map(lock_at_1_with_a_loop, range(20), errors="return")
    kinds = (type(threading.Lock()), gilfree.SerializationError)
    assert isinstance(first[1], kinds) and type(first[1]) is type(again[1]), (first[1], again[1])
    assert first[:1] + first[2:] == [x for x in range(20) if x != 1]


def test_executor_worker_died_names_the_input_as_given():
    proc = run_script(
        """
        def two(x, y=0):
            return crashy(x) + y

        for backend in ("auto", "process"):
            with gilfree.Executor(backend, errors="return") as ex:
                print(str(list(ex.map(crashy, range(3)))[0]).split("(input: ")[1].split(")")[0])
                print(str(ex.submit(crashy, 0).exception()).split("(input: ")[1].split(")")[0])
                print(str(ex.submit(two, 0, y=2).exception()).split("(input: ")[1].split(")")[0])
                # Every submit is task 0 of its own job: the message names the call.
                died = str(ex.submit(crashy, 0).exception())
                print("running the submitted call (input: 0)" in died, "task 0" not in died)
        """,
        exit_=(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:8] == ["0", "0", "0, y=2", "True True"] * 2, proc.stdout


def test_a_tiny_looking_function_that_is_slow_is_measured_on_two_threads_too():
    proc = run_tiny(
        """
        plan = gilfree.advise(slowish, list(range(24)))
        base = sum(range(30_000))
        print(all(ok and v == base + k for k, (ok, v) in plan.outcomes.items()))
        print(len(plan.outcomes) > 20, "gilfree.pool" in sys.modules)
        print("Thread scaling was not measured" not in plan.explain())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True", "True"], proc.stdout


class NapCrash:
    """Sleeps 0.1 ms (calls long enough for the probe's two threads), records
    each call by input, and ends its process on ``crash_at``."""

    def __init__(self, path, crash_at):
        self.path, self.crash_at = path, crash_at

    def __call__(self, x):
        with open(self.path, "a") as f:
            f.write(f"{x}\n")
        if x == self.crash_at:
            os._exit(3)
        time.sleep(0.0001)
        return x * 2


def test_samples_lost_with_the_two_thread_task_run_again_each_alone(tmp_path):
    # The pool probe's two-thread task holds the second half of 30 samples;
    # item 25 kills its worker. Its samples run again each in a task of its
    # own: the culprit fails alone, and no innocent one runs a third time (in
    # an ordinary chunk that the culprit killed again, losing its results).
    from gilfree.planner import clear_cache

    path = tmp_path / "calls"
    clear_cache()
    out = gilfree.map(NapCrash(path, 25), list(range(30)), errors="return")
    assert isinstance(out[25], WorkerDied), out[25]
    assert out[:25] + out[26:] == [2 * x for x in range(30) if x != 25]
    runs = [int(line) for line in path.read_text().split()]
    assert set(runs) == set(range(30))
    assert max(runs.count(x) for x in range(30)) <= 2, sorted(runs)
    assert runs.count(25) == 2  # in the dead two-thread task, then alone

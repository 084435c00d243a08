"""A plan for threads keeps every call in a worker process (backends._pooled_threads).

backend="auto" plans threads for calls that wait. Those calls -- probed or
not -- run on threads inside the probe's worker processes, so a call that
segfaults is WorkerDied for that call alone, a call past timeout= is a
TaskTimeout with its stack, and the caller lives. Crash cases run in a child
interpreter, so that a regression fails one test instead of killing the session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import gilfree
from gilfree import TaskTimeout

pytestmark = pytest.mark.timeout(120)

WAITY = textwrap.dedent(
    """
    import ctypes, os, sys, threading, time
    import gilfree

    def waity(x):
        time.sleep(0.005)
        if x in SEGV:
            ctypes.string_at(0)
        if x in EXIT:
            os._exit(3)
        if x in HANG:
            time.sleep(60)
        if x in RAISE:
            raise ValueError(f"bad {x}")
        if x in LOCK:
            return threading.Lock()
        return x * 2

    def show(out):
        return [type(v).__name__ if isinstance(v, BaseException) else v for v in out]
    """
)


def run_waity(body: str, timeout: float = 90, **faults: tuple[int, ...]):
    sets = "".join(
        f"{name} = {set(faults.get(name.lower(), ()))!r}\n"
        for name in ("SEGV", "EXIT", "HANG", "RAISE", "LOCK")
    )
    dump = f"import faulthandler; faulthandler.dump_traceback_later({timeout - 20}, exit=True)\n"
    code = dump + sets + WAITY + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


def test_calls_not_probed_that_crash_hang_or_raise_fail_alone_and_the_caller_lives():
    # 200 items: the probe takes at most a few; 120-190 run after it, in batches.
    proc = run_waity(
        """
        plan = gilfree.advise(waity, range(40))
        print(plan.backend, any("inside" in r for r in plan.reasons))
        t = time.monotonic()
        out = gilfree.map(waity, range(200), errors="return", timeout=2)
        print(round(time.monotonic() - t))
        shown = show(out)
        print([(i, v) for i, v in enumerate(shown) if v != 2 * i])
        print(type(out[150]).__name__ == "TaskTimeout" and "in waity" in out[150].stack)
        print("alive")
        """,
        segv=(120,),
        exit=(131,),
        hang=(150,),
        **{"raise": (170,), "lock": (190,)},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "thread True", proc.stdout
    assert int(lines[1]) < 30, proc.stdout  # the hung call was stopped at 2 s, not 60
    assert lines[2] == str(
        [
            (120, "WorkerDied"),
            (131, "WorkerDied"),
            (150, "TaskTimeout"),
            (170, "ValueError"),
            (190, "SerializationError"),
        ]
    ), proc.stdout
    assert lines[3:] == ["True", "alive"], proc.stdout


def test_errors_raise_raises_worker_died_in_a_living_caller_on_imap():
    proc = run_waity(
        """
        try:
            for _ in gilfree.imap(waity, range(300)):
                pass
        except gilfree.WorkerDied as exc:
            print("WorkerDied", "task 200" in str(exc))
        print("alive")
        """,
        segv=(200,),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["WorkerDied", "True", "alive"], proc.stdout


def test_unordered_imap_gives_every_result_once():
    proc = run_waity(
        """
        out = list(gilfree.imap(waity, range(500), ordered=False))
        print(sorted(out) == [2 * x for x in range(500)])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"], proc.stdout


def flaky_once(path):
    """Raises on its first call for item 150 (any process), then succeeds."""
    path = str(path)

    def call(x):
        time.sleep(0.005)
        if x == 150 and not os.path.exists(path):
            open(path, "w").close()
            raise ValueError("first time")
        return x

    return call


def test_retries_run_a_failed_call_again(tmp_path):
    fn = flaky_once(tmp_path / "seen")
    assert gilfree.map(fn, range(200), retries=1) == list(range(200))
    assert (tmp_path / "seen").exists()


def test_without_retries_the_failure_is_the_calls_own(tmp_path):
    fn = flaky_once(tmp_path / "seen")
    out = gilfree.map(fn, range(200), errors="return")
    assert isinstance(out[150], ValueError) and "first time" in str(out[150])
    assert [v for i, v in enumerate(out) if i != 150] == [i for i in range(200) if i != 150]


def napper(x):
    time.sleep(0.005 if x != 100 else 30)
    return x


def test_a_late_call_is_a_timeout_and_the_calls_after_it_still_run():
    t = time.monotonic()
    out = gilfree.map(napper, range(400), timeout=1, errors="return")
    assert time.monotonic() - t < 25
    assert isinstance(out[100], TaskTimeout)
    assert "napper" in out[100].stack
    assert [v for i, v in enumerate(out) if i != 100] == [i for i in range(400) if i != 100]


def big_arg(a):
    time.sleep(0.002)
    return len(a)


def test_large_arguments_stay_on_threads_here_and_the_plan_says_so():
    items = [bytes(4 << 20)] * 6
    plan = gilfree.advise(big_arg, items)
    if plan.backend == "thread":
        assert any("threads in this process" in r for r in plan.reasons), plan.reasons
        assert not any("inside" in r for r in plan.reasons), plan.reasons
    assert gilfree.map(big_arg, items) == [4 << 20] * 6


def test_ctrl_c_while_batches_run_is_clean(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, time, gilfree
            def nap(x):
                time.sleep(0.01 if x < 100 else 60)
                return os.getpid()
            print("ready", flush=True)
            try:
                gilfree.map(nap, range(400))
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
        time.sleep(3)  # past the probe: batches of the plan run in the workers
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert "interrupted" in out, err
    assert proc.returncode == 0, err


def test_a_call_holding_the_gil_past_its_timeout_is_stopped_within_a_few_timeouts():
    # libc's sleep through PyDLL keeps the GIL: the worker's threads cannot
    # mark the call late, so the pool stops the worker (its clock follows
    # the oldest running call) and the batch's calls run again alone.
    proc = run_waity(
        """
        import ctypes
        def gil_hang(x):
            time.sleep(0.005)
            if x == 150:
                ctypes.PyDLL("libc.so.6").sleep(600)
            return x
        t = time.monotonic()
        out = gilfree.map(gil_hang, range(200), errors="return", timeout=1)
        print(time.monotonic() - t < 15, type(out[150]).__name__)
        print(sum(v == i for i, v in enumerate(out)))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "TaskTimeout", "199"], proc.stdout


def test_an_unpicklable_first_item_fails_alone_and_the_rest_stay_in_workers():
    # The probe met the lock first; the plan still runs the calls in workers.
    proc = run_waity(
        """
        items = [threading.Lock(), *range(1, 200)]
        out = gilfree.map(waity, items, errors="return")
        print([(i, v) for i, v in enumerate(show(out)) if v != 2 * i])
        """,
        segv=(150,),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == str([(0, "SerializationError"), (150, "WorkerDied")])


def test_a_plan_made_on_large_arguments_is_not_kept_in_the_caller_for_small_ones():
    proc = run_waity(
        """
        def sized(x):
            time.sleep(0.005)
            if x == 150:
                ctypes.string_at(0)
            return len(x) if isinstance(x, bytes) else x
        big = [bytes(4 << 20)] * 8
        print(gilfree.map(sized, big) == [4 << 20] * 8)
        out = gilfree.map(sized, range(200), errors="return")
        print([(i, v) for i, v in enumerate(show(out)) if v != i])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["True", str([(150, "WorkerDied")])], proc.stdout


def test_a_function_that_does_not_unpickle_in_a_worker_runs_every_call_here():
    # A global ctypes library pickles (cloudpickle) and fails to unpickle.
    proc = run_waity(
        """
        libc = ctypes.CDLL("libc.so.6")
        def pid(x):
            libc.usleep(2000)  # a C call, as a new user's did: probed on the pool
            return libc.getpid() == os.getpid(), x
        for _ in range(2):
            out = gilfree.map(pid, range(200), errors="return")
            print(all(v == (True, i) for i, v in enumerate(out)))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"], proc.stdout


def test_a_crash_in_a_probed_call_keeps_the_plan_on_threads_in_workers():
    # Threads in workers confine a crash as processes do: a crash in the probe
    # no longer sends an I/O-bound job to one call per process (60 s for what
    # takes 3 s on threads, a new user measured).
    proc = run_waity(
        """
        out = gilfree.map(waity, range(200), errors="return")
        print([(i, v) for i, v in enumerate(show(out)) if v != 2 * i])
        plan = gilfree.advise(waity, range(8))
        print(plan.backend, any("all the same" in r for r in plan.reasons))
        """,
        segv=(0,),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str([(0, "WorkerDied")]), "thread True"], proc.stdout

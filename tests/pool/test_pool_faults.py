"""Fault injection: the process pool never hangs, never leaks, never loses a result.

Each test runs under a timeout, and the leak guard in conftest fails any test
that leaves a child process behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import gilfree
from gilfree import SerializationError, TaskTimeout, WorkerDied

pytestmark = pytest.mark.timeout(60)


# -- crash cases: (name, how the worker dies, what WorkerDied reports) ------------------
def die_exit(x):
    if x == 5:
        os._exit(3)
    return x


def die_sigkill(x):  # what the OOM killer does
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def die_segfault(x):
    if x == 5:
        ctypes.string_at(0)
    return x


def die_abort(x):
    if x == 5:
        os.abort()
    return x


CRASHES = [
    (die_exit, 3, None),
    (die_sigkill, -signal.SIGKILL, "SIGKILL"),
    (die_segfault, -signal.SIGSEGV, "SIGSEGV"),
    (die_abort, -signal.SIGABRT, "SIGABRT"),
]


@pytest.mark.parametrize("fn, exitcode, signame", CRASHES, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("chunksize", [1, 10])
def test_a_dying_worker_fails_only_its_task(fn, exitcode, signame, chunksize):
    out = gilfree.map(
        fn, range(20), backend="process", workers=2, chunksize=chunksize, errors="return"
    )
    assert out[:5] == [0, 1, 2, 3, 4] and out[6:] == list(range(6, 20))
    err = out[5]
    assert isinstance(err, WorkerDied)
    assert err.index == 5 and err.exitcode == exitcode and err.signal_name == signame
    assert "task 5" in str(err) and "input: 5" in str(err)


def test_segfault_reports_the_python_stack():
    out = gilfree.map(die_segfault, [5], backend="process", errors="return")
    assert "die_segfault" in out[0].stack


def test_pool_replaces_dead_workers_and_goes_on():
    with gilfree.Executor(backend="process", workers=2) as ex:
        before = set(ex.statistics()[0]["pids"])
        assert isinstance(ex.submit(die_sigkill, 5).exception(timeout=30), WorkerDied)
        assert [ex.submit(abs, -i).result(timeout=30) for i in range(10)] == list(range(10))
        after = set(ex.statistics()[0]["pids"])
        assert len(after) == 2 and after != before


def test_errors_raise_surfaces_a_death_promptly_and_stops_the_rest():
    t0 = time.monotonic()
    with pytest.raises(WorkerDied):
        gilfree.map(die_or_sleep, range(8), backend="process", workers=2)
    assert time.monotonic() - t0 < 8  # the sleepers (20 s) were stopped, not awaited


def die_or_sleep(x):
    if x == 0:
        time.sleep(0.2)
        os._exit(1)
    time.sleep(20)
    return x


# -- timeouts ----------------------------------------------------------------------------
def hang_on_3(x):
    if x == 3:
        time.sleep(60)
    return x


def test_timeout_stops_the_worker_and_reports_its_stack():
    t0 = time.monotonic()
    out = gilfree.map(hang_on_3, range(8), backend="process", workers=2, timeout=1, errors="return")
    assert time.monotonic() - t0 < 10
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5, 6, 7]
    err = out[3]
    assert isinstance(err, TaskTimeout) and isinstance(err, TimeoutError)
    assert err.index == 3 and "hang_on_3" in err.stack and "time.sleep" not in err.stack[:0]
    assert "hang_on_3" in str(err)


def test_timeout_inside_a_chunk_fails_only_that_task():
    out = gilfree.map(
        hang_on_3, range(10), backend="process", workers=1, chunksize=10, timeout=1, errors="return"
    )
    assert [type(v).__name__ for v in out].count("TaskTimeout") == 1
    assert out[:3] == [0, 1, 2] and out[4:] == list(range(4, 10))


def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_a_task_that_ends_just_after_its_timeout_is_a_timeout():
    # It ends while its stack is being read: the value it sends is dropped.
    # (It came back as a value for any overrun shorter than the read, ~50 ms.)
    naps = [0.06, 0.0, 0.1, 0.0] * 3
    out = gilfree.map(nap, naps, backend="process", workers=2, timeout=0.02, errors="return")
    assert [type(v).__name__ for v in out] == ["TaskTimeout", "float"] * 6, out
    assert all(out[i].index == i and "nap" in out[i].stack for i in range(0, 12, 2))


def stop_self_or_nap(x):
    if x == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped: it cannot write its stack
    time.sleep(0.01)
    return x


def test_a_worker_being_dumped_holds_up_no_other_worker():
    # The stopped worker is killed DUMP_WAIT_S (1 s) after its task overran,
    # without a stack; meanwhile the other worker's results keep coming.
    with gilfree.Executor(backend="process", workers=2, timeout=0.5) as ex:
        stopped = ex.submit(stop_self_or_nap, "stop")
        time.sleep(0.7)  # past its timeout: its worker takes no more work
        others = [ex.submit(stop_self_or_nap, k) for k in range(10)]
        err = stopped.exception(timeout=30)
        assert isinstance(err, TaskTimeout), err
        assert all(f.done() for f in others)
        assert [f.result() for f in others] == list(range(10))


# -- retries -------------------------------------------------------------------------------
class CrashOnce:
    """Dies (or hangs) on the first attempt of item 1, succeeds after."""

    def __init__(self, path, how):
        self.path, self.how = path, how

    def __call__(self, x):
        if x == 1 and not os.path.exists(self.path):
            open(self.path, "w").close()
            if self.how == "die":
                os._exit(9)
            time.sleep(60)
        return x * 10


@pytest.mark.parametrize("how", ["die", "hang"])
def test_retries_cover_deaths_and_timeouts(tmp_path, how):
    fn = CrashOnce(str(tmp_path / "seen"), how)
    out = gilfree.map(fn, range(4), backend="process", workers=2, retries=1, timeout=2)
    assert out == [0, 10, 20, 30]


# -- serialization ------------------------------------------------------------------------
class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_unpicklable(x):
    if x == 1:
        raise NeedsTwoArgs("a", "b")
    return x


def return_lock(x):
    return threading.Lock() if x == 2 else x


def test_unpicklable_argument_fails_its_task_only():
    out = gilfree.map(abs, [1, -2, threading.Lock(), -4], backend="process", errors="return")
    assert out[:2] == [1, 2] and out[3] == 4
    assert isinstance(out[2], SerializationError) and out[2].what == "argument"
    assert "task 2" in str(out[2]) and "lock" in str(out[2])


def test_unpicklable_result_fails_its_task_only():
    out = gilfree.map(return_lock, range(4), backend="process", errors="return")
    assert out[:2] == [0, 1] and out[3] == 3
    assert isinstance(out[2], SerializationError) and out[2].what == "result"
    assert "lock" in str(out[2])


def test_exception_that_cannot_be_unpickled_is_reported_not_hung():
    # In a fresh interpreter: importing dask.distributed installs tblib's
    # exception reducers process-wide, which make such exceptions picklable.
    code = textwrap.dedent("""
        import gilfree
        from test_pool_faults import raise_unpicklable
        out = gilfree.map(raise_unpicklable, range(3), backend="process", errors="return")
        print(out[0], out[2], type(out[1]).__name__, out[1])
    """)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(__file__),
    )
    assert done.returncode == 0, done.stderr
    first, last, kind, message = done.stdout.split(" ", 3)
    assert (first, last, kind) == ("0", "2", "SerializationError")
    assert "NeedsTwoArgs" in message and "cannot be pickled" in message


def test_unpicklable_function_names_itself():
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"function .* cannot be pickled") as info:
        gilfree.map(lambda x: (lock, x), range(3), backend="process")
    assert info.value.what == "function"

    def uses_lock(x):
        return lock, x

    # Executor.submit wraps fn(*args) in an adapter: the message names fn, not it.
    with gilfree.Executor(backend="process", workers=1) as ex:
        err = ex.submit(uses_lock, 1).exception(timeout=60)
    assert isinstance(err, SerializationError) and err.what == "function"
    assert "uses_lock" in str(err) and "_StarCall" not in str(err), err


# -- recycling and memory --------------------------------------------------------------------
def test_max_tasks_per_worker_recycles_workers():
    pids = gilfree.map(_pid, range(12), backend="process", workers=2, max_tasks_per_worker=3)
    counts = {p: pids.count(p) for p in set(pids)}
    assert max(counts.values()) <= 3 and len(counts) >= 4


def _pid(_):
    return os.getpid()


_hoard = []


def grow(_):
    _hoard.append(bytearray(20 << 20))  # 20 MiB kept per task
    return os.getpid()


def rss(_):
    return psutil.Process().memory_info().rss


def test_max_worker_memory_recycles_workers():
    # A worker's own size to grow from: a forked one maps the caller's heap, one
    # from the fork server (the caller has threads) is a small interpreter.
    base = gilfree.map(rss, [0], backend="process", workers=1)[0]
    pids = gilfree.map(
        grow,
        range(8),
        backend="process",
        workers=1,
        chunksize=1,
        max_worker_memory=base + (50 << 20),
    )
    assert len(set(pids)) >= 2


def test_ten_million_items_through_imap_in_bounded_memory():
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = before
    n = 0
    for _ in gilfree.imap(abs, (i for i in range(10_000_000)), backend="process"):
        n += 1
        if n % 1_000_000 == 0:
            peak = max(peak, proc.memory_info().rss)
    assert n == 10_000_000
    # A list of ten million results alone would take ~400 MB.
    assert peak - before < 150 << 20, f"parent grew by {(peak - before) >> 20} MiB"


# -- Ctrl-C and parent death, in a separate interpreter ------------------------------------
SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time
    import gilfree

    if sys.argv[1] == "thread":
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()

    def nap(x):
        time.sleep(30)
        return x

    def hold_gil(x):
        os.write(1, f"{os.getpid()}\\n".encode())
        return (7 ** (5 * 10**7)) & 1  # one C call of ~100 s that never releases the GIL

    if sys.argv[2] == "gil":
        gilfree.map(hold_gil, range(2), backend="process", workers=2, chunksize=1)

    def report_pid(x):
        os.write(1, f"{os.getpid()}\\n".encode())  # one write: lines from 2 workers stay whole
        time.sleep(30)

    if sys.argv[2] == "map":
        try:
            gilfree.map(report_pid, range(2), backend="process", workers=2, chunksize=1)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            raise

    with gilfree.Executor(backend="process", workers=2) as ex:
        pids = ex.statistics()[0]["pids"]
        print(" ".join(map(str, pids)), flush=True)
        try:
            ex.map(nap, range(4))
            list(ex.map(nap, range(4)))
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            raise
    """
)


def _start_script(tmp_path, mode, api):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(path), mode, api],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if api in ("map", "gil"):  # each worker prints its pid as its task starts
        pids = [int(proc.stdout.readline()) for _ in range(2)]
    else:
        pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2, proc.stderr.read()
    time.sleep(0.5)  # let the tasks start
    return proc, pids


def _gone(pids, within):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [
            p
            for p in pids
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("api", ["executor", "map"])
@pytest.mark.parametrize("mode", ["plain", "thread"])
def test_ctrl_c_reaches_the_user_within_two_seconds(tmp_path, mode, api):
    proc, pids = _start_script(tmp_path, mode, api)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    took = time.monotonic() - t0
    assert took < 2.0, f"exited {took:.2f} s after SIGINT; stderr: {err[-2000:]}"
    assert "KeyboardInterrupt" in out and proc.returncode != 0, err[-2000:]
    assert _gone(pids, 2.0), "workers outlived the interrupted parent"


@pytest.mark.parametrize("api", ["executor", "map", "gil"])
@pytest.mark.parametrize("mode", ["plain", "thread"])
def test_workers_exit_when_the_parent_is_killed(tmp_path, mode, api):
    proc, pids = _start_script(tmp_path, mode, api)
    proc.kill()
    proc.communicate(timeout=10)
    assert _gone(pids, 5.0), "workers outlived their parent"


def test_forked_workers_run_none_of_the_callers_exit_hooks(tmp_path):
    # They are the caller's to run: a worker that ran them shut down copies of
    # the caller's executors and held every shutdown up for its grace period.
    marks = tmp_path / "exits"
    script = tmp_path / "s.py"
    script.write_text(
        "import atexit, os, threading, gilfree\n"
        f"mark = lambda: open({str(marks)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        # Both kinds of hook: concurrent.futures and gilfree use threading's.
        "atexit.register(mark)\n"
        "threading._register_atexit(mark)\n"
        "with gilfree.Executor(backend='process', workers=2) as ex:\n"
        "    assert [ex.submit(abs, -i).result() for i in range(4)] == [0, 1, 2, 3]\n"
        "assert gilfree.map(abs, [-1, -2], backend='process') == [1, 2]\n"
        "print(os.getpid())\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert marks.read_text().split() == [proc.stdout.strip()] * 2  # the caller's hooks, once


OPEN_EXECUTOR = textwrap.dedent(
    """
    import os, sys, time
    import gilfree

    def hold(x):
        os.write(1, b"started\\n")
        time.sleep(3600 if x == 0 else 0.01)
        return x

    ex = gilfree.Executor(backend=sys.argv[1], workers=2)  # no with, no shutdown
    futures = [ex.submit(hold, i) for i in range(10)]
    [f.result() for f in futures]
    """
)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_ctrl_c_ends_a_program_whose_executor_is_still_open(tmp_path, backend):
    # The exit hook finishes submitted work, as concurrent.futures does; after
    # Ctrl-C it waited for the hour-long task instead (only a second Ctrl-C ended it).
    path = tmp_path / "script.py"
    path.write_text(OPEN_EXECUTOR)
    proc = subprocess.Popen(
        [sys.executable, str(path), backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        children = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    assert took < 5.0, f"exited {took:.2f} s after SIGINT; stderr: {err[-2000:]}"
    assert "KeyboardInterrupt" in err and proc.returncode != 0, err[-2000:]
    assert _gone([c.pid for c in children], 5.0), "workers outlived the interrupted program"

"""The gilfree command, driven as a subprocess: run, advise, bench.

Every command runs in its own session (process group) under a timeout; after
it exits we wait for anything left in that group and fail the test if a
process outlived the command.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import psutil
import pytest

TASKS = textwrap.dedent(
    """
    import os
    import time

    def square(x):
        return x * x

    def fail_on_odd(x):
        if x % 2:
            raise ValueError(f"odd input {x}")
        return x

    def slow(x):
        time.sleep(0.02)
        return x * 10

    def as_set(x):
        return {x}

    def gated(x):
        # Item 0 waits until item 5 runs (in another worker process): the two meet
        # at a FIFO, whose opening for reading blocks until a writer opens it.
        # Unordered output cannot start with 0.
        if x == 0:
            os.close(os.open(os.environ["GATE"], os.O_RDONLY))
        if x == 5:
            os.close(os.open(os.environ["GATE"], os.O_WRONLY))
        return x

    def logged(x):
        with open(os.environ["CALLS_LOG"], "a") as f:
            f.write(f"{x}\\n")
        return x + 1

    not_a_function = 42
    """
)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(TASKS)
    return tmp_path


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return members


def _reap_group(pgid: int) -> list[str]:
    """Wait briefly for processes left in the group, kill them, return what was left."""
    left = _group_members(pgid)
    if not left:
        return []
    _gone, alive = psutil.wait_procs(left, timeout=5)
    names = []
    for proc in alive:
        try:
            names.append(" ".join(proc.cmdline()) or proc.name())
            proc.kill()
        except psutil.Error:
            continue
    return names


class Gilfree:
    """Starts ``python -m gilfree`` in its own process group, in ``cwd``."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.env.pop("GILFREE_DASK_ADDRESS", None)

    def start(self, *args: str, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, stdout=None):
        return subprocess.Popen(
            [sys.executable, "-m", "gilfree", *args],
            cwd=self.cwd,
            env=self.env,
            stdin=stdin,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=stderr,
            start_new_session=True,
        )

    def __call__(
        self, *args: str, input: bytes | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        proc = self.start(*args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        finally:
            left = _reap_group(proc.pid)
        assert not left, f"processes left behind: {left}"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err.decode())


@pytest.fixture
def gilfree(work: Path) -> Gilfree:
    return Gilfree(work)


def write_lines(path: Path, values) -> Path:
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    return path


def records(data: bytes | str) -> list[dict]:
    text = data.decode() if isinstance(data, bytes) else data
    return [json.loads(line) for line in text.splitlines()]


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# ---------------------------------------------------------------- run: results


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["serial", "thread"])
def test_run_writes_one_ordered_record_per_line(gilfree, work, backend):
    src = write_lines(work / "in.jsonl", range(50))
    result = gilfree("run", "tasks:square", str(src), "--backend", backend)
    assert result.returncode == 0, result.stderr
    assert records(result.stdout) == [{"index": i, "result": i * i} for i in range(50)]
    # No progress bar when stderr is a pipe; one line says the calls run in worker processes.
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "worker process" in lines[0] and backend in lines[0], lines


@pytest.mark.timeout(60)
def test_run_reads_stdin_and_accepts_a_py_path(gilfree, work, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = Gilfree(elsewhere)(
        "run", f"{work / 'tasks.py'}:square", "--backend", "thread", input=b"3\n4\n"
    )
    assert result.returncode == 0, result.stderr
    assert records(result.stdout) == [{"index": 0, "result": 9}, {"index": 1, "result": 16}]


@pytest.mark.timeout(60)
def test_process_backend_with_a_py_path_and_a_dotted_module(gilfree, work, tmp_path_factory):
    # A module loaded from a path travels to process workers by value, a dotted
    # one by name (the workers find it on the path of the command's directory).
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    src = write_lines(work / "in.jsonl", range(6))
    by_path = Gilfree(elsewhere)(
        "run", f"{work / 'tasks.py'}:fail_on_odd", str(src), "--backend", "process"
    )
    by_name = gilfree("run", "tasks:fail_on_odd", str(src), "--backend", "process")
    for result in (by_path, by_name):
        assert result.returncode == 1, result.stderr
        got = records(result.stdout)
        assert [r.get("result") for r in got] == [0, None, 2, None, 4, None]
        assert [r["error"]["type"] for r in got if "error" in r] == ["ValueError"] * 3
        assert "fail_on_odd" in got[1]["error"]["traceback"]


@pytest.mark.timeout(60)
def test_unordered_writes_records_as_they_complete(work):
    src = write_lines(work / "in.jsonl", range(8))
    os.mkfifo(work / "gate")
    gilfree = Gilfree(work, env={"GATE": str(work / "gate")})
    args = ["tasks:gated", str(src), "--backend", "process", "--workers", "2", "--chunksize", "1"]
    unordered = gilfree("run", *args, "--unordered")
    assert unordered.returncode == 0, unordered.stderr
    got = records(unordered.stdout)
    assert sorted(r["index"] for r in got) == list(range(8))
    assert all(r["result"] == r["index"] for r in got)
    # Item 0 could not finish before item 5 ran, so it cannot come first.
    assert got[0]["index"] != 0
    ordered = gilfree("run", *args)
    assert [r["index"] for r in records(ordered.stdout)] == list(range(8))


@pytest.mark.timeout(60)
def test_bad_json_lines_become_input_errors_and_the_rest_runs(gilfree, work):
    src = work / "in.jsonl"
    src.write_bytes(b'1\n{"a": \n\n2\n\xff\xfe\n3')  # broken, blank, not UTF-8, no final newline
    result = gilfree("run", "tasks:square", str(src), "--backend", "serial")
    assert result.returncode == 1
    got = records(result.stdout)
    assert [r["index"] for r in got] == [0, 1, 3, 4, 5]  # line numbers; the blank line is skipped
    assert got[0] == {"index": 0, "result": 1}
    assert got[2] == {"index": 3, "result": 4}
    assert got[4] == {"index": 5, "result": 9}
    for bad in (got[1], got[3]):
        assert bad["error"]["type"] == "InputError"
        assert bad["error"]["message"]
        assert bad["error"]["traceback"] == ""
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_task_errors_give_error_records_and_exit_1(gilfree, work):
    src = write_lines(work / "in.jsonl", range(6))
    result = gilfree("run", "tasks:fail_on_odd", str(src), "--backend", "thread")
    assert result.returncode == 1
    got = records(result.stdout)
    assert [r["index"] for r in got] == list(range(6))
    for r in got:
        if r["index"] % 2:
            assert r["error"]["type"] == "ValueError"
            assert r["error"]["message"] == f"odd input {r['index']}"
            assert "fail_on_odd" in r["error"]["traceback"]
        else:
            assert r == {"index": r["index"], "result": r["index"]}


@pytest.mark.timeout(60)
def test_a_result_that_is_not_json_is_an_error_record(gilfree, work):
    src = write_lines(work / "in.jsonl", [1, 2])
    result = gilfree("run", "tasks:as_set", str(src), "--backend", "serial")
    assert result.returncode == 1
    got = records(result.stdout)
    assert [r["error"]["type"] for r in got] == ["SerializationError"] * 2
    assert "set" in got[0]["error"]["message"]


_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


@pytest.mark.timeout(90)
def test_run_streams_in_bounded_memory(work):
    # Peak RSS of the command for 16x more input: a per-item leak of even 100
    # bytes would add 30 MB. (Serial, one worker process: the command's own streaming
    # is under test, not a wide pool's window, which grows with its adaptive chunks.)
    backend = "serial"
    peaks = {}
    for n in (20_000, 320_000):
        src = work / f"in{n}.jsonl"
        src.write_text("".join(f"{i}\n" for i in range(n)))
        cmd = [sys.executable, "-m", "gilfree", "run", "tasks:square", str(src)]
        cmd += ["-o", str(work / "out.jsonl"), "--backend", backend, "--overwrite"]
        cmd += ["--chunksize", "256"]  # a fixed window of items in flight
        proc = subprocess.Popen(
            [sys.executable, "-c", _PEAK_RSS, *cmd],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            left = _reap_group(proc.pid)
        assert proc.returncode == 0, err
        assert not left
        assert (work / "out.jsonl").read_bytes().count(b"\n") == n
        peaks[n] = int(out)  # KiB
    # 300,000 more lines: a 100-byte per-item leak would add 30 MB; allow 12.
    assert peaks[320_000] < peaks[20_000] + 12_000, peaks


# ---------------------------------------------------------------- run: bad usage


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "no_such_module:f", "in.jsonl"], ["no_such_module"]),
        (["run", "tasks:no_such_function", "in.jsonl"], ["no_such_function"]),
        (["run", "tasks:not_a_function", "in.jsonl"], ["not a function"]),
        (["run", "./missing.py:f", "in.jsonl"], ["missing.py"]),
        (["run", "tasks", "in.jsonl"], ["MODULE:FUNC"]),
        (["run", "broken:f", "in.jsonl"], ["ZeroDivisionError", "broken.py"]),
        (["run", "tasks:square", "missing.jsonl"], ["missing.jsonl"]),
        (["run", "tasks:square", "."], ["directory"]),
        (["run", "tasks:square", "in.jsonl", "--workers", "0"], ["--workers"]),
        (["run", "tasks:square", "in.jsonl", "--timeout", "-1"], ["--timeout"]),
        (["run", "tasks:square", "in.jsonl", "--backend", "gpu"], ["--backend"]),
        (["run", "tasks:square", "in.jsonl", "--resume"], ["--resume"]),
        (["run", "tasks:square", "in.jsonl", "-o", "in.jsonl"], ["input"]),
        (["run", "tasks:square", "in.jsonl", "-o", "no/such/dir/out.jsonl"], ["out.jsonl"]),
        (["advise", "tasks:square", "missing.jsonl"], ["missing.jsonl"]),
        (["advise", "tasks:square", "bad.jsonl"], ["line 2", "JSON"]),
        (["advise", "tasks:square", "empty.jsonl"], ["no JSON lines"]),
        (["advise", "tasks:nope", "in.jsonl"], ["nope"]),
        (["frobnicate"], ["frobnicate"]),
        (["bench", "--only", "nonsense"], ["nonsense"]),
        pytest.param(
            ["bench", "--plot", "no/such/dir/b.png"],
            ["no/such/dir"],
            marks=pytest.mark.skipif(
                importlib.util.find_spec("matplotlib") is None,
                reason="the plot extra (matplotlib) is not installed",
            ),
        ),
    ],
)
def test_bad_usage_exits_2_with_one_plain_line(gilfree, work, args, words):
    write_lines(work / "in.jsonl", [1, 2])
    (work / "bad.jsonl").write_text("1\n{oops\n")
    (work / "empty.jsonl").write_text("\n")
    (work / "broken.py").write_text("x = 1\ny = 1 / 0\n")
    result = gilfree(*args)
    assert_usage_error(result, *words)
    assert result.stdout == b""
    assert (work / "in.jsonl").read_text() == "1\n2\n"  # never clobbered


# ---------------------------------------------------------------- run: crash and resume


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended (status {proc.returncode}) before writing {n} lines")
        time.sleep(0.01)
    pytest.fail(f"{path} did not reach {n} lines in {timeout} s")


def _kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert not _reap_group(proc.pid)


@pytest.mark.timeout(90)
@pytest.mark.skip_in_test_pythons(
    "resuming is the output file's bookkeeping, the same on every interpreter; make test "
    "runs it (4 backends, ~30 s)"
)
@pytest.mark.parametrize("backend", ["serial", "thread", "process", "auto"])
def test_killed_with_sigkill_then_resumed_every_index_exactly_once(gilfree, work, backend):
    n = 150  # 20 ms each on 2 workers: some 1.5 s, so every kill lands mid-run
    src = write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    args = ["run", "tasks:slow", str(src), "-o", str(out), "--backend", backend, "--resume"]
    if backend != "serial":
        args += ["--workers", "2", "--chunksize", "1"]
    for stop_at in (10, 40, 80):  # three crashes at different points
        proc = gilfree.start(*args, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        _wait_for_lines(out, stop_at, proc)
        proc.kill()  # SIGKILL to the command itself: no chance to clean up
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        assert not _reap_group(proc.pid)
    done_before = out.read_bytes().count(b"\n")
    assert done_before < n
    result = gilfree(*args, timeout=60)
    assert result.returncode == 0, result.stderr
    got = records(out.read_text())
    assert sorted(r["index"] for r in got) == list(range(n))
    assert all(r["result"] == r["index"] * 10 for r in got)


@pytest.mark.timeout(60)
def test_resume_repairs_a_torn_last_line_and_skips_done_indices(gilfree, work):
    src = write_lines(work / "in.jsonl", range(10))
    out = work / "out.jsonl"
    # Whole records for 0-2 and 5 (one of them an error), then a line torn mid-write.
    out.write_text(
        '{"index": 0, "result": 1}\n{"index": 1, "result": 2}\n'
        '{"index": 5, "error": {"type": "ValueError", "message": "x", "traceback": ""}}\n'
        '{"index": 2, "result": 3}\n{"index": 3, "res'
    )
    calls = work / "calls.log"
    result = Gilfree(work, env={"CALLS_LOG": str(calls)})(
        "run", "tasks:logged", str(src), "-o", str(out), "--resume", "--backend", "serial"
    )
    assert result.returncode == 1  # the earlier error record still stands
    assert "torn" in result.stderr
    assert sorted(int(x) for x in calls.read_text().split()) == [3, 4, 6, 7, 8, 9]
    got = records(out.read_text())
    assert sorted(r["index"] for r in got) == list(range(10))
    assert {r["index"]: r.get("result") for r in got}[3] == 4


@pytest.mark.timeout(60)
def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(gilfree, work):
    n = 1000  # 20 s serially: still running, however slow the machine, when killed below
    src = write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    args = ["run", "tasks:slow", str(src), "-o", str(out), "--backend", "serial"]
    first = gilfree.start(*args, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        _wait_for_lines(out, 3, first)
        for extra in (["--resume"], []):  # neither appending nor truncating
            second = gilfree(*args, *extra)
            assert_usage_error(second, "another gilfree run")
        assert first.poll() is None
        assert out.read_bytes().count(b"\n") >= 3
    finally:
        _kill_group(first)
    resumed = gilfree(*args, "--resume", "--backend", "thread", "--workers", "32")
    assert resumed.returncode == 0
    assert sorted(r["index"] for r in records(out.read_text())) == list(range(n))


@pytest.mark.timeout(60)
def test_resume_refuses_a_file_that_is_not_gilfree_output(gilfree, work):
    src = write_lines(work / "in.jsonl", range(3))
    out = work / "out.jsonl"
    out.write_text('{"index": 0, "result": 1}\nsome notes\n')
    result = gilfree("run", "tasks:square", str(src), "-o", str(out), "--resume")
    assert_usage_error(result, "line 2")
    assert out.read_text() == '{"index": 0, "result": 1}\nsome notes\n'


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("backend", "how", "status"),
    [
        ("thread", "ctrl-c", 130),
        ("process", "ctrl-c", 130),
        ("process", "sigterm", 128 + signal.SIGTERM),
    ],
)
def test_ctrl_c_stops_cleanly_and_keeps_what_was_done(gilfree, work, backend, how, status):
    n = 200
    src = write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    args = ["run", "tasks:slow", str(src), "-o", str(out), "--backend", backend, "--workers", "2"]
    proc = gilfree.start(*args)
    _wait_for_lines(out, 10, proc)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole group
    else:
        proc.terminate()  # SIGTERM to the command alone: it must stop its own workers
    try:
        _out, err = proc.communicate(timeout=20)
    finally:
        left = _reap_group(proc.pid)
    assert not left
    assert proc.returncode == status
    assert "Traceback" not in err.decode()
    assert "--resume" in err.decode()
    data = out.read_bytes()
    assert data.endswith(b"\n")
    kept = records(data)
    assert 10 <= len(kept) < n
    resumed = gilfree(*args, "--resume", timeout=60)
    assert resumed.returncode == 0
    assert sorted(r["index"] for r in records(out.read_text())) == list(range(n))


# ---------------------------------------------------------------- progress bar


def _run_on_pty(gilfree: Gilfree, *args: str, timeout: float = 30) -> tuple[int, str]:
    """Run with stderr on a real pseudo-terminal; return (status, what the terminal got)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = gilfree.start(*args, stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: every writer of the terminal has closed it
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        left = _reap_group(proc.pid)
    assert not left
    return status, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.timeout(60)
def test_progress_bar_on_a_terminal(gilfree, work):
    src = write_lines(work / "in.jsonl", range(30))
    out = work / "out.jsonl"
    status, screen = _run_on_pty(
        gilfree, "run", "tasks:slow", str(src), "-o", str(out), "--backend", "thread"
    )
    assert status == 0, screen
    assert "30/30" in screen
    assert "100%" in screen
    assert "items/s" in screen
    assert "left" in screen
    assert len(records(out.read_text())) == 30


@pytest.mark.timeout(60)
def test_no_progress_bar_when_stderr_is_a_pipe(gilfree, work):
    src = write_lines(work / "in.jsonl", range(30))
    out = work / "out.jsonl"
    result = gilfree("run", "tasks:slow", str(src), "-o", str(out), "--backend", "process")
    assert result.returncode == 0
    assert result.stderr == ""
    assert len(records(out.read_text())) == 30


# ---------------------------------------------------------------- advise and bench


@pytest.mark.timeout(90)
def test_advise_json_is_a_plan(gilfree, work):
    src = write_lines(work / "in.jsonl", [200, 300, 400, 500])
    result = gilfree("advise", "tasks:square", str(src), "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["backend"] in ("serial", "thread", "process")
    assert plan["reasons"] and all(isinstance(r, str) for r in plan["reasons"])
    text = gilfree("advise", "tasks:square", str(src), timeout=60)
    assert text.returncode == 0, text.stderr
    assert plan["backend"] in text.stdout.decode()


@pytest.mark.timeout(30)
def test_advise_without_input_on_a_terminal_is_a_usage_error(gilfree, work):
    status, screen = 0, ""
    master, slave = pty.openpty()
    try:
        proc = gilfree.start("advise", "tasks:square", stdin=slave, stderr=subprocess.PIPE)
        _out, err = proc.communicate(timeout=20)
        status, screen = proc.returncode, err.decode()
    finally:
        os.close(slave)
        os.close(master)
        assert not _reap_group(proc.pid)
    assert status == 2
    assert len(screen.strip().splitlines()) == 1
    assert "INPUT" in screen


def _check_bench_json(data: dict, names: set[str]) -> None:
    assert data["machine"]["cpus"] >= 1
    assert {w["name"] for w in data["workloads"]} == names
    for w in data["workloads"]:
        if w["skipped"]:
            continue
        assert set(w["backends"]) == {"serial", "thread", "process", "auto"}
        serial = w["backends"]["serial"]["seconds"]
        assert serial > 0
        for name, b in w["backends"].items():
            assert b["error"] is None, (w["name"], name, b["error"])
            assert b["seconds"] > 0
            assert b["speedup"] == pytest.approx(serial / b["seconds"])
        assert w["backends"]["auto"]["used"] in ("serial", "thread", "process")


@pytest.mark.timeout(60)
def test_bench_quick_json_on_two_workloads(gilfree):
    result = gilfree("bench", "--quick", "--json", "--only", "io,tiny", timeout=50)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    _check_bench_json(data, {"io", "tiny"})
    io = next(w for w in data["workloads"] if w["name"] == "io")
    # Sleeping tasks overlap on threads whatever the machine's load.
    assert io["backends"]["thread"]["speedup"] > 2


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skip_in_test_pythons(
    "make demo's whole run with its matplotlib plot (~13 s); the bench tests on two"
    " workloads and on every backend run on each interpreter"
)
def test_bench_quick_whole_suite_with_plot(gilfree, work):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    start = time.monotonic()
    plot = work / "bench.png"
    result = gilfree("bench", "--quick", "--json", "--plot", str(plot), timeout=110)
    assert result.returncode == 0, result.stderr
    _check_bench_json(json.loads(result.stdout), {"cpu", "io", "hash", "tiny", "array"})
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert time.monotonic() - start < 60


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skip_in_test_pythons(
    "formats benchmarks/peers.py's table, the same on every interpreter; make test runs it"
)
def test_peers_script_writes_a_markdown_table(work):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"
    out = work / "peers.md"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--quick",
            "--repeat",
            "1",
            "--only",
            "io",
            "--out",
            str(out),
        ],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        printed, err = proc.communicate(timeout=100)
    finally:
        left = _reap_group(proc.pid)
    assert proc.returncode == 0, err
    assert not left
    text = out.read_text()
    assert printed.decode().strip() == text.strip()
    row = next(line for line in text.splitlines() if line.startswith("| sleeping I/O"))
    for peer in ("multiprocessing.Pool", "ProcessPoolExecutor", "joblib", "mpire", "pebble"):
        assert peer in text
    assert "failed" not in row
    assert row.count("x)") == 6  # a ratio for each of the six peers

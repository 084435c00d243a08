"""``gilfree run`` keeps what it wrote and survives what the function does (issues 14, 11).

Every test drives the real command in a subprocess (helpers in ``test_cli``):
an existing output file's bytes are unchanged on every error path; failed
records are retried in place without ever losing a good one; stderr ends
with a summary line; a record that kills its worker is a WorkerDied record
on every backend the command may choose, and ``advise`` lives through it.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from test_cli import (
    Gilfree,
    _reap_group,
    _wait_for_lines,
    assert_usage_error,
    records,
    write_lines,
)

TASKS = textwrap.dedent(
    """
    import ctypes
    import os
    import time

    def square(x):
        return x * x

    def crash_at(x):
        # CRASH_AT names the item that kills its process, CRASH_HOW how.
        if x == int(os.environ["CRASH_AT"]):
            if os.environ.get("CRASH_HOW") == "exit":
                os._exit(3)
            ctypes.string_at(0)
        log = os.environ.get("CALLS_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{x}\\n")
        return x + 1

    def flaky(x):
        # Odd items fail until the FIXED file exists; every call is logged.
        with open(os.environ["CALLS_LOG"], "a") as f:
            f.write(f"{x}\\n")
        if x % 2 and not os.path.exists(os.environ["FIXED"]):
            raise ValueError(f"odd input {x}")
        if x % 2:
            time.sleep(float(os.environ.get("RETRY_SLEEP", "0")))
        return x * 10

    def hang_at(x):
        if x == int(os.environ["HANG_AT"]):
            open(os.environ["MARKER"], "w").close()
            time.sleep(600)
        return x + 1

    def mixed(x):
        if x % 3 == 0:
            raise KeyError(x)
        if x % 3 == 1:
            raise ValueError(x)
        return x
    """
)

KEEP = b"".join(json.dumps({"index": i, "result": i * i}).encode() + b"\n" for i in range(2000))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(TASKS)
    return tmp_path


@pytest.fixture
def gilfree(work: Path) -> Gilfree:
    return Gilfree(work)


def calls(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def by_index(data: str) -> dict[int, dict]:
    got = records(data)
    indices = [r["index"] for r in got]
    assert len(indices) == len(set(indices)), "an index has more than one record"
    return {r["index"]: r for r in got}


# ---------------------------------------------------------------- an existing output survives


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["tasks:no_such_function", "in.jsonl"], ["no_such_function"]),
        (["no_such_module:f", "in.jsonl"], ["no_such_module"]),
        (["tasks:square", "missing.jsonl"], ["missing.jsonl"]),
        (["tasks:square", "."], ["directory"]),
        (["tasks:square", "keep.jsonl"], ["input"]),  # -o is the input file
        (["tasks:square", "in.jsonl", "--backend", "dask"], ["--address"]),
        (["tasks:square", "in.jsonl", "--backend", "process", "--address", "tcp://x:1"], ["dask"]),
        (["tasks:square", "in.jsonl", "--backend", "serial", "--workers", "2"], ["--workers"]),
        (["tasks:square", "in.jsonl", "--retry-failed"], ["--resume"]),
        (["tasks:square", "in.jsonl", "--resume", "--overwrite"], ["--overwrite"]),
        (["tasks:square", "in.jsonl", "--timeout", "0"], ["--timeout"]),
        # Without --resume or --overwrite an earlier run's records are never buried.
        (["tasks:square", "in.jsonl"], ["--resume", "--overwrite", "keep.jsonl"]),
    ],
)
def test_an_existing_output_is_unchanged_on_every_error_path(gilfree, work, args, words):
    write_lines(work / "in.jsonl", range(5))
    keep = work / "keep.jsonl"
    keep.write_bytes(KEEP)
    result = gilfree("run", *args, "-o", str(keep))
    assert_usage_error(result, *words)
    assert keep.read_bytes() == KEEP


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["dask", "auto"])
def test_an_unreachable_scheduler_is_one_quick_line_naming_it(gilfree, work, backend):
    write_lines(work / "in.jsonl", range(5))
    keep = work / "keep.jsonl"
    keep.write_bytes(KEEP)
    address = "tcp://127.0.0.1:1"  # nothing listens on port 1
    start = time.monotonic()
    result = gilfree(
        "run",
        "tasks:square",
        "in.jsonl",
        "-o",
        str(keep),
        "--backend",
        backend,
        "--address",
        address,
        "--resume",
    )
    elapsed = time.monotonic() - start
    assert_usage_error(result, address)
    assert keep.read_bytes() == KEEP
    # Starting Python and importing distributed takes a second or two here; Dask's own
    # connect would retry the refused port for its full 10 s timeout.
    assert elapsed < 8, elapsed
    advised = gilfree("advise", "tasks:square", "in.jsonl", "--address", address)
    assert_usage_error(advised, address)


@pytest.mark.timeout(60)
def test_resume_checks_everything_before_cutting_a_torn_line(gilfree, work):
    write_lines(work / "in.jsonl", range(5))
    out = work / "out.jsonl"
    torn = KEEP + b'{"index": 2000, "res'
    out.write_bytes(torn)
    for args in (["tasks:nope", "in.jsonl"], ["tasks:square", "missing.jsonl"]):
        result = gilfree("run", *args, "-o", str(out), "--resume")
        assert result.returncode == 2
        assert out.read_bytes() == torn
    notes = KEEP + b"my notes\n" + b'{"index": 2000, "res'
    out.write_bytes(notes)
    result = gilfree("run", "tasks:square", "in.jsonl", "-o", str(out), "--resume")
    assert_usage_error(result, "line 2001", "not a gilfree record")
    assert out.read_bytes() == notes


@pytest.mark.timeout(60)
def test_overwrite_replaces_an_existing_output(gilfree, work):
    write_lines(work / "in.jsonl", range(5))
    keep = work / "keep.jsonl"
    keep.write_bytes(KEEP)
    result = gilfree(
        "run", "tasks:square", "in.jsonl", "-o", str(keep), "--overwrite", "--backend", "process"
    )
    assert result.returncode == 0, result.stderr
    assert records(keep.read_text()) == [{"index": i, "result": i * i} for i in range(5)]
    # An empty file is not an earlier run's output: it is written without --overwrite.
    empty = work / "empty.jsonl"
    empty.touch()
    result = gilfree("run", "tasks:square", "in.jsonl", "-o", str(empty), "--backend", "process")
    assert result.returncode == 0, result.stderr
    assert len(records(empty.read_text())) == 5


# ---------------------------------------------------------------- summary line and --retry-failed


def _retry_argv(summary: str) -> list[str]:
    """The command the summary line tells the user to run, as ``python -m gilfree``."""
    command = shlex.split(summary.split("retry the failed ones with: ", 1)[1])
    assert command[0] == "gilfree"
    return command[1:]


@pytest.mark.timeout(120)
def test_summary_line_then_retry_failed_replaces_the_error_records(work):
    n = 40
    write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    log = work / "calls.log"
    gilfree = Gilfree(work, env={"CALLS_LOG": str(log), "FIXED": str(work / "fixed")})
    result = gilfree(
        "run", "tasks:flaky", "in.jsonl", "-o", str(out), "--backend", "process", "--workers", "2"
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gilfree: 20 succeeded, 20 failed (ValueError, all of them)"), last
    argv = _retry_argv(last)
    assert argv == [
        "run",
        "tasks:flaky",
        "in.jsonl",
        "-o",
        str(out),
        "--backend",
        "process",
        "--workers",
        "2",
        "--resume",
        "--retry-failed",
    ]
    before = by_index(out.read_text())
    assert sorted(before) == list(range(n))
    # Plain --resume treats error records as done: nothing runs, the summary stands.
    log.unlink()
    again = gilfree("run", "tasks:flaky", "in.jsonl", "-o", str(out), "--resume")
    assert again.returncode == 1 and calls(log) == []
    assert again.stderr.strip().splitlines()[-1].split(";")[0] == last.split(";")[0]
    # Fixed: the retry command re-runs exactly the failed items and replaces their records.
    (work / "fixed").touch()
    retried = gilfree(*argv)
    assert retried.returncode == 0, retried.stderr
    assert "failed" not in retried.stderr
    assert sorted(calls(log)) == list(range(1, n, 2))
    after = by_index(out.read_text())
    assert after == {i: {"index": i, "result": i * 10} for i in range(n)}
    assert [r["index"] for r in records(out.read_text())] == list(range(n))  # still in order


@pytest.mark.timeout(60)
def test_summary_names_the_commonest_error_and_stdout_runs_say_how_to_retry(gilfree, work):
    src = work / "in.jsonl"
    src.write_text("".join(f"{i}\n" for i in range(10)) + "{bad\n")
    result = gilfree("run", "tasks:mixed", str(src), "--backend", "process")
    assert result.returncode == 1
    got = by_index(result.stdout.decode())
    assert len(got) == 11
    last = result.stderr.strip().splitlines()[-1]
    # 0,3,6,9 KeyError; 1,4,7 ValueError; 2,5,8 fine; line 10 InputError.
    assert last.startswith(
        "gilfree: 3 succeeded, 8 failed (most often KeyError: 4; ValueError: 3, InputError: 1);"
    ), last
    assert "-o OUT" in last
    assert last.endswith("(InputError records need their input lines fixed first)"), last


@pytest.mark.timeout(120)
def test_a_killed_retry_keeps_every_good_record_and_resume_finishes_it(work):
    n = 60
    write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    log = work / "calls.log"
    env = {"CALLS_LOG": str(log), "FIXED": str(work / "fixed"), "RETRY_SLEEP": "0.1"}
    gilfree = Gilfree(work, env=env)
    args = ["run", "tasks:flaky", "in.jsonl", "-o", str(out), "--backend", "process"]
    args += ["--workers", "2", "--chunksize", "1"]
    assert gilfree(*args).returncode == 1
    good_before = {i: r for i, r in by_index(out.read_text()).items() if "result" in r}
    assert len(good_before) == n // 2
    (work / "fixed").touch()
    log.unlink()
    # 30 retries of 0.1 s on 2 workers: some 1.5 s. Killed once a few have been written.
    proc = gilfree.start(*args, "--resume", "--retry-failed", stdout=subprocess.DEVNULL)
    _wait_for_lines(out, n + 4, proc)
    proc.kill()
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert not _reap_group(proc.pid)
    mid = records(out.read_text())
    assert all(r in mid for r in good_before.values())  # nothing good was lost
    done_mid = {r["index"] for r in mid if "result" in r}
    assert len(done_mid) > len(good_before)
    log.unlink()
    finished = gilfree(*args, "--resume", "--retry-failed")
    assert finished.returncode == 0, finished.stderr
    assert not set(calls(log)) & done_mid  # a finished record is never recomputed
    assert by_index(out.read_text()) == {i: {"index": i, "result": i * 10} for i in range(n)}


# ---------------------------------------------------------------- user code is never in-process


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["auto", "serial", "thread", "process"])
@pytest.mark.parametrize(("at", "how"), [(0, "segv"), (2500, "exit")])
def test_a_record_that_kills_its_worker_is_one_error_record(work, backend, at, how):
    n = 5000
    write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    gilfree = Gilfree(work, env={"CRASH_AT": str(at), "CRASH_HOW": how})
    args = ["run", "tasks:crash_at", "in.jsonl", "-o", str(out), "--backend", backend]
    result = gilfree(*args, timeout=120)
    assert result.returncode == 1, result.stderr
    got = by_index(out.read_text())
    assert sorted(got) == list(range(n))
    assert got[at]["error"]["type"] == "WorkerDied"
    assert ("SIGSEGV" if how == "segv" else "status 3") in got[at]["error"]["message"]
    assert all(got[i] == {"index": i, "result": i + 1} for i in range(n) if i != at)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gilfree: {n - 1} succeeded, 1 failed (WorkerDied, all of them)")
    # --resume recomputes nothing: the WorkerDied record is a finished record too.
    before = out.read_bytes()
    log = work / "calls.log"
    resumed = Gilfree(work, env={"CRASH_AT": str(at), "CRASH_HOW": how, "CALLS_LOG": str(log)})(
        *args, "--resume"
    )
    assert resumed.returncode == 1
    assert calls(log) == []
    assert out.read_bytes() == before


@pytest.mark.timeout(120)
@pytest.mark.parametrize("at", [1, 40])  # the probe's sample, and a task after it
def test_an_error_record_names_its_own_index_after_a_bad_line(work, at):
    # A line that is not JSON is no task: the tasks after it are numbered one
    # lower than their records, and the message said "while running task 39"
    # in the record of index 40 (new-user trial).
    lines = [str(i) for i in range(60)]
    lines[0] = "not json"
    (work / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = work / "out.jsonl"
    gilfree = Gilfree(work, env={"CRASH_AT": str(at), "CRASH_HOW": "exit"})
    result = gilfree("run", "tasks:crash_at", "in.jsonl", "-o", str(out), timeout=100)
    assert result.returncode == 1, result.stderr
    message = by_index(out.read_text())[at]["error"]["message"]
    assert f"task {at} " in message and f"task {at - 1} " not in message, message


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["segv", "exit"])
def test_advise_reports_a_sample_that_crashes_and_lives(work, how):
    write_lines(work / "in.jsonl", range(20))
    gilfree = Gilfree(work, env={"CRASH_AT": "0", "CRASH_HOW": how})
    text = gilfree("advise", "tasks:crash_at", "in.jsonl")
    assert text.returncode == 0, text.stderr
    said = text.stdout.decode()
    assert ("SIGSEGV" if how == "segv" else "status 3") in said
    assert "processes" in said
    as_json = gilfree("advise", "tasks:crash_at", "in.jsonl", "--json")
    assert as_json.returncode == 0, as_json.stderr
    plan = json.loads(as_json.stdout)
    assert plan["backend"] == "process"
    assert ("SIGSEGV" if how == "segv" else "status 3") in plan["probe_error"]


@pytest.mark.timeout(90)
def test_auto_keeps_the_probes_calls_and_runs_the_rest_in_workers(work):
    n = 300
    write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    log = work / "calls.log"
    # CRASH_AT past the end: nothing crashes; every call is logged, wherever it ran.
    gilfree = Gilfree(work, env={"CRASH_AT": "-1", "CALLS_LOG": str(log)})
    result = gilfree("run", "tasks:crash_at", "in.jsonl", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(calls(log)) == list(range(n))  # each item called once: probe calls were kept
    assert records(out.read_text()) == [{"index": i, "result": i + 1} for i in range(n)]


@pytest.mark.timeout(90)
def test_auto_with_a_timeout_keeps_the_probes_calls_when_the_probe_took_less(work):
    # A probe shorter than --timeout: each of its calls was too, so they stand
    # (they ran twice, a new user found, whenever --timeout was given).
    n = 300
    write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    log = work / "calls.log"
    gilfree = Gilfree(work, env={"CRASH_AT": "-1", "CALLS_LOG": str(log)})
    result = gilfree("run", "tasks:crash_at", "in.jsonl", "-o", str(out), "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert sorted(calls(log)) == list(range(n))
    assert records(out.read_text()) == [{"index": i, "result": i + 1} for i in range(n)]


@pytest.mark.timeout(90)
def test_an_error_record_after_the_probe_names_its_own_index(work):
    # The job numbers its tasks from 0 after the probe's items: a record for
    # index 120 said "while running task 114" (a new user's trial).
    n = 300
    write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    result = Gilfree(work, env={"CRASH_AT": "120"})(
        "run", "tasks:crash_at", "in.jsonl", "-o", str(out)
    )
    assert result.returncode == 1, result.stderr
    error = by_index(out.read_text())[120]["error"]
    assert error["type"] == "WorkerDied"
    assert "task 120 " in error["message"], error["message"]


@pytest.mark.timeout(90)
def test_auto_with_a_hanging_first_item_gives_a_task_timeout_record(work):
    n = 200
    write_lines(work / "in.jsonl", range(n))
    out = work / "out.jsonl"
    gilfree = Gilfree(work, env={"HANG_AT": "0", "MARKER": str(work / "hung")})
    start = time.monotonic()
    args = ["run", "tasks:hang_at", "in.jsonl", "-o", str(out), "--timeout", "1"]
    result = gilfree(*args, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    got = by_index(out.read_text())
    assert got[0]["error"]["type"] == "TaskTimeout"
    assert all(got[i] == {"index": i, "result": i + 1} for i in range(1, n))
    assert "probe ran past" in result.stderr
    # The probe is stopped after its budget plus one --timeout, then the pool's timeout applies.
    assert elapsed < 30, elapsed


@pytest.mark.timeout(60)
def test_a_command_killed_while_probing_leaves_no_process(work):
    write_lines(work / "in.jsonl", range(20))
    marker = work / "hung"
    gilfree = Gilfree(work, env={"HANG_AT": "0", "MARKER": str(marker)})
    proc = gilfree.start(
        "run",
        "tasks:hang_at",
        "in.jsonl",
        "-o",
        str(work / "out.jsonl"),
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not marker.exists():  # the probe's child is inside the hanging call
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()  # the command alone: its probing child must go with it
    proc.wait(10)
    assert not _reap_group(proc.pid)


# ---------------------------------------------------------------- a real Dask cluster


@pytest.mark.timeout(180)
def test_dask_run_and_refusal_on_a_real_cluster(work, dask_cluster_address):
    write_lines(work / "in.jsonl", range(20))
    gilfree = Gilfree(work)
    keep = work / "keep.jsonl"
    keep.write_bytes(KEEP)
    args = ["run", f"{work / 'tasks.py'}:square", "in.jsonl", "--backend", "dask"]
    args += ["--address", dask_cluster_address]
    refused = gilfree(*args, "-o", str(keep), timeout=60)
    assert_usage_error(refused, "--overwrite")
    assert keep.read_bytes() == KEEP
    out = work / "out.jsonl"
    done = gilfree(*args, "-o", str(out), timeout=60)
    assert done.returncode == 0, done.stderr
    assert records(out.read_text()) == [{"index": i, "result": i * i} for i in range(20)]
    assert done.stderr == ""


def test_retry_command_quotes_and_completes_the_flags():
    from gilfree.cli import retry_command

    assert retry_command(["run", "m:f", "my in.jsonl", "-o", "o.jsonl", "--overwrite"]) == (
        "gilfree run m:f 'my in.jsonl' -o o.jsonl --resume --retry-failed"
    )
    assert retry_command(["run", "m:f", "-o", "o", "--resume"]) == (
        "gilfree run m:f -o o --resume --retry-failed"
    )

"""The faults of issue #3 put to five process pools, side by side, in one run.

    python benchmarks/bench_faults.py [--quick] [--only FAULT,...] [--libs LIB,...] [--out FILE.md]

Twelve items on two workers, item 5 faulty. The faults: the worker running
item 5 dies by ``os._exit(1)``, by SIGKILL (what the OOM killer does), by a
segfault (``ctypes.string_at(0)``); item 5 hangs, in ``time.sleep`` or in one
long C call that holds the GIL; item 5 raises an exception whose class cannot
be unpickled; item 5 is an unpicklable argument (a ``threading.Lock``); item 5
returns an unpicklable result; Ctrl-C during a map of long tasks, as SIGINT to
the parent alone and to its whole process group (what a terminal does); the
parent killed with SIGKILL during such a map, while the tasks sleep and while
they hold the GIL.

The pools, each driven through its per-task API where it has one, so that no
library is blamed for all-or-nothing ``map`` semantics: see DRIVERS.

Every trial runs in a fresh interpreter (this file, ``--trial LIB FAULT``), in
its own session, which prints JSON lines as results come back; this parent
applies a deadline, kills the session on a hang and kills anything of the
session still alive after the trial (counted as left behind). The verdicts
are in VERDICTS.

Prints a Markdown table (rows: faults, columns: libraries) and writes it, with
notes, the date and the machine, to ``benchmarks/faults_results.md`` (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

N_ITEMS = 12
BAD = 5  # the faulty item
WORKERS = 2
TASK_SECONDS = 0.1  # every task takes this long, so the fault strikes mid-map
LONG_SECONDS = 120  # the tasks interrupted by Ctrl-C or the parent's death
CTRL_C_EXIT = 2.0  # seconds the parent may take to exit after SIGINT
WORKERS_GONE = 5.0  # seconds the workers may take to go after their parent


# ------------------------------------------------------------ the faulty tasks
# Module level: the trial runs this file as __main__, which fork-started
# workers inherit and cloudpickle (loky, gilfree) sends by value.


def work(x: Any) -> Any:
    time.sleep(TASK_SECONDS)
    return x * 10


def exit_task(x: int) -> int:
    if x == BAD:
        os._exit(1)
    return work(x)


def sigkill_task(x: int) -> int:
    if x == BAD:
        os.kill(os.getpid(), signal.SIGKILL)
    return work(x)


def segfault_task(x: int) -> int:
    if x == BAD:
        ctypes.string_at(0)
    return work(x)


def hang_task(x: int) -> int:
    if x == BAD:
        time.sleep(3600)
    return work(x)


class NeedsTwoArgs(Exception):
    """Pickles as ``(cls, ("a/b",))``, so unpickling calls it with one argument: TypeError."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable(x: int) -> int:
    if x == BAD:
        raise NeedsTwoArgs("a", "b")
    return work(x)


def return_lock(x: int) -> Any:
    if x == BAD:
        return threading.Lock()
    return work(x)


def gil_hang_task(x: int) -> int:
    if x == BAD:
        return _hold_the_gil()
    return work(x)


def _hold_the_gil() -> int:
    # One long call into C that never returns to the interpreter loop, so no
    # other thread of the process runs meanwhile: big-integer arithmetic, about
    # 100 s on a 2020s CPU (a catastrophic regex or a C extension does the same).
    return (7 ** (5 * 10**7)) & 1


def long_task(x: int) -> int:
    time.sleep(LONG_SECONDS)
    return x


def long_gil_task(x: int) -> int:
    return _hold_the_gil() + x


def _numbers() -> list[Any]:
    return list(range(N_ITEMS))


def _lock_at_bad() -> list[Any]:
    items: list[Any] = list(range(N_ITEMS))
    items[BAD] = threading.Lock()
    return items


@dataclass(frozen=True)
class Fault:
    name: str
    label: str
    fn: Callable[[Any], Any]
    items: Callable[[], list[Any]] = _numbers
    kind: str = "map"  # "map", "timeout" (needs a per-task timeout), "sigint", "parent-kill"
    to_group: bool = False  # sigint: to the whole process group, as a terminal's Ctrl-C does


FAULTS = [
    Fault("exit", "worker dies: `os._exit(1)`", exit_task),
    Fault("sigkill", "worker dies: SIGKILL (OOM killer)", sigkill_task),
    Fault("segfault", "worker dies: segfault", segfault_task),
    Fault("hang", "task hangs (per-task timeout)", hang_task, kind="timeout"),
    Fault("gil-hang", "task hangs in C holding the GIL (timeout)", gil_hang_task, kind="timeout"),
    Fault("bad-exception", "exception that cannot be unpickled", raise_unpicklable),
    Fault("bad-argument", "unpicklable argument", work, _lock_at_bad),
    Fault("bad-result", "unpicklable result", return_lock),
    Fault("ctrl-c", "Ctrl-C (SIGINT to the parent only)", long_task, kind="sigint"),
    Fault(
        "ctrl-c-group",
        "Ctrl-C at a terminal (SIGINT to the process group)",
        long_task,
        kind="sigint",
        to_group=True,
    ),
    Fault("parent-kill", "parent killed (SIGKILL)", long_task, kind="parent-kill"),
    Fault(
        "parent-kill-gil",
        "parent killed (SIGKILL) while tasks hold the GIL",
        long_gil_task,
        kind="parent-kill",
    ),
]
FAULTS_BY_NAME = {f.name: f for f in FAULTS}


# ------------------------------------------------------------ the libraries
# Each runner maps fn over items on WORKERS processes, calls emit(i, outcome)
# as each item's outcome is known, then closes its pool the way its
# documentation shows. An outcome is ["ok", value] or ["err", type, message].
# An exception out of the runner is the whole call failing.

Emit = Callable[[int, list[Any]], None]


def _err(exc: BaseException) -> list[Any]:
    return ["err", type(exc).__name__, " ".join(str(exc).split())[:240]]


def _value(v: Any) -> Any:
    return v if isinstance(v, int) else repr(v)[:100]


def run_mp_pool(fn: Callable[[Any], Any], items: list[Any], timeout: float | None, emit: Emit):
    import multiprocessing

    with multiprocessing.Pool(WORKERS) as pool:  # __exit__ is terminate()
        pending = [pool.apply_async(fn, (x,)) for x in items]
        for i, r in enumerate(pending):
            try:
                emit(i, ["ok", _value(r.get(timeout))])
            except Exception as exc:
                emit(i, _err(exc))


def run_ppe(fn: Callable[[Any], Any], items: list[Any], timeout: float | None, emit: Emit):
    import concurrent.futures as cf

    ex = cf.ProcessPoolExecutor(WORKERS)
    futures = [ex.submit(fn, x) for x in items]
    if timeout is not None:
        # No per-task timeout: wait() bounds the wait, then give up on the rest.
        done, _ = cf.wait(futures, timeout=timeout * 2)
        for i, f in enumerate(futures):
            if f in done:
                emit(i, _future_outcome(f))
            else:
                emit(i, ["err", "TimeoutError", "not done after wait(timeout) (not stopped)"])
        ex.shutdown(wait=False, cancel_futures=True)
        return
    with ex:  # shutdown(wait=True)
        for i, f in enumerate(futures):
            emit(i, _future_outcome(f))


def _future_outcome(f: Any) -> list[Any]:
    try:
        return ["ok", _value(f.result())]
    except Exception as exc:
        return _err(exc)


def run_joblib(fn: Callable[[Any], Any], items: list[Any], timeout: float | None, emit: Emit):
    from joblib import Parallel, delayed

    out = Parallel(n_jobs=WORKERS, backend="loky", timeout=timeout)(delayed(fn)(x) for x in items)
    for i, v in enumerate(out):
        emit(i, ["ok", _value(v)])


def run_pebble(fn: Callable[[Any], Any], items: list[Any], timeout: float | None, emit: Emit):
    from pebble import ProcessPool

    with ProcessPool(max_workers=WORKERS) as pool:  # __exit__ is close() + join()
        futures = [pool.schedule(fn, args=[x], timeout=timeout) for x in items]
        for i, f in enumerate(futures):
            emit(i, _future_outcome(f))


def run_gilfree(fn: Callable[[Any], Any], items: list[Any], timeout: float | None, emit: Emit):
    import gilfree

    out = gilfree.map(
        fn, items, backend="process", workers=WORKERS, timeout=timeout, errors="return"
    )
    for i, v in enumerate(out):
        emit(i, _err(v) if isinstance(v, BaseException) else ["ok", _value(v)])


LIBRARIES: dict[str, Callable[..., None]] = {
    "multiprocessing.Pool": run_mp_pool,
    "ProcessPoolExecutor": run_ppe,
    "joblib": run_joblib,
    "pebble": run_pebble,
    "gilfree": run_gilfree,
}
DRIVERS = """\
- `multiprocessing.Pool`: `apply_async` per item, then `AsyncResult.get()` in order
  (`get(timeout)` for the hang: it stops waiting, it does not stop the task);
  the pool is closed by `with` (`terminate()`).
- `ProcessPoolExecutor`: `submit` per item, `Future.result()`, closed by `with`
  (`shutdown(wait=True)`); for the hang, `concurrent.futures.wait(timeout)`, then
  `shutdown(wait=False, cancel_futures=True)`, the best it offers.
- joblib: `Parallel(n_jobs=2, backend="loky")(delayed(fn)(x) for x in items)`
  (`timeout=` for the hang); it has no per-task outcome: the call returns the list or raises.
- pebble: `ProcessPool(max_workers=2).schedule(fn, args=[x])` per item, `Future.result()`
  (`schedule(..., timeout=)` for the hang), closed by `with` (`close()` + `join()`).
- gilfree: `gilfree.map(fn, items, backend="process", workers=2, errors="return")`
  (`timeout=` for the hang).
"""
VERDICTS = """\
Verdicts:
- **hang**: no answer within the deadline (the trial was killed);
- **broken pool**: the library declared the pool broken (BrokenProcessPool,
  TerminatedWorkerError, ...) for other tasks, or the whole call failed so that no
  other result came back;
- **result lost**: the call finished but some other item's result is missing or wrong;
- **survived**: only item 5 failed, the eleven other results are right;
- Ctrl-C: **survived** when the parent exits within 2 s and no worker is alive 5 s
  later, else **slow exit** / **workers left** / **hang**;
- parent killed: **survived** when every worker is gone within 5 s, else **workers left**.
"""
SHORT = {"mp": "multiprocessing.Pool", "ppe": "ProcessPoolExecutor"}
HAS_TASK_TIMEOUT = {"joblib", "pebble", "gilfree"}  # the others only stop waiting

# Errors that a library gives the *other* tasks when it declares the pool broken.
BROKEN = {"BrokenProcessPool", "BrokenExecutor", "TerminatedWorkerError", "BrokenPipeError"}


# ------------------------------------------------------------ one trial (child side)


def _say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def trial_main(lib: str, fault_name: str, task_timeout: float) -> int:
    # What a terminal gives a foreground program, even if we were started with
    # SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fault = FAULTS_BY_NAME[fault_name]
    runner = LIBRARIES[lib]
    timeout = task_timeout if fault.kind == "timeout" else None
    items = fault.items()

    def emit(i: int, outcome: list[Any]) -> None:
        _say(event="item", i=i, outcome=outcome, t=time.monotonic() - t0)

    t0 = time.monotonic()
    _say(event="start")
    try:
        runner(fault.fn, items, timeout, emit)
    except KeyboardInterrupt:
        _say(event="interrupted", t=time.monotonic() - t0)
        raise
    except Exception as exc:
        _say(event="call-error", error=_err(exc), t=time.monotonic() - t0)
    _say(event="done", t=time.monotonic() - t0)
    return 0


# ------------------------------------------------------------ one trial (parent side)


@dataclass
class Verdict:
    verdict: str
    seconds: float | None
    error: str  # what the user got for item 5 (or for the call)
    notes: list[str] = field(default_factory=list)
    caveat: str = ""  # said in the cell itself


SESSIONS: list[int] = []  # of every trial, swept once more at the end


def sweep_sessions() -> int:
    """Kill whatever is still alive in any trial's session: the count (should be 0)."""
    import psutil

    killed = 0
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) in SESSIONS and p.status() != psutil.STATUS_ZOMBIE:
                print(f"stray: {_describe([p])} ({p.status()})", file=sys.stderr)
                p.kill()
                killed += 1
        except (OSError, psutil.Error):
            pass
    return killed


class Trial:
    """A child interpreter in its own session, its JSON lines read by a thread."""

    def __init__(self, lib: str, fault: Fault, task_timeout: float) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish())
        cmd = [sys.executable, "-u", __file__, "--trial", lib, fault.name]
        cmd += ["--task-timeout", str(task_timeout)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # the session id is the child's pid
        )
        self.sid = self.proc.pid
        SESSIONS.append(self.sid)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                event["at"] = time.monotonic()
                self.events.put(event)
        self.events.put({"event": "eof", "at": time.monotonic()})

    def next_event(self, until: float) -> dict[str, Any] | None:
        try:
            return self.events.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return None

    def stderr_tail(self, n: int = 400) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-n:]

    def session_processes(self) -> list[Any]:
        import psutil

        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.sid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (OSError, psutil.Error):
                pass
        return found

    def finish(self, grace: float) -> int:
        """Wait up to ``grace`` s for the session to empty, kill what is left: the count."""
        deadline = time.monotonic() + grace
        left = self.session_processes()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.session_processes()
        # Kill until the session stays empty: a process may fork while we kill, or
        # may have left the process group (but not the session).
        for _ in range(100):
            with contextlib.suppress(OSError):
                os.killpg(self.sid, signal.SIGKILL)
            procs = self.session_processes()
            if not procs:
                break
            for p in procs:
                with contextlib.suppress(Exception):
                    p.kill()
            time.sleep(0.02)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.stderr.close()
        return len(left)


def descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def wait_gone(procs: list[Any], within: float) -> tuple[list[Any], float]:
    """Poll until every process is gone (zombies count as gone): (alive, seconds)."""
    import psutil

    t0 = time.monotonic()
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        elapsed = time.monotonic() - t0
        if not alive or elapsed >= within:
            return alive, elapsed
        time.sleep(0.02)


def _describe(procs: list[Any]) -> str:
    names = []
    for p in procs:
        try:
            names.append(f"{p.pid} " + (" ".join(p.cmdline())[:70] or p.name()))
        except Exception:
            names.append(str(p.pid))
    return "; ".join(names)


IMPORT_CAP = 60.0  # seconds an interpreter may take to import its library on a busy machine


def run_map_trial(lib: str, fault: Fault, deadline: float, task_timeout: float) -> Verdict:
    trial = Trial(lib, fault, task_timeout)
    outcomes: dict[int, list[Any]] = {}
    call_error: list[Any] | None = None
    started = done = eof = None
    hard = time.monotonic() + IMPORT_CAP
    while eof is None:
        event = trial.next_event(hard)
        if event is None:
            break
        kind = event["event"]
        if kind == "start":
            started = event["at"]
            hard = started + deadline
        elif kind == "item":
            outcomes[event["i"]] = event["outcome"]
        elif kind == "call-error":
            call_error = event["error"]
        elif kind == "done":
            done = event["t"]
        elif kind == "eof":
            eof = event["at"]
    exited = trial.proc.poll() is not None or _wait(trial.proc, hard)
    tail = trial.stderr_tail()
    # After a hang everything is killed; otherwise what outlives the trial is a leak.
    left = trial.finish(grace=2.0) if exited else (trial.finish(0) and 0)

    expected = {i: i * 10 for i in range(N_ITEMS) if i != BAD}
    others_ok = sum(1 for i, v in expected.items() if outcomes.get(i) == ["ok", v])
    bad = outcomes.get(BAD)
    notes = []
    if left:
        notes.append(f"{left} process(es) of the trial still alive 2 s after it ended (killed)")
    if started is None:
        return Verdict("error", None, "—", [f"trial did not start: {tail!r}", *notes])
    if done is None or not exited:
        if done is not None:
            where = "at interpreter exit, after the map returned"
        elif outcomes:
            where = f"after {others_ok}/11 other results came back"
        else:
            where = "with no result back"
        if call_error is not None:
            where += f" (the call raised {call_error[1]})"
        notes.insert(0, f"no answer within {deadline:.0f} s: stuck {where}")
        if bad is None:
            notes.append("item 5 never got an outcome")
        error = bad[1] if bad and bad[0] == "err" else "—"
        return Verdict("hang", deadline, error, notes)

    seconds = done
    if call_error is not None:
        notes.insert(0, f"the whole call raised {call_error[1]}: {call_error[2]}")
        verdict = "broken pool"
        error = call_error[1]
    else:
        error = bad[1] if bad and bad[0] == "err" else ("no error" if bad else "—")
        broken = sorted(
            {o[1] for i, o in outcomes.items() if i != BAD and o[0] == "err" and o[1] in BROKEN}
        )
        wrong = {i: outcomes.get(i) for i, v in expected.items() if outcomes.get(i) != ["ok", v]}
        if broken or others_ok == 0:
            verdict = "broken pool"
            notes.insert(0, f"{11 - others_ok}/11 other tasks failed with {', '.join(broken)}")
        elif wrong:
            verdict = "result lost"
            notes.insert(0, f"other items lost or wrong: {wrong}")
        elif bad is None or bad[0] == "ok":
            verdict = "result lost"
            notes.insert(0, f"item 5 reported success: {bad}")
        else:
            verdict = "survived"
        if bad and bad[0] == "err":
            notes.append(f"item 5: {bad[1]}: {bad[2]}")
    return Verdict(verdict, seconds, error, notes)


def _wait(proc: subprocess.Popen[str], until: float) -> bool:
    try:
        proc.wait(max(0.0, until - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        return False


def run_signal_trial(lib: str, fault: Fault, deadline: float) -> Verdict:
    trial = Trial(lib, fault, 0)
    event = trial.next_event(time.monotonic() + IMPORT_CAP)
    if event is None or event["event"] != "start":
        tail = trial.stderr_tail()
        trial.finish(0)
        return Verdict("error", None, "—", [f"trial did not start: {tail!r}"])
    # Wait for the workers to exist, then give the tasks a moment to start.
    until = time.monotonic() + deadline
    while len(descendants(trial.proc.pid)) < WORKERS and time.monotonic() < until:
        time.sleep(0.05)
    time.sleep(1.0)
    procs = descendants(trial.proc.pid)
    notes = [f"{len(procs)} child process(es) before the signal"]

    if fault.kind == "parent-kill":
        trial.proc.kill()
        trial.proc.wait()
        alive, seconds = wait_gone(procs, WORKERS_GONE)
        which = _describe(alive)
        trial.finish(0)
        if alive:
            notes.insert(0, f"{len(alive)} still alive {WORKERS_GONE:.0f} s later: {which}")
            return Verdict("workers left", None, "—", notes)
        return Verdict("survived", seconds, "—", notes)

    t0 = time.monotonic()
    if fault.to_group:
        os.killpg(trial.sid, signal.SIGINT)
    else:
        os.kill(trial.proc.pid, signal.SIGINT)
    exited = _wait(trial.proc, t0 + deadline)
    exit_seconds = time.monotonic() - t0
    alive, _ = wait_gone(procs, WORKERS_GONE) if exited else (procs, 0.0)
    which = _describe(alive)
    tail = trial.stderr_tail(2000)
    trial.finish(0)
    error = "KeyboardInterrupt" if "KeyboardInterrupt" in tail else "—"
    if not exited:
        notes.insert(0, f"still running {deadline:.0f} s after SIGINT (tasks of {LONG_SECONDS} s)")
        return Verdict("hang", deadline, error, notes)
    notes.insert(0, f"exited {exit_seconds:.1f} s after SIGINT, status {trial.proc.returncode}")
    if alive:
        notes.insert(1, f"{len(alive)} still alive {WORKERS_GONE:.0f} s later: {which}")
        return Verdict("workers left", exit_seconds, error, notes)
    if exit_seconds > CTRL_C_EXIT:
        return Verdict("slow exit", exit_seconds, error, notes)
    return Verdict("survived", exit_seconds, error, notes)


def run_trial(lib: str, fault: Fault, deadline: float, task_timeout: float) -> Verdict:
    if fault.kind in ("sigint", "parent-kill"):
        return run_signal_trial(lib, fault, deadline)
    verdict = run_map_trial(lib, fault, deadline, task_timeout)
    if fault.kind == "timeout" and lib not in HAS_TASK_TIMEOUT:
        verdict.notes.insert(0, "no per-task timeout: the wait gives up, the task is not stopped")
        verdict.caveat = "no per-task timeout"
    return verdict


# ------------------------------------------------------------ report


def cell(v: Verdict) -> str:
    seconds = f" {v.seconds:.1f} s" if v.seconds is not None else ""
    if v.verdict == "hang":
        seconds = f" > {v.seconds:.0f} s"
    error = f" `{v.error}`" if v.error not in ("—", "") else ""
    caveat = f" ({v.caveat})" if v.caveat else ""
    return f"**{v.verdict}**{seconds}{error}{caveat}"


def markdown(
    results: dict[tuple[str, str], Verdict], faults: list[Fault], libs: list[str], info: dict
) -> str:
    lines = [
        "# Faults put to five process pools (issue #3)",
        "",
        f"{info['date']} · {info['cpus']} CPUs ({info['cpu_model']}) · {info['python']} "
        f"· {info['platform']} · gilfree {info['gilfree']} · {info['versions']}",
        "",
        f"`{info['command']}`: {N_ITEMS} items on {WORKERS} workers, item {BAD} faulty, every "
        f"task {TASK_SECONDS} s; deadline {info['deadline']:.0f} s per trial, per-task timeout "
        f"{info['task_timeout']:.0f} s for the hang. Each cell: verdict, time of the map (pool "
        "opened to closed; for Ctrl-C the time from SIGINT to exit; for the parent's death "
        "the time until its last worker was gone), and the error the user got for item 5.",
        "",
        "| fault | " + " | ".join(libs) + " |",
        "|---|" + "---|" * len(libs),
    ]
    for fault in faults:
        row = [cell(results[fault.name, lib]) for lib in libs]
        lines.append(f"| {fault.label} | " + " | ".join(row) + " |")
    lines += ["", "## Notes per cell", ""]
    for fault in faults:
        for lib in libs:
            v = results[fault.name, lib]
            if v.notes:
                lines.append(f"- **{fault.label} / {lib}** ({v.verdict}): " + "; ".join(v.notes))
    lines += ["", "## How each library was driven", ""]
    lines.append(DRIVERS)
    lines.append(VERDICTS)
    return "\n".join(lines) + "\n"


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("joblib", "loky", "pebble") if _has(p))


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter deadlines (development)")
    parser.add_argument("--only", help="comma-separated faults: " + ",".join(FAULTS_BY_NAME))
    parser.add_argument("--libs", help="comma-separated libraries: mp,ppe,joblib,pebble,gilfree")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).with_name("faults_results.md")),
        help="Markdown file to write ('-' for none)",
    )
    parser.add_argument("--trial", nargs=2, metavar=("LIB", "FAULT"), help=argparse.SUPPRESS)
    parser.add_argument("--task-timeout", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.trial:
        return trial_main(args.trial[0], args.trial[1], args.task_timeout)

    deadline = 8.0 if args.quick else 15.0
    task_timeout = 2.0 if args.quick else 3.0
    faults = [FAULTS_BY_NAME[n] for n in args.only.split(",")] if args.only else FAULTS
    libs = [SHORT.get(n, n) for n in args.libs.split(",")] if args.libs else list(LIBRARIES)
    results: dict[tuple[str, str], Verdict] = {}
    for fault in faults:
        for lib in libs:
            t0 = time.monotonic()
            v = run_trial(lib, fault, deadline, task_timeout)
            results[fault.name, lib] = v
            print(
                f"{fault.name:>13} {lib:>20}: {cell(v)}  ({time.monotonic() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    stray = sweep_sessions()
    if stray:
        print(f"killed {stray} stray process(es) of finished trials", file=sys.stderr)

    from gilfree.bench.runner import machine_info

    info = machine_info()
    info.update(
        versions=versions(),
        deadline=deadline,
        task_timeout=task_timeout,
        command="python benchmarks/bench_faults.py" + (" --quick" if args.quick else ""),
    )
    text = markdown(results, faults, libs, info)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

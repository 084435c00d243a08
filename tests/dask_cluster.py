"""A real Dask cluster on 127.0.0.1 for tests and benchmarks: scheduler and workers are
separate processes started with the command-line programs of the distributed package.

``LocalDaskCluster`` starts ``dask scheduler`` and N ``dask worker --no-nanny`` processes
(no nanny, so each worker is exactly one process: killing it loses the worker for good,
and nothing restarts behind our back), waits until every worker has registered, and on
``stop()`` terminates them all and removes the scratch directory. Each child gets
``PR_SET_PDEATHSIG`` on Linux, so a test run killed with SIGKILL leaves no orphan behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
#: Where pytest imports test modules from (each folder of tests/, by basename):
#: a task function defined in a test module is pickled by reference to it, so
#: the cluster's workers need the same folders on their path.
TEST_FOLDERS = [
    str(TESTS_DIR),
    *sorted(
        str(p) for p in TESTS_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    ),
]

# How long a cold start may take: each process imports distributed (~1-2 s on a busy
# 2-core machine), so 60 s is generous and only reached when something is broken.
START_TIMEOUT_S = 60.0
#: How long stop() lets the processes close gracefully, all together, before SIGKILL.
STOP_GRACE_S = 3.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dask_command(kind: str) -> list[str]:
    script = Path(sys.executable).with_name("dask")
    if script.exists():
        return [str(script), kind]
    module = {"scheduler": "dask_scheduler", "worker": "dask_worker"}[kind]
    return [sys.executable, "-m", f"distributed.cli.{module}"]


class LocalDaskCluster:
    """``dask scheduler`` plus ``n_workers`` x ``dask worker`` processes on 127.0.0.1."""

    def __init__(
        self,
        n_workers: int = 2,
        nthreads: int = 2,
        pythonpath: list[str] | None = None,
        *,
        nanny: bool = False,
        allowed_failures: int | None = None,
    ):
        self.n_workers = n_workers
        self.nanny = nanny
        self.allowed_failures = allowed_failures
        self.nthreads = nthreads
        self.pythonpath = TEST_FOLDERS if pythonpath is None else pythonpath
        self.address = ""
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._dir = ""
        self._logs: list = []

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> LocalDaskCluster:
        self._dir = tempfile.mkdtemp(prefix="gilfree-dask-")
        try:
            port = _free_port()
            self.address = f"tcp://127.0.0.1:{port}"
            self.scheduler = self._spawn(
                "scheduler",
                [
                    *_dask_command("scheduler"),
                    *("--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
                ],
            )
            for _ in range(self.n_workers):
                self.add_worker(wait=False)
            self.wait_for_workers(self.n_workers)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(
        self, *, wait: bool = True, wrapper: list[str] | None = None
    ) -> subprocess.Popen:
        """Start one more ``dask worker``; ``wrapper`` is a command line it runs under
        (it must end by exec-ing its arguments, so the process stays the one we track)."""
        proc = self._spawn(
            f"worker{len(self.workers)}",
            [
                *(wrapper or ()),
                *_dask_command("worker"),
                self.address,
                "--nthreads", str(self.nthreads),
                "--nworkers", "1",
                "--nanny" if self.nanny else "--no-nanny",
                "--no-dashboard",
                "--host", "127.0.0.1",
                "--local-directory", self._dir,
                # A worker whose scheduler vanished exits on its own.
                "--death-timeout", "30",
            ],
        )  # fmt: skip
        self.workers.append(proc)
        if wait:
            self.wait_for_workers(len(self.alive_workers()))
        return proc

    def alive_workers(self) -> list[subprocess.Popen]:
        return [p for p in self.workers if p.poll() is None]

    def wait_for_workers(self, n: int) -> None:
        """Block (bounded) until the scheduler has ``n`` workers; fail with the logs if not."""
        from distributed import Client

        try:
            with Client(self.address, timeout=START_TIMEOUT_S, set_as_default=False) as client:
                if n:  # with none, connecting shows the scheduler is up
                    client.wait_for_workers(n, timeout=START_TIMEOUT_S)
        except Exception as exc:
            raise RuntimeError(f"dask cluster did not start: {exc}\n{self.logs()}") from exc

    def check_scheduler(self) -> None:
        """Raise, with the logs, if the scheduler exited although nobody stopped it:
        a test then fails at once saying why, not after a 30 s connect timeout."""
        code = self.scheduler.poll() if self.scheduler else None
        if code is not None:
            raise RuntimeError(f"the dask scheduler exited by itself ({code})\n{self.logs()}")

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL one worker process: no goodbye to the scheduler, as in a crash."""
        proc = self.workers[index]
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        procs = [*self.workers, *([self.scheduler] if self.scheduler else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        # A graceful close is given STOP_GRACE_S: in full suites a worker or the
        # scheduler now and then sat out a whole 10 s grace (its close waiting on the
        # other), and nothing a test checks depends on that goodbye.
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalDaskCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- plumbing ----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, env.get("PYTHONPATH", "")])
        # Quieter logs; a lost worker is noticed through its closed connection anyway.
        env.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        if self.allowed_failures is not None:
            env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(self.allowed_failures)
        # A crash leaves its Python stack in the log.
        env.setdefault("PYTHONFAULTHANDLER", "1")
        if sysconfig.get_config_var("Py_GIL_DISABLED"):
            # The cluster stands for the user's: on free-threaded CPython 3.13.5t its
            # scheduler and workers segfaulted inside the interpreter now and then
            # (1 suite in 3: managed_static_type_state_get, typeobject.c:180;
            # unicode_fromformat_write_wcstr, unicodeobject.c:2643), so they run
            # with the GIL. gilfree's side, the client in this process, runs without.
            env["PYTHON_GIL"] = "1"
        # Scratch space (the scheduler makes one too) inside our directory, not /tmp.
        env["DASK_TEMPORARY_DIRECTORY"] = self._dir
        log = open(os.path.join(self._dir, f"{name}.log"), "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self._dir,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def logs(self) -> str:
        parts = []
        for path in sorted(Path(self._dir).glob("*.log")) if self._dir else []:
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name} ---\n{text[-3000:]}")
        return "\n".join(parts)

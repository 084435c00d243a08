"""Operating-system plumbing for one worker process: start it, watch it, stop it.

Kept apart from the pool's scheduling (``_pool.py``), as loky keeps its
process handling apart from its executor.

Two ways to start a worker:

* ``fork`` -- fastest (no interpreter start-up, nothing to re-import), but
  unsafe in a process with other threads, whose locks the child inherits
  held. The first workers of a pool are forked while the parent has a single
  thread (the manager thread starts after them).
* ``zygote`` -- forked by our own fork server (``_zygote``), a clean
  single-threaded interpreter started once per parent process. Used for every
  worker started later (a replacement for a dead, timed-out or recycled one is
  started from the manager thread) and when the parent already has threads.
* ``spawn`` -- a fresh interpreter per worker running
  ``_worker.spawned_main``, on request only (slowest, ~60 ms a worker).

Neither re-imports the caller's ``__main__``, as ``multiprocessing``'s spawn
and forkserver do: functions arrive by value through cloudpickle, so an
unguarded script is not run again in every worker.

The exit of either kind is watched through a file descriptor (the
multiprocessing sentinel, or a pidfd) so the manager can wait on it with
``select`` beside the pipes.
"""

from __future__ import annotations

import enum
import json
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Any

from . import _worker, _zygote

_SPAWN_MAIN = "from gilfree.pool._worker import spawned_main; spawned_main()"


class WorkerState(enum.Enum):
    RUNNING = "running"  # accepting chunks
    RETIRING = "retiring"  # told us it will exit (recycling); no new chunks
    STOPPING = "stopping"  # we closed its task pipe or killed it
    DEAD = "dead"  # its exit was seen and it was reaped


def choose_start_method(requested: str | None) -> str:
    """fork while the caller has one Python thread, else the zygote.

    Native threads that Python did not start (an OpenBLAS pool after ``import
    numpy``) are not counted: they sit idle in their own condition waits and
    register at-fork handlers, and treating them as a reason not to fork would
    send every NumPy user through the zygote. (Python 3.12 warns about such a
    fork with a DeprecationWarning, shown under pytest.)
    """
    if requested is not None:
        return requested
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "zygote"


class WorkerProcess:
    """The parent's handle on one worker: the process and the parent's pipe ends."""

    def __init__(
        self,
        index: int,
        method: str,
        slots_fd: int,
        alive_fd: int,
        inherited_fds: list[int],
        config: dict[str, Any],
    ) -> None:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        stack_r, stack_w = os.pipe()
        self.index = index
        self.task_fd, self.result_fd, self.stack_fd = task_w, result_r, stack_r
        config = {**config, "index": index}
        child_fds = [task_r, result_w, stack_w, alive_fd, slots_fd]
        self._proc: Any = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._zygote: _zygote.Zygote | None = None
        self._pidfd: int | None = None
        self._exitcode: int | None = None
        try:
            if method == "fork":
                # The child inherits every fd: it closes the parent's ends, or
                # EOF would never arrive when the parent dies.
                close_fds = [*inherited_fds, *self.parent_fds]
                if threading.current_thread() is threading.main_thread():
                    config["ppid"] = os.getpid()  # the worker dies with us (see _worker)
                self._proc = multiprocessing.get_context("fork").Process(
                    target=_worker.main,
                    args=(config, *child_fds, close_fds),
                    name=f"gilfree-worker-{index}",
                    daemon=True,
                )
                self._proc.start()
                self.pid = self._proc.pid
                self.sentinel = self._proc.sentinel
            elif method == "zygote":
                self._zygote = _zygote.get()
                self.pid, self._pidfd = self._zygote.fork(config, child_fds)
                self.sentinel = self._pidfd
            else:
                config["sys_path"] = sys.path
                self._popen = subprocess.Popen(
                    [sys.executable, "-c", _SPAWN_MAIN, json.dumps(config), *map(str, child_fds)],
                    pass_fds=child_fds,
                    stdin=subprocess.DEVNULL,
                )
                self.pid = self._popen.pid
                self._pidfd = self.sentinel = os.pidfd_open(self.pid)
        finally:
            for fd in (task_r, result_w, stack_w):  # the child's ends
                os.close(fd)
        for fd in self.parent_fds:
            os.set_blocking(fd, False)
        self.state = WorkerState.RUNNING
        self.kill_reason: tuple[Any, ...] | None = None
        self._task_open = True

    @property
    def parent_fds(self) -> list[int]:
        return [self.task_fd, self.result_fd, self.stack_fd]

    def read_stack(self, wait_s: float = 0.0) -> str:
        """What faulthandler wrote to the stack pipe, waiting up to ``wait_s`` for it."""
        chunks: list[bytes] = []
        timeout = wait_s
        while True:
            ready, _, _ = select.select([self.stack_fd], [], [], timeout)
            if not ready:
                break
            try:
                data = os.read(self.stack_fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
            timeout = 0.05  # faulthandler writes one dump in quick bursts
        return b"".join(chunks).decode("utf-8", "replace")

    def signal(self, sig: int) -> None:
        if self.state is WorkerState.DEAD:
            return
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close_task_pipe(self) -> None:
        """Ask for an orderly exit: the worker reads EOF after its current chunk."""
        if self._task_open:
            self._task_open = False
            os.close(self.task_fd)

    def exitcode(self) -> int | None:
        """The exit code once the process has exited, else None."""
        if self._proc is not None:
            self._proc.join(0)
            return self._proc.exitcode
        if self._popen is not None:
            return self._popen.poll()
        assert self._zygote is not None
        if self._exitcode is None and self._exited(0):
            self._exitcode = self._zygote.status(self.pid)
        return self._exitcode

    def _exited(self, timeout: float) -> bool:
        assert self._pidfd is not None
        return bool(select.select([self._pidfd], [], [], timeout)[0])

    def wait(self, timeout: float) -> None:
        if self._proc is not None:
            self._proc.join(timeout)
        elif self._popen is not None:
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        elif self._pidfd is not None:
            self._exited(timeout)

    def release(self) -> None:
        """Close the parent's ends and reap the process (it has exited)."""
        self.close_task_pipe()
        for fd in (self.result_fd, self.stack_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wait(0)
        if self._zygote is not None and self._exitcode is None and self._exited(0):
            self.exitcode()  # let the zygote forget it
        if self._proc is not None:
            try:
                self._proc.close()
            except ValueError:  # still running: only after a kill that has not landed
                pass
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.state = WorkerState.DEAD


def describe_exit(exitcode: int | None) -> tuple[str, str | None]:
    """('was killed by SIGSEGV (a segmentation fault...)', 'SIGSEGV'), or a status."""
    if exitcode is None:
        return "disappeared", None
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"was killed by signal {-exitcode}", None
        hint = {
            signal.SIGKILL: "killed from outside, often by the kernel's OOM killer",
            signal.SIGSEGV: "a segmentation fault, usually in C code",
            signal.SIGBUS: "a bus error, usually in C code or a truncated mmap",
            signal.SIGABRT: "aborted, usually by a failed assertion in C code",
            signal.SIGTERM: "terminated from outside",
        }.get(sig, signal.strsignal(sig) or "")
        return f"was killed by {sig.name} ({hint})", sig.name
    if exitcode == _worker.PARENT_GONE:
        return "exited after losing its pipe to the parent (status 70)", None
    return f"exited with status {exitcode} (os._exit or sys.exit outside a task)", None

"""Operating-system plumbing for one worker process: start it, watch it, stop it.

Kept apart from the pool's scheduling (``_pool.py``), as loky keeps its
process handling apart from its executor.

Start method: ``fork`` is fastest (no interpreter start-up, nothing to
re-import) but unsafe in a process with other threads, whose locks the child
inherits held. So the first workers are forked while the parent has one
thread (the manager thread starts after them), and any worker started later --
a replacement for a dead or recycled one, started from the manager thread --
comes from the ``forkserver``. The caller may force a method.
"""

from __future__ import annotations

import enum
import multiprocessing
import os
import select
import signal
import threading
from typing import Any

from . import _worker


class WorkerState(enum.Enum):
    RUNNING = "running"  # accepting chunks
    RETIRING = "retiring"  # told us it will exit (recycling); no new chunks
    STOPPING = "stopping"  # we closed its task pipe or killed it
    DEAD = "dead"  # its sentinel fired and it was reaped


def choose_start_method(requested: str | None) -> str:
    if requested is not None:
        return requested
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "forkserver"


class WorkerProcess:
    """The parent's handle on one worker: the process and the parent's pipe ends."""

    def __init__(
        self,
        index: int,
        method: str,
        slots: Any,
        alive_reader: Any,
        inherited_fds: list[int],
        max_tasks: int | None,
        max_memory: int | None,
    ) -> None:
        ctx = multiprocessing.get_context(method)
        task_r, task_w = multiprocessing.Pipe(duplex=False)
        result_r, result_w = multiprocessing.Pipe(duplex=False)
        stack_r, stack_w = multiprocessing.Pipe(duplex=False)
        self.index = index
        self.task_conn, self.result_conn, self.stack_conn = task_w, result_r, stack_r
        parent_fds = [task_w.fileno(), result_r.fileno(), stack_r.fileno()]
        # Under fork the child inherits every fd the parent has; it must close
        # the parent's ends, or EOF never arrives when the parent dies.
        close_fds = [*inherited_fds, *parent_fds] if method == "fork" else []
        self.process = ctx.Process(
            target=_worker.main,
            args=(
                index,
                task_r,
                result_w,
                stack_w,
                alive_reader,
                slots,
                close_fds,
                max_tasks,
                max_memory,
            ),
            name=f"gilfree-worker-{index}",
            daemon=True,
        )
        self.process.start()
        for conn in (task_r, result_w, stack_w):  # the child's ends
            conn.close()
        self.pid = self.process.pid
        self.sentinel = self.process.sentinel
        self.task_fd, self.result_fd, self.stack_fd = parent_fds
        for fd in parent_fds:
            os.set_blocking(fd, False)
        self.state = WorkerState.RUNNING
        self.kill_reason: tuple[Any, ...] | None = None

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
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            chunks.append(data)
            timeout = 0.05  # faulthandler writes a dump in quick bursts
        return b"".join(chunks).decode("utf-8", "replace")

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close_task_pipe(self) -> None:
        """Ask for an orderly exit: the worker reads EOF after its current chunk."""
        self.task_conn.close()

    def exitcode(self) -> int | None:
        self.process.join(0)
        return self.process.exitcode

    def release(self) -> None:
        """Close the parent's ends and reap the process (it has exited)."""
        for conn in (self.task_conn, self.result_conn, self.stack_conn):
            try:
                conn.close()
            except OSError:
                pass
        self.process.join(0)
        try:
            self.process.close()
        except ValueError:  # still running: only after a kill that has not landed
            pass
        self.state = WorkerState.DEAD


def describe_exit(exitcode: int | None) -> tuple[str, str | None]:
    """('killed by SIGSEGV (segmentation fault)', 'SIGSEGV') or ('exited with status 3', None)."""
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
    return f"exited with status {exitcode} (os._exit or sys.exit outside a task)", None

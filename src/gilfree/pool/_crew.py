"""The worker processes of one pool: start, replace, stop and reap them.

The manager owns one ``Crew``. It holds what every worker shares with the
pool (the slots, the alive pipe, the configuration) and the ``Worker``
records. It starts and kills processes; talking to them is the manager's job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from .. import _shm
from ._procs import Slots, WorkerProcess, choose_start_method, frozen_heap
from ._recovery import Cause
from ._state import Worker, WorkerState
from ._worker import prepare_fork

#: Attempts to start a replacement worker before the pool gives up. A dead
#: fork server is restarted by the second.
START_ATTEMPTS = 2
#: Seconds a killed worker gets to be reaped when the pool closes.
REAP_S = 5.0


class Crew:
    def __init__(self, size: int, config: dict[str, Any], start_method: str | None) -> None:
        self.size = size
        self.config = config
        self._max_tasks: int | None = config["max_tasks"]
        #: Workers started after the first ones come from the fork server: by
        #: then the manager thread runs, and forking a threaded parent is unsafe.
        self.later_method = start_method or "zygote"
        self.slots = Slots(size)
        # Workers hold the read end; only we hold the write end. EOF = we died.
        self._alive_r, self._alive_w = os.pipe()
        self.workers: list[Worker | None] = [None] * size
        self.live = 0  # workers not yet DEAD, so "all gone?" is O(1)
        self._dead_servers: set[int] = set()  # pids of fork servers that died under us

    def start_all(self, start_method: str | None) -> None:
        """The first workers: forked while the caller may still be the only thread."""
        method = choose_start_method(start_method)
        if method == "fork":
            prepare_fork()
        inherited = [self._alive_w]  # fds a forked child must close (see _procs)
        try:
            with frozen_heap(method):
                for i in range(self.size):
                    inherited += self._start(i, method, inherited).proc.parent_fds
        except BaseException:
            self.close()
            raise

    def _start(self, index: int, method: str, inherited: list[int]) -> Worker:
        """A new worker in slot ``index``; raises OSError when none could start."""
        self.slots.reset(index)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                proc = WorkerProcess(
                    index, method, self.slots.fd, self._alive_r, inherited, self.config
                )
                break
            except OSError:  # ZygoteGone, EMFILE, EAGAIN...
                if attempt == START_ATTEMPTS:
                    raise
        w = self.workers[index] = Worker(index, proc)
        self.live += 1
        return w

    def replace(self, index: int) -> Worker:
        """A new worker in a dead one's slot; raises OSError when none could start."""
        return self._start(index, self.later_method, [])

    def __iter__(self) -> Iterator[Worker]:
        """Workers not yet dead."""
        return (w for w in self.workers if w is not None and w.state is not WorkerState.DEAD)

    def buried(self, w: Worker) -> None:
        """``w`` exited and was seen to: reap it."""
        if w.state is not WorkerState.DEAD:
            w.dead()
            self.live -= 1
        _shm.sweep(f"gilfree-{os.getpid()}-r{w.pid}-")  # result segments we never received

    def diagnose(self, w: Worker, server_died: bool) -> tuple[Cause, tuple[int, int] | None, str]:
        """Why ``w`` died, the (chunk seq, position) it was running if known, its stack."""
        if server_died:
            if w.proc.fork_server is not None:
                self._dead_servers.add(w.proc.fork_server)
            return Cause.SERVER, None, ""
        if w.kill_reason is not None:
            seq, pos, stack = w.kill_reason
            return Cause.TIMEOUT, (seq, pos), stack
        if w.state is WorkerState.RETIRING:
            return Cause.RETIRED, None, ""
        seq, pos, _start, running = self.slots.read(w.index)
        return Cause.CRASH, (seq, pos) if running else None, w.proc.read_stack()

    @property
    def server_deaths(self) -> int:
        """Distinct fork servers that died under this pool."""
        return len(self._dead_servers)

    def budget(self, w: Worker) -> int:
        """Tasks ``w`` may still be sent before max_tasks_per_worker retires it."""
        limit = self._max_tasks
        return (1 << 62) if limit is None else max(0, limit - w.assigned)

    def pids(self) -> list[int]:
        return [w.pid for w in self]

    def close(self) -> None:
        """Kill and reap every worker, then close what they shared."""
        for w in list(self):
            try:
                w.kill()
                w.proc.wait(REAP_S)
                self.buried(w)
            except Exception:
                pass
        self.slots.close()
        for fd in (self._alive_r, self._alive_w):
            os.close(fd)

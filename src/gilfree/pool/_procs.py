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

The exit of every kind is watched through a pidfd, readable once the process
can be reaped, so the manager can wait on it with ``select`` beside the pipes.
"""

from __future__ import annotations

import contextlib
import gc
import math
import mmap
import multiprocessing
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .. import _stacks
from . import _worker

if TYPE_CHECKING:
    import subprocess

    from . import _zygote

T = TypeVar("T")

_SPAWN_MAIN = "from gilfree.pool._worker import spawned_main; spawned_main()"
#: Seconds a worker's sentinel may fire before the process can be reaped.
REAP_WAIT_S = 1.0


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


@contextlib.contextmanager
def frozen_heap(method: str) -> Iterator[None]:
    """Fork with the parent's objects frozen out of the children's garbage collector.

    A forked worker shares the parent's heap copy-on-write, but its first
    collection walks every object and so copies every page. Frozen objects are
    skipped by the children's collector; the parent unfreezes at once.
    200,000 tiny tasks: median 0.063 s before, 0.050 s after (same run).
    """
    if method != "fork":
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
        self._proc: Any = None  # multiprocessing.Process (untyped in typeshed's view here)
        self._popen: subprocess.Popen[bytes] | None = None
        self._zygote: _zygote.Zygote | None = None
        self._pidfd: int | None = None
        self._exitcode: int | None = None
        ok = False
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
                # SIGINT held back until the worker ignores it (see _worker.main):
                # a Ctrl-C to the process group in between printed a traceback.
                held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                try:
                    self._proc.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
                self.pid = self._proc.pid
                # A pidfd, not the multiprocessing sentinel (a pipe that closes
                # a moment before the process can be reaped): readable once
                # it can be, so reaping never waits.
                self._pidfd = self.sentinel = os.pidfd_open(self.pid)
            elif method == "zygote":
                from . import _zygote  # imported on first need: a forking script never does

                self._zygote = _zygote.get()
                # The zygote was started earlier: the worker takes the caller's
                # environment, directory and import path as they are now, as a
                # forked or spawned worker would.
                config = {**config, "sys_path": sys.path, "environ": dict(os.environ)}
                with contextlib.suppress(OSError):  # a directory since deleted
                    config["cwd"] = os.getcwd()
                self.pid, self._pidfd = self._zygote.fork(config, child_fds)
                self.sentinel = self._pidfd
            else:
                import json
                import subprocess

                config["sys_path"] = sys.path
                self._popen = subprocess.Popen(
                    [sys.executable, "-c", _SPAWN_MAIN, json.dumps(config), *map(str, child_fds)],
                    pass_fds=child_fds,
                    stdin=subprocess.DEVNULL,
                )
                self.pid = self._popen.pid
                self._pidfd = self.sentinel = os.pidfd_open(self.pid)
            ok = True
        finally:
            for fd in (task_r, result_w, stack_w):  # the child's ends
                os.close(fd)
            if not ok:  # no worker: our ends go too
                for fd in (task_w, result_r, stack_r):
                    os.close(fd)
        for fd in self.parent_fds:
            os.set_blocking(fd, False)
        self._task_open = True
        self._released = False

    @property
    def fork_server(self) -> int | None:
        """The pid of the zygote that forked it, if one did."""
        return None if self._zygote is None else self._zygote.pid

    @property
    def parent_fds(self) -> list[int]:
        return [self.task_fd, self.result_fd, self.stack_fd]

    def read_stack(self, wait_s: float = 0.0) -> str:
        """What faulthandler wrote to the stack pipe, waiting up to ``wait_s`` for it."""
        return _stacks.read_dump(self.stack_fd, wait_s)

    def signal(self, sig: int) -> None:
        if self._released:  # reaped: the pid may belong to someone else now
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

    def exit_status(self) -> tuple[int | None, bool]:
        """(exit code, whether its fork server died) of an exited worker.

        The code is None when it cannot be known: the zygote that was its
        parent died (and took the worker with it), or did not report in time.
        """
        self.wait(REAP_WAIT_S)  # the sentinel can fire a moment before it is reapable
        if self._proc is not None:
            code: int | None = self._proc.exitcode  # reaps it (waitpid WNOHANG)
            return code, False
        if self._popen is not None:
            return self._popen.poll(), False
        assert self._zygote is not None
        if self._exitcode is None:
            from ._zygote import ZygoteGone

            try:
                self._exitcode = self._zygote.status(self.pid)
            except ZygoteGone:
                return None, True
        return self._exitcode, False

    def wait(self, timeout: float) -> None:
        """Until the process exited (its sentinel fired), at most ``timeout`` seconds.

        A select on the sentinel, not ``Process.join(timeout)``, which imports
        ``multiprocessing.connection`` (and tempfile, shutil, random, bz2,
        lzma...): 4-10 ms of a script's first map, paid at its first worker exit.
        """
        if self._released:
            return
        if self._proc is not None:
            if self._proc.exitcode is None and self._pidfd is not None:  # polls (WNOHANG)
                select.select([self._pidfd], [], [], timeout)
        elif self._popen is not None:
            if self._popen.poll() is None and self._pidfd is not None:
                select.select([self._pidfd], [], [], timeout)
                self._popen.poll()
        elif self._pidfd is not None:
            select.select([self._pidfd], [], [], timeout)

    def release(self) -> None:
        """Close the parent's ends and reap the process (it has exited, or was killed)."""
        if self._released:
            return
        self.close_task_pipe()
        for fd in (self.result_fd, self.stack_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wait(0)
        if self._proc is not None:
            self._proc.exitcode  # noqa: B018 - reaps it if it exited (waitpid WNOHANG)
        # Not Process.close(): multiprocessing's exit hook may be polling its
        # children in the main thread at this moment, and a closed one makes it
        # print "process object is closed". Once reaped it only leaves
        # multiprocessing's list; its sentinel fd goes with it (GC).
        if self._proc is not None and self._proc.exitcode is not None:
            children: set[Any] = multiprocessing.process._children  # type: ignore[attr-defined]
            children.discard(self._proc)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._released = True


class Slots:
    """Four int64 per worker in shared memory, written by the workers (see ``_worker``)."""

    def __init__(self, workers: int) -> None:
        self.fd = os.memfd_create("gilfree-slots", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, max(32 * workers, mmap.PAGESIZE))
        self._map = mmap.mmap(self.fd, 0)
        self._view = memoryview(self._map).cast("q")

    def reset(self, index: int) -> None:
        self._view[4 * index : 4 * index + 4] = memoryview(bytes(32)).cast("q")

    def read(self, index: int) -> tuple[int, int, int, bool]:
        """(chunk seq, position, start ns, running) of worker ``index``."""
        view = self._view
        base = 4 * index
        while True:  # the worker may be writing: read until two reads agree
            a = tuple(view[base : base + 4])
            b = tuple(view[base : base + 4])
            if a == b:
                return a[0], a[1], a[2], a[3] == 1

    def close(self) -> None:
        self._view.release()
        self._map.close()
        os.close(self.fd)


class WakePipe:
    """Wakes the manager's ``select`` from other threads: one byte per wake-up at most.

    ``wake`` is called under the manager's lock, ``clear`` by the manager when
    it takes what it was woken for.
    """

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self._woken = False

    def wake(self, force: bool = False) -> None:
        # The byte is written before the flag is set: a KeyboardInterrupt in
        # between must not leave the flag up with the manager asleep.
        if self._w < 0:  # closed: the number may belong to another file now
            return
        if force or not self._woken:
            try:
                os.write(self._w, b"\0")
            except OSError:  # full: a wake-up is pending anyway
                pass
            # A forced wake brings nothing to take: the flag stays as it was.
            # Raised, it would stay up (only taking incoming work clears it),
            # and the next submit would write no byte: the manager slept with
            # a map's chunks queued (shutdown with cancel_futures, then a drain).
            self._woken = self._woken or not force

    def clear(self) -> None:
        self._woken = False

    def drain(self) -> None:
        try:  # a short read empties it: no second read just to hear EAGAIN
            while len(os.read(self.fd, 4096)) == 4096:
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Only under the lock ``wake`` is called under."""
        fds, self._w = (self.fd, self._w), -1
        for fd in fds:
            os.close(fd)


class Poller(Generic[T]):
    """An epoll set whose events come back as the data registered with each fd.

    ``selectors`` does the same with ~1.7 us more per wake-up (a key object
    per event), which with 8 workers is a wake-up per task.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._data: dict[int, T] = {}

    def register(self, fd: int, events: int, data: T) -> None:
        self._epoll.register(fd, events)
        self._data[fd] = data

    def unregister(self, fd: int) -> None:
        if self._data.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):  # closed already
                pass

    def poll(self, timeout: float | None) -> list[T]:
        """The data of each ready fd, looked up now: handlers may unregister
        an fd whose number a new worker's pipe then reuses."""
        # Rounded up to whole milliseconds, as selectors does: a shorter wait
        # would return at once, and the loop would spin until the deadline.
        wait = -1.0 if timeout is None else math.ceil(timeout * 1e3) * 1e-3
        data = self._data
        return [data[fd] for fd, _ in self._epoll.poll(wait) if fd in data]

    def close(self) -> None:
        self._epoll.close()

"""A fork server of our own: forks workers from a clean, single-threaded process.

Forking the caller's process is only safe while it has one thread; once the
manager thread (or any thread of the user's) runs, new workers must come from
elsewhere. ``multiprocessing``'s forkserver would do, but it re-imports the
caller's ``__main__`` in every worker, which runs an unguarded script again.
This *zygote* is a fresh interpreter, started once per parent process on first
need, that has imported only gilfree's worker. It forks a worker per request
in about a millisecond, instead of the ~60 ms of starting an interpreter.

Protocol on one Unix socket (requests serialised by a lock in the parent):

* ``("fork", config)`` with the worker's five fds attached -> ``("pid", pid)``
  with a pidfd for the new worker attached (opened by the zygote before it can
  reap the child, so the pid cannot be reused in between);
* ``("status", pid)`` -> ``("status", pid, exitcode)`` once that worker has
  exited and been reaped by the zygote (its parent), exit code as
  ``multiprocessing`` reports it (negative: killed by that signal). Replies
  may come late and out of order; the client keeps those it was not waiting for.

Every round trip is bounded (``REPLY_TIMEOUT_S``); a zygote that exits or
stops answering raises ``ZygoteGone`` in the caller, and the next ``get()``
starts a fresh one.

The zygote exits when the parent does (EOF on its socket); workers notice the
parent's death on their own (see ``_worker``).
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_MAX_FDS = 8
#: The zygote's program. SIGINT comes blocked from the parent (see ``Zygote``);
#: setting SIG_IGN before unblocking it discards one sent in between.
_SERVE = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "from gilfree.pool._zygote import serve; serve()"
)
#: Seconds one request to the zygote may take. A fork answers in about a
#: millisecond; the first request also waits for the zygote's interpreter to
#: start (0.1-1 s on a loaded machine). Past this the zygote is presumed hung:
#: it is killed, and the next request starts a new one.
REPLY_TIMEOUT_S = 10.0
#: Seconds ``status`` waits for the zygote to report an exited worker. The
#: zygote reaps on SIGCHLD, at once; a worker whose status is late is reported
#: with an unknown exit code rather than stalling the pool's manager.
STATUS_TIMEOUT_S = 1.0


class ZygoteGone(ConnectionError):
    """The zygote exited, or stopped answering and was killed."""


class Zygote:
    """The parent's client for the zygote process.

    Every call is bounded: the socket has a timeout, and a zygote that misses
    it is killed (its workers die with it and are replaced by the pool).
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lock = threading.Lock()
        # Ctrl-C reaches the whole process group. The zygote ignores SIGINT,
        # but only once its code runs: one sent while its interpreter starts
        # (~0.1 s) printed a second KeyboardInterrupt traceback beside the
        # caller's and killed it. The child inherits this thread's signal
        # mask through exec, so it starts with SIGINT held back; the caller
        # still gets its Ctrl-C, from another thread or once this returns.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._popen = subprocess.Popen(
                [sys.executable, "-c", _SERVE, str(theirs.fileno()), repr(sys.path)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            theirs.close()
        ours.settimeout(REPLY_TIMEOUT_S)
        self._sock = ours
        self.pid = self._popen.pid
        self._broken = False
        # Status replies that arrived while another reply was awaited.
        self._statuses: dict[int, int] = {}
        self._asked: set[int] = set()

    def fork(self, config: dict[str, Any], fds: list[int]) -> tuple[int, int]:
        """Start a worker; returns (pid, pidfd). Raises ZygoteGone."""
        with self._lock:
            try:
                self._check()
                socket.send_fds(self._sock, [_pack(("fork", config))], fds)
                msg, got = self._recv_until(lambda m: m[0] == "pid", REPLY_TIMEOUT_S)
            except OSError as exc:  # ConnectionError, TimeoutError: it is gone or hung
                self._fail()
                raise ZygoteGone(f"gilfree's fork server (pid {self.pid}) failed: {exc}") from exc
            if len(got) != 1:
                for fd in got:
                    os.close(fd)
                self._fail()
                raise ZygoteGone(f"gilfree's fork server sent {len(got)} pidfds for one fork")
            return msg[1], got[0]

    def status(self, pid: int, timeout: float = STATUS_TIMEOUT_S) -> int | None:
        """The exit code of an exited worker; None if not reported within ``timeout``.

        Raises ZygoteGone if the zygote itself is gone (the worker then died
        with it: workers are killed when their zygote dies, see ``_worker``).
        """
        with self._lock:
            if pid in self._statuses:
                return self._statuses.pop(pid)
            try:
                self._check()
                if pid not in self._asked:
                    self._sock.sendall(_pack(("status", pid)))
                    self._asked.add(pid)
                msg, _ = self._recv_until(lambda m: m[0] == "status" and m[1] == pid, timeout)
            except TimeoutError:
                return None  # still asked: a late reply is kept in _statuses
            except OSError as exc:
                self._fail()
                raise ZygoteGone(f"gilfree's fork server (pid {self.pid}) is gone") from exc
            self._asked.discard(pid)
            code: int = msg[2]
            return code

    def _check(self) -> None:
        if self._broken:
            raise ConnectionError("the fork server was closed")

    def _recv_until(
        self, wanted: Callable[[tuple[Any, ...]], bool], timeout: float
    ) -> tuple[tuple[Any, ...], list[int]]:
        """The next reply ``wanted`` accepts; status replies for others are kept.

        TimeoutError only when no reply began to arrive within ``timeout`` (the
        stream stays in step); a reply cut short raises another OSError.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                raise TimeoutError("gilfree's fork server did not answer in time")
            msg, fds = self._recv()
            if wanted(msg):
                return msg, fds
            for fd in fds:
                os.close(fd)
            if msg[0] == "status":
                self._asked.discard(msg[1])
                self._statuses[msg[1]] = msg[2]

    def _recv(self) -> tuple[tuple[Any, ...], list[int]]:
        head, fds, _flags, _addr = socket.recv_fds(self._sock, 4, _MAX_FDS)
        if len(head) < 4:
            for fd in fds:
                os.close(fd)
            if not head:
                raise ConnectionError("gilfree's fork server exited")
            head += _recv_exact(self._sock, 4 - len(head))
        n = int.from_bytes(head[:4], "little")
        body = _recv_exact(self._sock, n)
        msg: tuple[Any, ...] = pickle.loads(body)
        return msg, list(fds)

    def _fail(self) -> None:
        """Give up on this zygote: the next ``get()`` starts another."""
        self._broken = True
        self._sock.close()
        self._popen.kill()
        try:
            self._popen.wait(REPLY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass

    def alive(self) -> bool:
        return not self._broken and self._popen.poll() is None

    def close(self) -> None:
        self._broken = True
        self._sock.close()
        try:
            self._popen.wait(5)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def get() -> Zygote:
    """The process-wide zygote, started on first use (and again after it died or a fork)."""
    global _zygote, _exit_hook_pid
    with _zygote_lock:
        if _zygote is None or not _zygote.alive():
            _zygote = Zygote()
            if _exit_hook_pid != os.getpid():
                _exit_hook_pid = os.getpid()
                atexit.register(_close_at_exit)
        return _zygote


_exit_hook_pid = 0


def _close_at_exit() -> None:
    """Stop the zygote when the interpreter exits (it would on its own once its
    socket closed, but a Popen left running is reported as a ResourceWarning)."""
    global _zygote
    with _zygote_lock:
        zygote, _zygote = _zygote, None
    if zygote is not None and _exit_hook_pid == os.getpid():
        zygote.close()


def _reset_after_fork() -> None:  # a forked child must not talk to its parent's zygote
    global _zygote
    _zygote = None


os.register_at_fork(after_in_child=_reset_after_fork)


def _pack(msg: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(msg)
    return len(body).to_bytes(4, "little") + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("gilfree's zygote process exited")
        buf += chunk
    return bytes(buf)


# -- the zygote process ------------------------------------------------------------
def serve() -> None:
    try:
        _serve()
    except OSError:  # the parent is gone (a broken pipe on a reply): nothing to tell
        pass


def _serve() -> None:
    fd = int(sys.argv[1])
    sys.path[:] = eval(sys.argv[2])  # a repr of the parent's sys.path: plain strings
    from . import _worker  # the one import every worker needs, done once here

    _worker.prepare_fork()

    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    exited: dict[int, int] = {}
    asked: set[int] = set()
    pending = b""
    while True:
        ready, _, _ = select.select([fd, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(exited)
        for pid in [p for p in asked if p in exited]:
            asked.discard(pid)
            sock.sendall(_pack(("status", pid, exited.pop(pid))))
        if fd not in ready:
            continue
        data, fds, _flags, _addr = socket.recv_fds(sock, 65536, _MAX_FDS)
        if not data:
            return  # the parent is gone
        pending += data
        while len(pending) >= 4 and len(pending) - 4 >= int.from_bytes(pending[:4], "little"):
            n = int.from_bytes(pending[:4], "little")
            msg, pending = pickle.loads(pending[4 : 4 + n]), pending[4 + n :]
            if msg[0] == "fork":
                pid = _fork_worker(_worker, msg[1], fds, [fd, wake_r, wake_w])
                pidfd = os.pidfd_open(pid)
                socket.send_fds(sock, [_pack(("pid", pid))], [pidfd])
                os.close(pidfd)
                fds = []
            elif msg[0] == "status":
                _reap(exited)
                if msg[1] in exited:
                    sock.sendall(_pack(("status", msg[1], exited.pop(msg[1]))))
                else:
                    asked.add(msg[1])


def _reap(exited: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exited[pid] = os.waitstatus_to_exitcode(status)


def _fork_worker(worker: Any, config: dict[str, Any], fds: list[int], own: list[int]) -> int:
    # We are single-threaded, so the worker may tie its life to ours (see _worker).
    config = {**config, "ppid": os.getpid()}
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            worker.main(config, *fds, close_fds=own)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    for f in fds:
        os.close(f)
    return pid

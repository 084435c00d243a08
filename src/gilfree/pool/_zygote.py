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
  ``multiprocessing`` reports it (negative: killed by that signal).

The zygote exits when the parent does (EOF on its socket); workers notice the
parent's death on their own (see ``_worker``).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

_MAX_FDS = 8
_SERVE = "from gilfree.pool._zygote import serve; serve()"


class Zygote:
    """The parent's client for the zygote process."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lock = threading.Lock()
        self._popen = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(theirs.fileno()), repr(sys.path)],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._sock = ours
        self.pid = self._popen.pid
        self._statuses: dict[int, int] = {}

    def fork(self, config: dict[str, Any], fds: list[int]) -> tuple[int, int]:
        """Start a worker; returns (pid, pidfd)."""
        with self._lock:
            socket.send_fds(self._sock, [_pack(("fork", config))], fds)
            msg, got = self._recv()
            assert msg[0] == "pid" and len(got) == 1, msg
            return msg[1], got[0]

    def status(self, pid: int) -> int | None:
        """The exit code of an exited worker (blocks until the zygote has reaped it)."""
        with self._lock:
            if pid in self._statuses:
                return self._statuses.pop(pid)
            self._sock.sendall(_pack(("status", pid)))
            msg, _ = self._recv()
            return msg[2]

    def _recv(self) -> tuple[tuple[Any, ...], list[int]]:
        head, fds, _flags, _addr = socket.recv_fds(self._sock, 4, _MAX_FDS)
        if not head:
            raise ConnectionError("gilfree's zygote process exited")
        n = int.from_bytes(head[:4], "little")
        body = _recv_exact(self._sock, n)
        return pickle.loads(body), list(fds)

    def alive(self) -> bool:
        return self._popen.poll() is None

    def close(self) -> None:
        self._sock.close()
        try:
            self._popen.wait(5)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def get() -> Zygote:
    """The process-wide zygote, started on first use (and again after a fork)."""
    global _zygote
    with _zygote_lock:
        if _zygote is None or not _zygote.alive():
            _zygote = Zygote()
        return _zygote


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
    fd = int(sys.argv[1])
    sys.path[:] = eval(sys.argv[2])  # a repr of the parent's sys.path: plain strings
    from . import _worker  # the one import every worker needs, done once here

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    exited: dict[int, int] = {}
    asked: set[int] = set()
    pending = b""
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(exited)
        for pid in [p for p in asked if p in exited]:
            asked.discard(pid)
            sock.sendall(_pack(("status", pid, exited.pop(pid))))
        if sock not in ready:
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

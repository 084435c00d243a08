"""The lock server: one owner and one wait-for graph for locks shared with other processes.

A gilfree lock pickled for another process (a process-backend task argument)
stays hosted by the process that created it. The first such pickling starts a
lock server there; the other process gets a proxy (:mod:`._proxy`) whose every
acquire and release is a request to it::

    creating process (hosts the lock)                      another process
    +----------------------------------------------+       +----------------------------+
    |  local threads --acquire/release--> Lock       |       |  RemoteLock (the unpickled |
    |                                      ^          |       |  argument)                 |
    |        _acquire_as((pid, ident, n)) |          |       |   acquire/release          |
    |  handler thread, one per remote thread <------+-------+-- Connection, one per      |
    |  accept thread (Listener, authkey)            | unix  |   thread, opened lazily    |
    |  GRAPH: the same wait-for graph local threads | socket|                            |
    +----------------------------------------------+       +----------------------------+

A handler thread acquires on behalf of its remote thread, so a remote waiter is
an ordinary node of the host's graph and a cycle through any mix of local and
remote threads is refused at once with DeadlockError, sent back as the reply.
When a remote thread or process goes away (its connection closes) the locks it
held are released, the way a database aborts the transaction of a lost client.

Limits: one graph per hosting process, so a cycle through locks hosted by two
different processes is not seen; a lock is shared only once it is pickled.

Everything is daemon threads started on first use and stopped by
:func:`shutdown` (also run at exit), which removes the socket and its folder.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import tempfile
import threading
from _thread import allocate_lock
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener, wait
from time import monotonic
from typing import Any, Protocol

from ..errors import DeadlockError
from ._graph import GRAPH


class HostedLock(Protocol):
    """What the server needs of a gilfree lock it hosts (``_locks.HostedLock``;
    named here so that this module does not import the locks that import it)."""

    _kind: str
    _owner: Any
    _shared: Any

    @property
    def name(self) -> str: ...

    def locked(self) -> bool: ...

    def _acquire_as(
        self,
        me: Any,
        blocking: bool = ...,
        timeout: float = ...,
        *,
        where: str | None = ...,
        who: str | None = ...,
        wait: Callable[[Any, float], bool] | None = ...,
    ) -> bool: ...

    def _release_as(self, me: Any) -> None: ...

    def _abandon(self, me: Any) -> bool: ...


__all__ = ["HostedLock", "LockServer", "current_server", "hosting", "shutdown"]

# A handler blocked on a lock wakes this often to notice that its requester's
# connection closed or that the server is stopping, and gives up the wait.
# Deadlock detection does not depend on it (it happens when the wait begins);
# it only bounds how long a dead requester keeps a place in the queue.
_WAKE_EVERY = 0.25


class _Abandoned(Exception):
    """The requester went away, or the server is stopping, while it waited."""


class LockServer:
    """Hosts this process's shared locks for requests from other processes."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._dir = tempfile.mkdtemp(prefix="gilfree-locks-")
        self.address = os.path.join(self._dir, "locks.sock")
        self.authkey = os.urandom(32)
        self._listener = Listener(self.address, family="AF_UNIX", authkey=self.authkey)
        # Written once by stop(); never drained, so every handler sees it.
        self._stop_r, self._stop_w = os.pipe()
        self._mutex = allocate_lock()
        self._locks: dict[int, HostedLock] = {}
        self._lock_ids = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._handlers: set[threading.Thread] = set()
        self.stopped = False
        self._accepter = threading.Thread(
            target=self._accept_loop, name="gilfree-lock-server", daemon=True
        )
        self._accepter.start()

    # -- locks -----------------------------------------------------------------

    def share(self, lock: HostedLock) -> int:
        with self._mutex:
            shared = lock._shared
            if shared is not None and shared[0] is self:
                return shared[1]
            lock_id = next(self._lock_ids)
            self._locks[lock_id] = lock
            lock._shared = (self, lock_id)
            return lock_id

    def lookup(self, lock_id: int) -> HostedLock | None:
        return self._locks.get(lock_id)

    # -- threads ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        # This thread never releases a user's lock: a plain Lock waited for by
        # everyone else is not saved by it (see _graph's rule).
        GRAPH.plumbing(threading.get_ident(), True)
        try:
            self._accept_until_stopped()
        finally:
            GRAPH.plumbing(threading.get_ident(), False)

    def _accept_until_stopped(self) -> None:
        while not self.stopped:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError, AuthenticationError):
                if self.stopped:
                    return
                continue  # a client that failed the handshake or hung up
            with self._mutex:
                if self.stopped:
                    conn.close()
                    return
                handler = threading.Thread(
                    target=self._serve,
                    args=(conn, next(self._conn_ids)),
                    name="gilfree-lock-handler",
                    daemon=True,
                )
                self._handlers.add(handler)
            handler.start()

    def _serve(self, conn: Connection, serial: int) -> None:
        key: Any = None
        held: set[int] = set()
        try:
            if self._stop_r in wait([conn, self._stop_r]):
                return
            pid, ident = conn.recv()
            key = (pid, ident, serial)
            while True:
                if self._stop_r in wait([conn, self._stop_r]):
                    return
                conn.send(self._handle(key, held, conn, conn.recv()))
        except (EOFError, OSError, _Abandoned):
            pass
        finally:
            for lock_id in held:
                lock = self._locks.get(lock_id)
                if lock is not None:
                    lock._abandon(key)
            conn.close()
            with self._mutex:
                self._handlers.discard(threading.current_thread())

    def _handle(self, key: Any, held: set[int], conn: Connection, msg: tuple) -> tuple:
        op, lock_id = msg[0], msg[1]
        lock = self._locks.get(lock_id)
        if lock is None:
            return ("error", "RuntimeError", f"lock #{lock_id} is not shared by pid {self.pid}")
        try:
            if op == "acquire":
                _, _, blocking, timeout, thread_name, where = msg
                who = f"thread {thread_name!r} (pid {key[0]}, ident {key[1]})"
                got = lock._acquire_as(
                    key, blocking, timeout, where=where, who=who, wait=self._waiter(conn)
                )
                if got:
                    held.add(lock_id)
                return ("ok", got)
            if op == "release":
                lock._release_as(key)
                if lock._owner != key:
                    held.discard(lock_id)
                return ("ok", None)
            if op == "locked":
                return ("ok", lock.locked())
            if op == "owned":
                return ("ok", lock._owner == key)
        except DeadlockError as exc:
            return ("deadlock", str(exc))
        except (ValueError, RuntimeError, OverflowError) as exc:
            return ("error", type(exc).__name__, str(exc))
        return ("error", "RuntimeError", f"unknown lock request {op!r}")

    def _waiter(self, conn: Connection) -> Any:
        def wait_for(inner: Any, timeout: float) -> bool:
            deadline = None if timeout < 0 else monotonic() + timeout
            while True:
                step = _WAKE_EVERY if deadline is None else min(_WAKE_EVERY, deadline - monotonic())
                if step <= 0:
                    return inner.acquire(False)
                if inner.acquire(True, step):
                    return True
                # The requester sends nothing while it waits for the reply, so a
                # readable connection means it hung up.
                if self.stopped or conn.poll():
                    raise _Abandoned

        return wait_for

    # -- shutdown --------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        with self._mutex:
            if self.stopped:
                return
            self.stopped = True
        os.write(self._stop_w, b"x")
        # Wake the accept() call with a bare connection that hangs up at once: its
        # handshake fails, and the loop sees ``stopped``. (No handshake on this
        # side, so this cannot block even if the accept thread is gone.)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
                wake.connect(self.address)
        except OSError:
            pass
        deadline = monotonic() + timeout
        self._accepter.join(timeout)
        with self._mutex:
            handlers = list(self._handlers)
        for handler in handlers:
            handler.join(max(0.0, deadline - monotonic()))
        self._listener.close()  # unlinks the socket file
        shutil.rmtree(self._dir, ignore_errors=True)
        os.close(self._stop_r)
        os.close(self._stop_w)
        with self._mutex:
            for lock in self._locks.values():
                if lock._shared is not None and lock._shared[0] is self:
                    lock._shared = None
            self._locks.clear()

    def threads(self) -> list[threading.Thread]:
        with self._mutex:
            return [self._accepter, *self._handlers]


_server: LockServer | None = None
_server_mutex = allocate_lock()
_atexit_registered = False


def current_server() -> LockServer | None:
    """This process's running lock server, if one was started (not a fork parent's)."""
    server = _server
    if server is None or server.pid != os.getpid() or server.stopped:
        return None
    return server


def _get_server() -> LockServer:
    global _server, _atexit_registered
    with _server_mutex:
        server = current_server()
        if server is None:
            server = _server = LockServer()
            if not _atexit_registered:
                atexit.register(shutdown)
                _atexit_registered = True
        return server


def shutdown(timeout: float = 5.0) -> None:
    """Stop this process's lock server: its threads end and its socket is removed.

    Proxies elsewhere then fail with GilfreeError; pickling a lock again starts
    a new server.
    """
    global _server
    with _server_mutex:
        server = current_server()
        _server = None
    if server is not None:
        server.stop(timeout)


def hosting(lock: HostedLock) -> tuple[LockServer, int]:
    """The server that hosts ``lock`` for other processes, and its id there
    (``__reduce__`` of a gilfree lock, see ``_proxy.reduce_shared``)."""
    shared = lock._shared
    if shared is not None and shared[0].pid != os.getpid():
        # A fork child pickling a copy of a lock its parent shared: point at the parent's.
        server: LockServer = shared[0]
        return server, int(shared[1])
    server = _get_server()
    return server, server.share(lock)

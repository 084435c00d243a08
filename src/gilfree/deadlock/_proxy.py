"""What a gilfree lock becomes when it is unpickled in another process.

``RemoteLock``/``RemoteRLock`` keep no state: each acquire, release or query is
a request to the lock server of the process that created the lock (see
:mod:`._server`), over a connection that belongs to the calling thread, so the
server can tell the threads of this process apart. The reply is a grant, a
refusal (``False`` for a timed or non-blocking request) or a DeadlockError.

Unpickled back in the hosting process, the proxy is the original lock again.
"""

from __future__ import annotations

import os
import threading
from _thread import get_ident
from multiprocessing.connection import Client, Connection
from typing import Any

from ..errors import DeadlockError, GilfreeError
from ._graph import call_site
from ._server import HostedLock, current_server, hosting

__all__ = ["RemoteLock", "RemoteRLock", "rebuild"]

# {address: (pid, Connection)} per thread; the pid tells a fork child that the
# connection it inherited belongs to its parent. A thread's connections close
# when it ends, and the server then releases what that thread held.
_local = threading.local()

_ERRORS = {"ValueError": ValueError, "OverflowError": OverflowError}


def _connection(address: str, authkey: bytes) -> Connection:
    conns = _local.__dict__.setdefault("conns", {})
    pid = os.getpid()
    entry = conns.get(address)
    if entry is None or entry[0] != pid:
        conn = Client(address, family="AF_UNIX", authkey=authkey)
        conn.send((pid, get_ident()))
        entry = conns[address] = (pid, conn)
    return entry[1]


def _forget(address: str) -> None:
    entry = _local.__dict__.get("conns", {}).pop(address, None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


class RemoteLock:
    """A gilfree Lock hosted by another process."""

    __slots__ = ("_address", "_authkey", "_id", "name")

    _kind = "Lock"

    def __init__(self, address: str, authkey: bytes, lock_id: int, name: str) -> None:
        self._address = address
        self._authkey = authkey
        self._id = lock_id
        self.name = name

    def _call(self, *msg: Any) -> Any:
        try:
            conn = _connection(self._address, self._authkey)
            conn.send(msg)
            reply = conn.recv()
        except (EOFError, OSError) as exc:
            _forget(self._address)
            raise GilfreeError(
                f"the lock server hosting {self.name!r} ({self._address}) is gone: its "
                f"process exited or stopped sharing locks ({type(exc).__name__}: {exc})"
            ) from None
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "deadlock":
            raise DeadlockError(reply[1])
        raise _ERRORS.get(reply[1], RuntimeError)(reply[2])

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._call(
            "acquire", self._id, blocking, timeout, threading.current_thread().name, call_site()
        )

    __enter__ = acquire

    def release(self) -> None:
        self._call("release", self._id)

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        return self._call("locked", self._id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild, (self._address, self._authkey, self._id, self._kind, self.name))

    def __repr__(self) -> str:
        return f"<gilfree.{self._kind} {self.name!r} hosted at {self._address}>"


class RemoteRLock(RemoteLock):
    """A gilfree RLock hosted by another process."""

    __slots__ = ()

    _kind = "RLock"

    def _is_owned(self) -> bool:
        return self._call("owned", self._id)


def reduce_shared(lock: HostedLock) -> tuple[Any, ...]:
    """``__reduce__`` of a gilfree lock: a proxy to the lock on its host's server."""
    server, lock_id = hosting(lock)
    return (rebuild, (server.address, server.authkey, lock_id, lock._kind, lock.name))


def rebuild(address: str, authkey: bytes, lock_id: int, kind: str, name: str) -> Any:
    server = current_server()
    if server is not None and server.address == address:
        lock = server.lookup(lock_id)
        if lock is not None:
            return lock  # back home: the very same lock object
    cls = RemoteRLock if kind == "RLock" else RemoteLock
    return cls(address, authkey, lock_id, name)

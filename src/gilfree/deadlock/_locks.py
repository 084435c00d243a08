"""``Lock`` and ``RLock``: drop-in ``threading`` locks that refuse to deadlock.

Each wraps a raw ``_thread`` lock and records its owner. The fast path is a
non-blocking acquire of that inner lock plus one attribute store
(``benchmarks/bench_locks.py`` prints its cost against ``threading.Lock``).
Only when the inner lock is taken does a request go to the wait-for graph
(:mod:`._graph`), which records the wait or refuses it with
:class:`~gilfree.errors.DeadlockError`.

They behave as ``_thread.lock`` and ``_thread.RLock`` do, errors and ``repr``
form included: a plain Lock may be released by any thread; an RLock only by
its owner; a timeout above ``threading.TIMEOUT_MAX`` raises OverflowError.

Owners are keys, not threads: a local thread is its ``get_ident()``, a thread
of another process is ``(pid, ident, connection)``, so the lock server (:mod:`._server`)
can acquire and release on behalf of remote threads with the same code
(``_acquire_as`` / ``_release_as``).
"""

from __future__ import annotations

import itertools
from _thread import TIMEOUT_MAX, allocate_lock, get_ident
from collections.abc import Callable
from typing import Any

from ..errors import DeadlockError
from ._graph import GRAPH, call_site, caller, local_thread_label

#: Seconds a thread alone waits for a plain Lock it holds before it is refused:
#: a thread started a moment before to release it may not be visible yet.
LONELY_GRACE_S = 0.1

__all__ = ["Lock", "RLock"]

# Numbers for unnamed locks, given the first time a name is asked for (a
# message, a repr), not at creation: creation stays cheap, and the counter is
# advanced under a lock, so no two locks share a number without the GIL either.
_serial = itertools.count(1)
_serial_mutex = allocate_lock()

# How a waiter blocks on the inner lock: (inner, timeout) -> acquired. The lock
# server passes one that also notices a dead requester or a server stop.
WaitFn = Callable[[Any, float], bool]


def _plain_wait(inner: Any, timeout: float) -> bool:
    return inner.acquire(True, timeout)


class _GraphLock:
    """What Lock and RLock share: the contended path through the wait-for graph."""

    __slots__ = ("__weakref__", "_inner", "_name", "_owner", "_shared", "_site")

    _kind = "Lock"

    def __init__(self, name: str | None = None) -> None:
        self._inner = allocate_lock()
        self._owner: Any = None
        self._shared: Any = None  # (server, lock id) once pickled, see _server.hosting
        self._name = name
        # Without a name, remember where the lock was made and format it only
        # when someone asks: under deadlock_detection() every Condition, Event
        # and Future makes locks, so creation cost matters more than naming.
        self._site: tuple[str, int] | None = None if name is not None else caller(2)

    @property
    def name(self) -> str:
        if self._name is None:
            with _serial_mutex:
                if self._name is None:
                    assert self._site is not None  # taken when no name was given
                    filename, lineno = self._site
                    serial = next(_serial)
                    self._name = f"{self._kind}-{serial} (created at {filename}:{lineno})"
        return self._name

    def _taken(self, me: Any) -> None:
        self._owner = me

    def _acquire_as(
        self,
        me: Any,
        blocking: bool = True,
        timeout: float = -1,
        *,
        where: str | None = None,
        who: str | None = None,
        wait: WaitFn | None = None,
    ) -> bool:
        """Acquire for owner key ``me``; the contended path of every acquire."""
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
        elif timeout != -1:
            if timeout < 0:
                raise ValueError("timeout value must be a non-negative number")
            if timeout > TIMEOUT_MAX:
                raise OverflowError("timeout value is too large")
        if self._inner.acquire(False):
            self._taken(me)
            return True
        if not blocking or timeout == 0:
            return False  # never waits, so never an edge of the graph
        where = where if where is not None else call_site()
        who = who if who is not None else local_thread_label(me)
        try:
            GRAPH.wait_begins(me, self, where, who, timeout != -1)
        except DeadlockError as exc:
            # No other thread shows: one started a moment ago to release this
            # Lock may not have (CPython's test_foreign_thread: 1 run in 4).
            # Give it LONELY_GRACE_S, then look again; still alone, refuse.
            if not getattr(exc, "lonely", False):
                raise
            if self._inner.acquire(True, LONELY_GRACE_S):
                self._taken(me)
                return True
            GRAPH.wait_begins(me, self, where, who, timeout != -1)
        try:
            got = (wait or _plain_wait)(self._inner, timeout)
        finally:
            # Leave the graph before storing the owner: a waiter whose lock's
            # owner is itself must mean a real self-wait (see _graph).
            GRAPH.wait_ends(me)
        if got:
            self._taken(me)
        return got

    def _release_as(self, me: Any) -> None:
        """Release for owner key ``me`` (Lock and RLock differ)."""
        raise NotImplementedError

    def _abandon(self, me: Any) -> bool:
        """Release whatever ``me`` holds (its process or thread is gone)."""
        if self._owner != me:
            return False
        self._owner = None
        self._inner.release()
        return True

    def locked(self) -> bool:
        return self._inner.locked()

    def _at_fork_reinit(self) -> None:
        # threading calls this on the locks of its own objects in a fork child.
        self._inner = allocate_lock()
        self._owner = None

    def __reduce__(self) -> tuple[Any, ...]:
        from ._proxy import reduce_shared  # here: it loads multiprocessing.connection

        return reduce_shared(self)

    def __repr__(self) -> str:
        # The stdlib's form, "<unlocked _thread.lock object at 0x...>", plus our name.
        owner = self._owner
        state = "locked" if self.locked() else "unlocked"
        return (
            f"<{state} gilfree.{self._kind} object name={self.name!r} "
            f"owner={owner!r}{self._count_field()} at {id(self):#x}>"
        )

    def _count_field(self) -> str:
        return ""


class Lock(_GraphLock):
    """A ``threading.Lock`` that raises DeadlockError instead of deadlocking.

    Like ``threading.Lock`` any thread may release it, so a thread that holds
    it may wait to acquire it again until another thread releases it (a Lock
    used as a signal). That wait is refused only when no other thread could
    release it: every other live thread is itself blocked in an unbounded wait
    for a held lock, or there is none.
    """

    __slots__ = ()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if timeout == -1 and self._inner.acquire(False):
            self._owner = get_ident()
            return True
        return self._acquire_as(get_ident(), blocking, timeout)

    __enter__ = acquire

    def release(self) -> None:
        # Clear the owner first: once the inner lock is free another thread may
        # take it and store itself, which must not be overwritten.
        self._owner = None
        self._inner.release()

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._inner.release()

    def _release_as(self, me: Any) -> None:
        self.release()

    # The old names _thread.lock still answers to.
    acquire_lock = acquire
    release_lock = release
    locked_lock = _GraphLock.locked


class RLock(_GraphLock):
    """A ``threading.RLock`` that raises DeadlockError instead of deadlocking.

    Re-entry by the owner is counted, never a wait. Works under
    ``threading.Condition`` (``_is_owned``, ``_release_save``, ``_acquire_restore``).
    """

    __slots__ = ("_count",)

    _kind = "RLock"

    def __init__(self, name: str | None = None) -> None:
        self._count = 0
        super().__init__(name)

    def _taken(self, me: Any) -> None:
        self._owner = me
        self._count = 1

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = get_ident()
        if self._owner == me:
            self._count += 1
            return True
        if timeout == -1 and self._inner.acquire(False):
            self._owner = me
            self._count = 1
            return True
        return self._acquire_as(me, blocking, timeout)

    __enter__ = acquire

    def release(self) -> None:
        if self._owner != get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count = count = self._count - 1
        if not count:
            self._owner = None
            self._inner.release()

    def __exit__(self, *exc: object) -> None:
        # release() inlined: __exit__ is on the fast path of every ``with``.
        if self._owner != get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count = count = self._count - 1
        if not count:
            self._owner = None
            self._inner.release()

    def _acquire_as(self, me: Any, blocking: bool = True, timeout: float = -1, **kw: Any) -> bool:
        if self._owner == me:
            self._count += 1
            return True
        return super()._acquire_as(me, blocking, timeout, **kw)

    def _release_as(self, me: Any) -> None:
        if self._owner != me:
            raise RuntimeError("cannot release un-acquired lock")
        self._count = count = self._count - 1
        if not count:
            self._owner = None
            self._inner.release()

    def _abandon(self, me: Any) -> bool:
        if self._owner != me:
            return False
        self._count = 0
        return super()._abandon(me)

    def _at_fork_reinit(self) -> None:
        super()._at_fork_reinit()
        self._count = 0

    def _count_field(self) -> str:
        return f" count={self._count}"

    def _recursion_count(self) -> int:
        return self._count if self._owner == get_ident() else 0

    # threading.Condition uses these to release fully around a wait.
    def _is_owned(self) -> bool:
        return self._owner == get_ident()

    def _release_save(self) -> tuple[int, Any]:
        me = get_ident()
        if self._owner != me:
            raise RuntimeError("cannot release un-acquired lock")
        state = (self._count, me)
        self._count = 0
        self._owner = None
        self._inner.release()
        return state

    def _acquire_restore(self, state: tuple[int, Any]) -> None:
        count, owner = state
        self._acquire_as(owner, True, -1)
        self._count = count

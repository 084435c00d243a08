"""The process-wide wait-for graph.

A node is a thread: a local one is keyed by its ``threading.get_ident()``, a
thread of another process that uses a shared lock through the lock server is
keyed by ``(pid, ident)``. Edges come in two kinds and only one is stored::

    thread ──waits for──▶ lock ──held by──▶ thread
           (stored here,       (read live from the
            one per waiter)     lock's ``_owner``)

A thread waits for at most one lock, so the graph is a dict from waiter to
:class:`_Wait`. Following ``waiter -> lock -> owner -> the lock that owner
waits for -> ...`` from a new request either ends (no cycle) or comes back to
the requester: that request closes a cycle, and it is refused with
:class:`~gilfree.errors.DeadlockError` before it starts waiting, so the lock
state is untouched and the other threads in the cycle go on once the refused
thread unwinds and releases what it holds.

Why reading owners outside the graph mutex is sound: an owner is stored right
after its lock is taken and cleared right before it is released, so a stale
read shows either ``None`` or the thread that now holds the lock. Every thread
of a real cycle set the owner of the lock it holds before it asked for the
next one, and registered its wait under the mutex before the last request
looks, so the request that closes the cycle always sees all of it.
"""

from __future__ import annotations

import os
import sys
import threading
from _thread import allocate_lock
from typing import Any

from ..errors import DeadlockError

__all__ = ["GRAPH", "WaitForGraph", "call_site", "caller", "local_thread_label"]

# Frames in these files are lock plumbing, not the place a user waits.
_PLUMBING = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.abspath(threading.__file__),
)


def caller(depth: int = 2) -> tuple[str, int]:
    """``(file, line)`` of the first caller outside the lock plumbing."""
    frame = sys._getframe(depth)
    plumbing, threading_file = _PLUMBING
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != threading_file and not filename.startswith(plumbing):
            return filename, frame.f_lineno
        frame = frame.f_back
    return "<unknown>", 0


def call_site(depth: int = 3) -> str:
    """``file:line`` of the first caller outside the lock plumbing."""
    filename, lineno = caller(depth)
    return f"{filename}:{lineno}"


def local_thread_label(ident: int) -> str:
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    name = thread.name if thread is not None else f"<thread {ident}>"
    return f"thread {name!r} (pid {os.getpid()}, ident {ident})"


class _Wait:
    """One stored edge: who waits, for which lock, from where."""

    __slots__ = ("lock", "where", "who")

    def __init__(self, lock: Any, where: str, who: str) -> None:
        self.lock = lock
        self.where = where
        self.who = who


class WaitForGraph:
    """Waiters of every gilfree lock in this process; touched only on contention."""

    def __init__(self) -> None:
        # A raw _thread lock: threading.Lock may be patched by deadlock_detection().
        self._mutex = allocate_lock()
        self._waits: dict[Any, _Wait] = {}

    def wait_begins(self, me: Any, lock: Any, where: str, who: str) -> None:
        """Record that ``me`` is about to wait for ``lock``.

        Raises DeadlockError, recording nothing, when that wait closes a cycle.
        """
        with self._mutex:
            cycle = self._cycle_through(me, lock)
            if cycle is None:
                self._waits[me] = _Wait(lock, where, who)
                return
        raise DeadlockError(_describe(_Wait(lock, where, who), cycle))

    def wait_ends(self, me: Any) -> None:
        with self._mutex:
            self._waits.pop(me, None)

    def waiting(self) -> dict[Any, tuple[str, str, str]]:
        """Snapshot ``{waiter: (who, lock name, where)}``, for tests and debugging."""
        with self._mutex:
            return {k: (w.who, w.lock.name, w.where) for k, w in self._waits.items()}

    def _cycle_through(self, me: Any, lock: Any) -> list[_Wait] | None:
        """The waits from ``lock``'s owner back to ``me``, or None when there is no cycle."""
        path: list[_Wait] = []
        seen = set()
        owner = lock._owner
        while owner is not None:
            if owner == me:
                return path
            if owner in seen:
                # A cycle that does not pass through me: not this request's doing
                # (and only transient, see the module docstring).
                return None
            seen.add(owner)
            wait = self._waits.get(owner)
            if wait is None:
                return None  # the owner is running: it will release
            path.append(wait)
            owner = wait.lock._owner
        return None

    def _after_fork_in_child(self) -> None:
        # The child has only the forking thread; every recorded waiter is gone
        # and the mutex may have been held by a thread that no longer exists.
        self._mutex = allocate_lock()
        self._waits = {}


def _describe(request: _Wait, cycle: list[_Wait]) -> str:
    """The DeadlockError message: every thread, lock and waiting place in the cycle."""
    chain = [request, *cycle]
    lines = [
        f"{request.who} would wait forever for {_lock_label(request.lock)}: "
        f"its request closes a wait-for cycle of {len(chain)} thread(s) and was refused"
    ]
    for i, wait in enumerate(chain):
        holder = chain[(i + 1) % len(chain)].who
        verb = "requests" if i == 0 else "waits for"
        lines.append(
            f"  {wait.who} at {wait.where} {verb} {_lock_label(wait.lock)}, held by {holder}"
        )
    return "\n".join(lines)


def _lock_label(lock: Any) -> str:
    return f"{lock._kind} {lock.name!r}"


GRAPH = WaitForGraph()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=GRAPH._after_fork_in_child)

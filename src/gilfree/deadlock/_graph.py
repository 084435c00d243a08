"""The process-wide wait-for graph, and the rule that says when a wait is forever.

A node is a thread: a local one is keyed by its ``threading.get_ident()``, a
thread of another process that uses a shared lock through the lock server is
keyed by ``(pid, ident, connection)``. Edges come in two kinds and only one is
stored::

    thread ──waits for──▶ lock ──held by──▶ thread
           (stored here,       (read live from the
            one per waiter)     lock's ``_owner``)

A thread waits for at most one lock, so the graph is a dict from waiter to
:class:`_Wait`. Every wait is stored, timed ones flagged ``bounded``, but only
an unbounded request is ever checked or refused: a bounded wait ends by itself.
Under ``deadlock_detection()`` an unbounded ``Thread.join()`` is stored too,
its "lock" the joined thread's end (``_patch._ThreadEnd``, kind ``Thread``),
owned by that thread until it ends: strict like an RLock.

The rule (see the package docstring for the user's version): an unbounded
request is refused when, once it waits, its thread could never run again.
Follow ``requester -> lock -> owner -> the lock that owner waits for -> ...``:

- the chain ends (a lock with no owner, an owner that is running or in a timed
  wait): someone can still release, the request waits;
- it comes back to a thread already on it: every wait on it is unbounded. If
  all its locks are ``RLock`` or joins (only the owner can end those) nothing
  outside can end it: refused. If one is a plain ``Lock``, any thread may release that one,
  so it is refused only when no other thread can run: every live thread of the
  process (lock-server plumbing aside) is itself in an unbounded wait for a
  held lock, and no such Lock is shared with another process (whose threads
  this graph cannot count).

A refused request raises :class:`~gilfree.errors.DeadlockError` before it
waits, so the lock state is untouched and the other threads go on once the
refused thread unwinds and releases what it holds.

Why reading owners outside the graph mutex is sound: an owner is stored after
its lock is taken and the wait that got it has left the graph, and cleared
before the lock is released, so a stale read shows either ``None`` (treated as
"someone will get it") or the thread that now holds the lock. Every thread of
a real deadlock stored the owner of what it holds before it asked for the next
lock, and registered that wait under the mutex before the last request looks,
so the request that completes the deadlock always sees all of it. Counting
live threads races only with threads starting, which can only make a request
look less stuck.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from _thread import _count as _started_threads
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
    frame: types.FrameType | None = sys._getframe(depth)
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
    """One stored edge: who waits, for which lock, from where, and whether it is timed."""

    __slots__ = ("bounded", "lock", "where", "who")

    def __init__(self, lock: Any, where: str, who: str, bounded: bool) -> None:
        self.lock = lock
        self.where = where
        self.who = who
        self.bounded = bounded


#: Why a thread alone may not wait for a plain Lock it holds.
NO_OTHER_THREAD = "no other thread exists to release it"


class WaitForGraph:
    """Waiters of every gilfree lock in this process; touched only on contention."""

    def __init__(self) -> None:
        # A raw _thread lock: threading.Lock may be patched by deadlock_detection().
        self._mutex = allocate_lock()
        self._waits: dict[Any, _Wait] = {}
        # Idents of live threads that never release a user's lock (the lock
        # server's accept loop): they do not count as "someone could release".
        self._plumbing: set[int] = set()

    def wait_begins(self, me: Any, lock: Any, where: str, who: str, bounded: bool = False) -> None:
        """Record that ``me`` is about to wait for ``lock``.

        Raises DeadlockError, recording nothing, when an unbounded wait would
        never end (the rule is in the module docstring).
        """
        request = _Wait(lock, where, who, bounded)
        with self._mutex:
            found = None if bounded else self._forever(me, lock)
            if found is None:
                self._waits[me] = request
                return
        err = DeadlockError(_describe(me, request, *found))
        # Alone with a plain Lock it holds: a thread just started to release it
        # may not show yet (see Lock's acquire, which looks again a moment later).
        err.lonely = found[2] == NO_OTHER_THREAD  # type: ignore[attr-defined]
        raise err

    def wait_ends(self, me: Any) -> None:
        with self._mutex:
            self._waits.pop(me, None)

    def plumbing(self, ident: int, running: bool) -> None:
        """Mark thread ``ident`` as lock plumbing while ``running``."""
        with self._mutex:
            if running:
                self._plumbing.add(ident)
            else:
                self._plumbing.discard(ident)

    def waiting(self) -> dict[Any, tuple[str, str, str]]:
        """Snapshot ``{waiter: (who, lock name, where)}``, for tests and debugging."""
        with self._mutex:
            return {k: (w.who, w.lock.name, w.where) for k, w in self._waits.items()}

    def _forever(self, me: Any, lock: Any) -> tuple[list[tuple[Any, _Wait]], Any, str] | None:
        """Why ``me`` waiting for ``lock`` never ends, or None when it may.

        Returns ``(chain, closer, note)``: the ``(owner, wait)`` pairs followed
        from the request, the owner at which the chain comes back on itself, and
        a sentence for plain Locks (empty when there are none).
        """
        chain: list[tuple[Any, _Wait]] = []
        on_chain = {me}
        plain = False
        while (owner := lock._owner) is not None:
            if lock._kind == "Lock":
                if lock._shared is not None:
                    return None  # threads of other processes, uncounted here, may release it
                plain = True
            if owner in on_chain:
                if plain:
                    note = self._nobody_else_runs(me)
                    if note is None:
                        return None
                    return chain, owner, note
                return chain, owner, ""
            wait = self._waits.get(owner)
            if wait is None or wait.bounded:
                return None  # the owner runs, or its wait ends by itself: it may release
            on_chain.add(owner)
            chain.append((owner, wait))
            lock = wait.lock
        return None

    def _nobody_else_runs(self, me: Any) -> str | None:
        """A sentence saying why no thread can release a plain Lock, or None if one can."""
        others = [w for k, w in self._waits.items() if k != me]
        for wait in others:
            if wait.bounded or wait.lock._owner is None:
                return None  # it runs again by itself, or is about to get its lock
            if wait.lock._kind == "Lock" and wait.lock._shared is not None:
                return None  # threads of other processes may release it
        if _live_threads() - len(self._plumbing) > len(others) + 1:
            return None  # some thread is not waiting for a lock: it may release
        if not others:
            return NO_OTHER_THREAD
        return (
            f"the {len(others)} other thread(s) of this process, which could release "
            "a plain Lock, are all blocked in unbounded waits for held locks"
        )

    def _after_fork_in_child(self) -> None:
        # The child has only the forking thread; every recorded waiter is gone
        # and the mutex may have been held by a thread that no longer exists.
        self._mutex = allocate_lock()
        self._waits = {}
        self._plumbing = set()


def _live_threads() -> int:
    """How many threads this process has: any of them not waiting may release a plain Lock.

    The operating system's count where there is one: Python counts a thread
    started with ``_thread.start_new_thread`` only once it runs, so right after
    the start a thread meant to release would be missed. Native threads (a C
    library's pool) count too, which can only make a request look less stuck.
    """
    python = max(_started_threads() + 1, len(threading._active))  # type: ignore[attr-defined]
    try:
        return max(python, len(os.listdir(_TASKS)))
    except OSError:
        return python


_TASKS = "/proc/self/task"  # one entry per thread of the calling process (Linux)


def _describe(
    me: Any, request: _Wait, chain: list[tuple[Any, _Wait]], closer: Any, note: str
) -> str:
    """The DeadlockError message: every thread, lock and waiting place in the deadlock."""
    waits = [(me, request), *chain]
    who = {key: wait.who for key, wait in waits}
    if closer == me:
        head = f"its request closes a wait-for cycle of {len(waits)} thread(s) and was refused"
    else:
        size = len(waits) - [key for key, _ in waits].index(closer)
        head = (
            f"its request waits on a wait-for cycle of {size} thread(s) that never ends, "
            "and was refused"
        )
    lines = [f"{request.who} would wait forever for {_lock_label(request.lock)}: {head}"]
    for i, (_, wait) in enumerate(waits):
        holder = who[waits[i + 1][0]] if i + 1 < len(waits) else who[closer]
        if wait.lock._kind == "Thread":  # an unbounded join (see _patch)
            what = f"{'asks to join' if i == 0 else 'joins'} {holder}"
        else:
            verb = "requests" if i == 0 else "waits for"
            what = f"{verb} {_lock_label(wait.lock)}, held by {holder}"
        lines.append(f"  {wait.who} at {wait.where} {what}")
    if note:
        lines.append(f"  a plain Lock may be released by any thread, but {note}")
    return "\n".join(lines)


def _lock_label(lock: Any) -> str:
    if lock._kind == "Thread":
        return f"the end of thread {lock.name!r}"
    return f"{lock._kind} {lock.name!r}"


GRAPH = WaitForGraph()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=GRAPH._after_fork_in_child)

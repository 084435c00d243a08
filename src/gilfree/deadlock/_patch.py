"""``deadlock_detection()``: instrument the locks ``threading`` hands out.

Inside the block ``threading.Lock`` and ``threading.RLock`` make gilfree locks,
and so does everything in the standard library that calls them at creation
time: ``Condition``, ``Semaphore``, ``Event``, ``Barrier``, ``queue.Queue``.
Locks made before the block stay plain; locks made inside stay instrumented
after it. The patch is process-wide (all threads see it) and nests: the
originals come back when the outermost block exits, exception or not.

``Thread.join()`` without a timeout is an edge of the graph while the block is
active (``joiner -> the thread it joins``): a thread joining a thread that waits
forever waits forever too, so it cannot release a plain Lock, and a join that
closes a cycle (joining a thread that waits for a lock the joiner holds) is
refused with DeadlockError like a lock request.

``Condition.wait`` parks on a raw ``_thread`` lock of its own, so a thread
waiting for a notification is not an edge of the graph: only waits for a
lock that some thread holds, and unbounded joins, are.
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings
from _thread import allocate_lock, get_ident
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._graph import GRAPH, call_site, local_thread_label
from ._locks import Lock, RLock

__all__ = ["deadlock_detection"]

_mutex = allocate_lock()
_depth = 0
_originals: tuple[Any, Any, Any] | None = None


class _ThreadingLock(Lock):
    """``threading.Lock`` inside the block: a gilfree Lock that takes no arguments.

    Like ``_thread.lock`` it cannot be subclassed. Its ``__module__`` is
    ``threading`` because it stands in for ``threading.Lock``: code that checks
    where the names of ``threading.__all__`` come from (CPython's own
    ``test__all__``) must find it there.
    """

    __slots__ = ()
    __module__ = "threading"
    __qualname__ = "Lock"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise TypeError("threading.Lock() takes no arguments")
        Lock.__init__(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 'threading.Lock' is not an acceptable base type")


class _ThreadingRLock(RLock):
    """``threading.RLock`` inside the block: a gilfree RLock, arguments deprecated as there."""

    __slots__ = ()
    __module__ = "threading"
    __qualname__ = "RLock"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # threading.RLock warns (3.13) about arguments it ignores; a subclass
        # with its own __init__ calls this one without any, and gets no warning.
        if args or kwargs:
            warnings.warn(
                "Passing arguments to RLock is deprecated and will be removed in 3.15",
                DeprecationWarning,
                stacklevel=2,
            )
        RLock.__init__(self)


_ThreadingLock.__name__ = "Lock"
_ThreadingRLock.__name__ = "RLock"


class _FactoryLock(Lock):
    """What ``threading.Lock()`` makes under the patch before Python 3.13.

    There ``threading.Lock`` is a factory (``_thread.allocate_lock``) and the type
    of its locks cannot be instantiated (bpo-43916); the same holds here.
    """

    __slots__ = ()
    __module__ = "threading"
    __qualname__ = "lock"

    def __new__(cls, *args: Any, **kwargs: Any) -> _FactoryLock:
        raise TypeError(f"cannot create '{cls.__module__}.{cls.__name__}' instances")


_FactoryLock.__name__ = "lock"


def _allocate_lock(*args: Any, **kwargs: Any) -> Lock:
    if args or kwargs:
        raise TypeError("threading.Lock() takes no arguments")
    lock = object.__new__(_FactoryLock)
    Lock.__init__(lock)
    return lock


# Found where threading.__all__'s names are checked to come from (see _ThreadingLock).
_allocate_lock.__module__ = "threading"
_allocate_lock.__name__ = _allocate_lock.__qualname__ = "Lock"

# threading.Lock under the patch: the type from 3.13 on, as threading's own is.
_PATCHED_LOCK: Any = _ThreadingLock if sys.version_info >= (3, 13) else _allocate_lock


class _ThreadEnd:
    """What a joining thread waits for, shaped like a lock for the graph.

    Its "owner" is the joined thread while it lives: only that thread can end
    the wait (by ending), as only the owner can release an RLock.
    """

    __slots__ = ("_thread",)

    _kind = "Thread"
    _shared = None

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread

    @property
    def _owner(self) -> Any:
        thread = self._thread
        return thread.ident if thread.is_alive() else None

    @property
    def name(self) -> str:
        return self._thread.name


_THREAD_JOIN = threading.Thread.join


@functools.wraps(_THREAD_JOIN)
def _join(self: threading.Thread, timeout: float | None = None) -> None:
    # Only a join that can wait forever is an edge; everything else, the
    # errors for unstarted threads and self-joins included, is threading's.
    if timeout is not None or not self.is_alive() or self is threading.current_thread():
        return _THREAD_JOIN(self, timeout)
    me = get_ident()
    GRAPH.wait_begins(me, _ThreadEnd(self), call_site(), local_thread_label(me))
    try:
        return _THREAD_JOIN(self, timeout)
    finally:
        GRAPH.wait_ends(me)


@contextmanager
def deadlock_detection() -> Iterator[None]:
    """Make ``threading.Lock``/``RLock`` created in this block detect deadlocks.

    Unbounded ``Thread.join()`` calls made while the block is active are in the
    wait-for graph too (see the module docstring).
    """
    global _depth, _originals
    with _mutex:
        if _depth == 0:
            _originals = (threading.Lock, threading.RLock, threading.Thread.join)
            threading.Lock = _PATCHED_LOCK
            # typeshed declares threading.RLock as the stdlib's class; ours stands in for it.
            threading.RLock = _ThreadingRLock  # type: ignore[assignment]
            threading.Thread.join = _join  # type: ignore[method-assign]
        _depth += 1
    try:
        yield
    finally:
        with _mutex:
            _depth -= 1
            if _depth == 0 and _originals is not None:
                threading.Lock, threading.RLock, join = _originals
                threading.Thread.join = join  # type: ignore[method-assign]
                _originals = None

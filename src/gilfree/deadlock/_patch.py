"""``deadlock_detection()``: instrument the locks ``threading`` hands out.

Inside the block ``threading.Lock`` and ``threading.RLock`` make gilfree locks,
and so does everything in the standard library that calls them at creation
time: ``Condition``, ``Semaphore``, ``Event``, ``Barrier``, ``queue.Queue``.
Locks made before the block stay plain; locks made inside stay instrumented
after it. The patch is process-wide (all threads see it) and nests: the
originals come back when the outermost block exits, exception or not.

``Condition.wait`` parks on a raw ``_thread`` lock of its own, so a thread
waiting for a notification is not an edge of the graph: only waits for a
lock that some thread holds are.
"""

from __future__ import annotations

import threading
from _thread import allocate_lock
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._locks import Lock, RLock

__all__ = ["deadlock_detection"]

_mutex = allocate_lock()
_depth = 0
_originals: tuple[Any, Any] | None = None


@contextmanager
def deadlock_detection() -> Iterator[None]:
    """Make ``threading.Lock``/``RLock`` created in this block detect deadlocks."""
    global _depth, _originals
    with _mutex:
        if _depth == 0:
            _originals = (threading.Lock, threading.RLock)
            threading.Lock = Lock  # type: ignore[misc]
            threading.RLock = RLock  # type: ignore[misc]
        _depth += 1
    try:
        yield
    finally:
        with _mutex:
            _depth -= 1
            if _depth == 0 and _originals is not None:
                threading.Lock, threading.RLock = _originals  # type: ignore[misc]
                _originals = None

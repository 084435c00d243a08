"""Deadlock detection: locks that refuse the request closing a wait-for cycle.

Like a database, gilfree keeps one wait-for graph per process (``thread -> lock
it waits for -> thread holding it``) and refuses, with
:class:`~gilfree.errors.DeadlockError`, the lock request that would close a
cycle, naming every thread and lock in it and where each one waits.

What counts as a wait: a blocking ``acquire`` of a lock another thread holds,
timed or not (a timed wait is an edge while it lasts, and still returns False
when its time runs out). ``blocking=False`` and ``timeout=0`` never wait, and
``RLock`` re-entry is not a wait. A thread in ``Condition.wait`` waits for a
notification, not a lock, so it is not in the graph.

- ``_graph``  the wait-for graph and the DeadlockError message
- ``_locks``  ``Lock`` and ``RLock``: fast path without the graph, contended path through it
- ``_patch``  ``deadlock_detection()``: instruments ``threading.Lock``/``RLock``
- ``_server`` hosts locks pickled for other processes (one graph across processes)
- ``_proxy``  the unpickled lock in another process: requests to that server
"""

from __future__ import annotations

from ._locks import Lock, RLock
from ._patch import deadlock_detection

__all__ = ["Lock", "RLock", "deadlock_detection"]

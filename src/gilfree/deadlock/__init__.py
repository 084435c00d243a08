"""Deadlock detection: locks that refuse a wait that would never end.

Like a database, gilfree keeps one wait-for graph per process (``thread -> lock
it waits for -> thread holding it``) and refuses, with
:class:`~gilfree.errors.DeadlockError`, the lock request that would complete a
deadlock, naming every thread and lock in it and where each one waits. The
refused request changes nothing, so the others go on once it unwinds.

The exact rule. A request is refused only when all of these hold:

1. It is unbounded: ``acquire()`` or ``acquire(timeout=-1)``. A wait with a
   timeout, ``blocking=False`` or ``timeout=0`` is never refused and never
   makes another request refused: it ends by itself, and returns False as in
   plain Python when its time runs out (it is in the graph, flagged, for
   ``waiting()``). RLock re-entry by its owner is not a wait.
2. Following ``lock -> its owner -> the lock that owner waits for -> ...``
   from the request comes back to a thread already on that path (possibly the
   requester itself), and every wait on it is unbounded.
3. If every lock on that path is an ``RLock``: refused (only its owner may
   release an RLock, and every owner on the path waits forever).
   If one is a plain ``Lock``: any thread may release a Lock, so the request
   is refused only when no other thread can run: every other thread of the
   process (the lock server's own accept thread aside) is itself blocked in an
   unbounded wait for a held lock, or there is none; and no such Lock has been
   shared with another process, whose threads this process cannot count.

Inside ``deadlock_detection()`` an unbounded ``Thread.join()`` is a wait too,
for the joined thread, which alone can end it (as only its owner releases an
RLock): joining a thread that waits for a lock you hold is refused, and a
thread joining stuck threads cannot release a plain Lock.

So a thread may hold a Lock and acquire it again while another thread is
around to release it (a Lock used as a signal), and a cycle through plain
Locks is reported once nothing else in the process can run. A thread blocked
outside the graph (``Event.wait()``, ``Condition.wait()``, a timed join,
``sleep``, I/O) or a native thread counts as one that may still release.
When the request that completes a deadlock is not itself on the cycle (it
waits on threads already stuck), it is refused all the same, with the cycle
it waits on; the threads of that cycle stay blocked.

- ``_graph``  the wait-for graph, the rule above, the DeadlockError message
- ``_locks``  ``Lock`` and ``RLock``: fast path without the graph, contended path through it
- ``_patch``  ``deadlock_detection()``: instruments ``threading.Lock``/``RLock``
- ``_server`` hosts locks pickled for other processes (one graph across processes)
- ``_proxy``  the unpickled lock in another process: requests to that server
"""

from __future__ import annotations

from ._locks import Lock, RLock
from ._patch import deadlock_detection

__all__ = ["Lock", "RLock", "deadlock_detection"]

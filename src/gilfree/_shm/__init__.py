"""Shared-memory transport for NumPy arrays, both ways, with nothing left in /dev/shm.

Arguments: a NumPy array of ``share_threshold`` bytes (1 MiB) or more, found
anywhere in a task's arguments, is copied into a POSIX shared-memory segment
(``/dev/shm/gilfree-<parent pid>-a<n>``); what travels through the pipe is its
name, shape and dtype. The data is never pickled.

*They behave as pickled copies do.* The worker maps the segment privately,
copy-on-write (``MAP_PRIVATE``): the array is writable, nothing is copied
until a page is written, and a write lands in a page of that task's own --
never in the caller's array, the segment, or another task's view of it. Each
unpickling makes a fresh mapping, so two tasks of one segment never see each
other's writes (objects that appear twice inside one chunk are one object
there, as pickle's memo makes them).

*An array changed between two tasks is seen changed.* A segment is reused
for the same array object (same shape and dtype) only when that is proven
safe, by one of two rules:

1. It is read-only: the array and every array it is a view of had
   ``flags.writeable`` False both when the segment was made and now, and the
   memory belongs to one of those arrays (or to a ``bytes`` object) -- not to
   a buffer numpy does not control (an ``mmap``, a ``bytearray``: those can
   change under a read-only array). Free. The one change it cannot see is a
   deliberate ``flags.writeable = True``, write, ``flags.writeable = False``
   between two sends: making an array read-only is a promise not to do that.
2. Otherwise (a writable array) every byte is compared with the segment
   (``preadv`` into a small buffer, numpy compare): O(n), about half the
   time of a new copy and no second copy in /dev/shm while both tasks are
   queued. Measured on 2 busy cores, medians: 200 MiB compared in 47-58 ms
   against 88-98 ms for a new segment (a first, cold one: up to 750 ms);
   2 MiB in 0.2-0.3 ms against 0.5-0.6 ms. Reading the segment is most of it
   (``preadv`` alone: 39 ms of the 47); a mapping kept open would be faster
   but would count the segment in the parent's RSS, and a fresh mapping pays
   a page fault per page. Nothing cheaper is correct: a sampled hash misses a
   change between samples. Non-contiguous writable arrays are never reused
   (they would need a copy to compare). End to end (``benchmarks/bench_shm.py``,
   one 200 MB array sent to 8 tasks: 7 comparisons) a writable array took
   0.77-0.80 s where a read-only or ``share``d one took 0.33-0.38 s and
   ``ProcessPoolExecutor`` 7.6-8.0 s: make big inputs read-only, or share them.

``gilfree.share`` arrays need neither: their segment *is* the array (below).

*Lifetime bounded by use.* ``Arena.dumps`` returns the pickled bytes and a
``Lease`` on the segments they name; a segment counts the leases that hold
it and is unlinked when the last is released -- the pool releases a chunk's
lease once no queued or running task of it needs it. ``Arena.close`` (the
pool closing: success, exception, Ctrl-C alike) unlinks whatever is left.

``gilfree.share(array)``: copies the array once into a segment
(``gilfree-<pid>-s<n>``) and returns a ``SharedArray``, an ``ndarray``
subclass backed by that segment: use it as the array, in the parent and on
every backend. A process worker receives a plain ``ndarray`` over a *shared*
mapping of the same memory -- no copy, and, unlike automatic arguments, true
shared memory: a worker's writes are seen by the parent and by every other
task at once (a shared output buffer; tasks writing the same elements race,
gilfree adds no locking). Make the handle read-only
(``handle.flags.writeable = False``) and workers get a read-only mapping.
Slices of a handle travel the same way (offset and strides into the segment).
Later writes to the array ``share`` was given are not seen: the handle is a
copy of it. The segment's name is unlinked by ``release()``, or when the
handle and every view of it are garbage collected, or when the creating
process exits; the memory itself goes once no process maps it.

Results: an array of the threshold or more returned by a task is written by
the worker into a segment of its own (``gilfree-<parent pid>-r<worker pid>-<n>``);
the parent maps it, unlinks the name at once and hands the caller an ordinary,
writable array backed by that memory. That is one copy in the worker, instead
of pickling, two pipe copies and unpickling. A dead worker's unclaimed result
segments are swept by name when its death is handled. A parent killed with
SIGKILL cannot clean up: the next gilfree pool on the machine sweeps segments
whose creating process no longer exists (``sweep_orphans``).

The hook is a per-pickler ``dispatch_table`` entry for ``ndarray``: the C
pickler looks it up per object without calling Python for anything else, so
plain data pays nothing for it (a ``reducer_override`` would run for every
object).
"""

from __future__ import annotations

from typing import Any

from ._arena import NO_LEASE, Arena, Lease
from ._picklers import DEFAULT_THRESHOLD, ResultPickler, dumps, numpy_loaded
from ._segments import SHM_DIR, sweep, sweep_orphans, unlink
from ._share import _shared_array_class, share

__all__ = [
    "DEFAULT_THRESHOLD",
    "NO_LEASE",
    "SHM_DIR",
    "Arena",
    "Lease",
    "ResultPickler",
    "SharedArray",
    "dumps",
    "numpy_loaded",
    "share",
    "sweep",
    "sweep_orphans",
    "unlink",
]


def __getattr__(name: str) -> Any:
    if name == "SharedArray":  # built on first use: importing gilfree must not import numpy
        return _shared_array_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

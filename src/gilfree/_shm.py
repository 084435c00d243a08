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

import copyreg
import glob
import io
import itertools
import mmap
import os
import pickle
import sys
import threading
import weakref
from collections import ChainMap
from collections.abc import Iterable
from typing import Any

from . import _serialize

SHM_DIR = "/dev/shm"
DEFAULT_THRESHOLD = 1 << 20
#: Bytes of a segment read per step while comparing it with an array: the
#: buffer stays in cache; 1 and 4 MiB measured alike (200 MiB in 47-80 ms on
#: 2 busy cores).
_COMPARE_STEP = 1 << 20

_counter = itertools.count()


def _segment_name(kind: str) -> str:
    return f"gilfree-{os.getpid()}-{kind}{next(_counter)}"


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def _bytes_of(array: Any) -> Any:
    """The array's memory as flat uint8, C order (a copy only if not contiguous).

    Not ``memoryview(array)``: the buffer protocol refuses some dtypes
    (datetime64, timedelta64).
    """
    import numpy as np

    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _create(name: str, data: Any) -> None:
    """A new segment holding ``data`` (flat uint8)."""
    fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(1, data.nbytes))
        # write(), not a mapping: the copy then never counts twice in our RSS
        # (200 MB array + 200 MB mapped segment would peak at 2x).
        view, pos = memoryview(data), 0
        while pos < len(view):
            pos += os.pwrite(fd, view[pos : pos + (64 << 20)], pos)
    except BaseException:  # Ctrl-C mid-copy included: no half-made segment stays
        unlink(name)
        raise
    finally:
        os.close(fd)


def _map(name: str, access: int) -> mmap.mmap:
    """Map a whole segment; a missing one is an error that says what it was."""
    try:
        fd = os.open(_path(name), os.O_RDWR if access == mmap.ACCESS_WRITE else os.O_RDONLY)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shared-memory segment {name} is gone: the array it held was released "
            "(gilfree.share handle released, or the task's map/Executor ended), "
            "or this worker runs on another machine"
        ) from None
    try:
        return mmap.mmap(fd, 0, access=access)
    finally:
        os.close(fd)


def _same_bytes(name: str, data: Any) -> bool:
    """Does segment ``name`` hold exactly ``data`` (flat uint8)?

    Read with ``preadv`` into one small reused buffer, not through a mapping:
    no page faults, and the parent's RSS never holds the segment.
    """
    import numpy as np

    try:
        fd = os.open(_path(name), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        n = data.nbytes
        if os.fstat(fd).st_size != max(1, n):
            return False
        buf = np.empty(min(n, _COMPARE_STEP), np.uint8)
        view = memoryview(buf)
        # Compared as uint64 where both line up: 8x fewer elements for numpy.
        wide = n % 8 == 0 and data.ctypes.data % 8 == 0
        for start in range(0, n, len(buf)):
            got = os.preadv(fd, [view], start)
            mine, seg = data[start : start + got], buf[:got]
            if wide:
                mine, seg = mine.view(np.uint64), seg.view(np.uint64)
            if got == 0 or not np.array_equal(mine, seg):
                return False
        return True
    finally:
        os.close(fd)


def _frozen(arr: Any) -> bool:
    """Read-only all the way down to memory that a read-only array or ``bytes`` owns."""
    import numpy as np

    x = arr
    while True:
        if x.flags.writeable:
            return False
        base = x.base
        if base is None:
            return True
        if not isinstance(base, np.ndarray):
            return type(base) is bytes
        x = base


def unlink(name: str) -> None:
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        pass


def sweep(prefix: str) -> None:
    """Unlink every segment whose name starts with ``prefix``."""
    for path in glob.glob(os.path.join(SHM_DIR, glob.escape(prefix) + "*")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


_orphans_swept = False


def sweep_orphans() -> None:
    """Unlink segments left by gilfree processes that no longer exist.

    A parent killed with SIGKILL cannot unlink its argument segments; the next
    gilfree process to make a pool on this machine does (once per process).
    """
    global _orphans_swept
    if _orphans_swept:
        return
    _orphans_swept = True
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "gilfree" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            unlink(name)
        except (PermissionError, OverflowError, ValueError):
            pass  # alive under another user, or not a pid at all


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- the receiving side --------------------------------------------------------------
def _private(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """An argument array in the worker: a private copy-on-write mapping of its segment.

    A fresh mapping per unpickling: a cached one would carry one task's writes
    into the next.
    """
    import numpy as np

    m = _map(name, mmap.ACCESS_COPY)
    return np.frombuffer(m, dtype=dtype, count=_count(shape)).reshape(shape)


def _shared(
    name: str,
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: Any,
    writable: bool,
) -> Any:
    """A ``gilfree.share`` array in the worker: a plain ndarray over a shared mapping."""
    import numpy as np

    m = _map(name, mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    return np.ndarray(shape, dtype=dtype, buffer=m, offset=offset, strides=strides)


def _adopt(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """A result segment becomes an ordinary writable array of the parent's."""
    import numpy as np

    m = _map(name, mmap.ACCESS_WRITE)
    unlink(name)  # the mapping keeps the memory; the name is no longer needed
    return np.frombuffer(m, dtype=dtype, count=_count(shape)).reshape(shape)


# -- gilfree.share ------------------------------------------------------------------------
class _Segment:
    """A ``share`` segment in the process that made it; every view of it holds this."""

    __slots__ = ("__weakref__", "addr", "finalizer", "name", "size")

    def __init__(self, name: str, addr: int, size: int) -> None:
        self.name, self.addr, self.size = name, addr, size
        # Runs on release(), when the last array holding us goes, or at exit.
        self.finalizer = weakref.finalize(self, _unlink_if_mine, name, os.getpid())


def _unlink_if_mine(name: str, pid: int) -> None:
    if os.getpid() == pid:  # a forked child exiting must not free its parent's segment
        unlink(name)


def _byte_bounds(arr: Any) -> tuple[int, int]:
    ptr = arr.__array_interface__["data"][0]
    lo = hi = ptr
    for n, step in zip(arr.shape, arr.strides, strict=True):
        if n == 0:
            return ptr, ptr
        if step < 0:
            lo += (n - 1) * step
        else:
            hi += (n - 1) * step
    return lo, hi + arr.itemsize


_SharedArray: Any = None
_class_lock = threading.Lock()


def _shared_array_class() -> Any:
    """``SharedArray``, built once on first use: importing gilfree must not import numpy."""
    if _SharedArray is not None:
        return _SharedArray
    with _class_lock:
        return _SharedArray if _SharedArray is not None else _build_shared_array_class()


def _build_shared_array_class() -> Any:
    global _SharedArray
    import numpy as np

    class SharedArray(np.ndarray):  # type: ignore[type-arg]
        """A NumPy array whose memory is a shared-memory segment (made by ``gilfree.share``).

        Use it as the array. Sent to a process worker it arrives as a plain
        ``ndarray`` over the same memory, writable there unless the handle is
        read-only (see the module docstring). ``release()`` frees the segment's
        name; later sends raise ``ValueError``.
        """

        _gilfree_segment: _Segment | None = None

        def __array_finalize__(self, obj: Any) -> None:
            seg = getattr(obj, "_gilfree_segment", None)
            if seg is not None:
                lo, hi = _byte_bounds(self)
                if not (seg.addr <= lo and hi <= seg.addr + seg.size):
                    seg = None  # a copy: new memory, not the segment's
            self._gilfree_segment = seg

        def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
            # Results of arithmetic live in new memory: hand them back as plain arrays.
            if isinstance(arr, SharedArray):
                return arr  # an out= argument: written in place, still in the segment
            return arr[()] if return_scalar else arr

        def __reduce_ex__(self, protocol: Any) -> Any:
            seg = self._gilfree_segment
            if seg is None:  # a SharedArray-typed copy: send it as the plain array it is
                return (np.asarray, (self.view(np.ndarray),))
            if not seg.finalizer.alive:
                raise ValueError(f"shared array {seg.name} was released; it cannot be sent")
            ptr = self.__array_interface__["data"][0]
            return (
                _shared,
                (
                    seg.name,
                    ptr - seg.addr,
                    self.shape,
                    self.strides,
                    self.dtype,
                    bool(self.flags.writeable),
                ),
            )

        @property
        def name(self) -> str | None:
            """The segment's name in /dev/shm (None for a copy in ordinary memory)."""
            seg = self._gilfree_segment
            return None if seg is None else seg.name

        @property
        def array(self) -> Any:
            """The same memory as a plain ndarray."""
            return self.view(np.ndarray)

        def release(self) -> None:
            """Unlink the segment's name now; the memory goes once nothing maps it."""
            seg = self._gilfree_segment
            if seg is not None:
                seg.finalizer()

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.release()

    SharedArray.__module__ = __name__  # found by this module's __getattr__
    SharedArray.__qualname__ = "SharedArray"
    _SharedArray = SharedArray
    return SharedArray


def __getattr__(name: str) -> Any:
    if name == "SharedArray":
        return _shared_array_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def share(array: Any) -> Any:
    """Copy ``array`` once into shared memory; returns a ``SharedArray`` to use as the array.

    Pass it to any number of tasks and maps: process workers get the same
    memory without a copy, and see each other's and the parent's writes.
    """
    import numpy as np

    cls = _shared_array_class()
    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise TypeError("gilfree.share needs an array of plain values, not dtype=object")
    data = _bytes_of(arr)
    name = _segment_name("s")
    _create(name, data)
    try:
        m = _map(name, mmap.ACCESS_WRITE)
    except BaseException:
        unlink(name)
        raise
    plain = np.ndarray(arr.shape, dtype=arr.dtype, buffer=m)
    seg = _Segment(name, plain.__array_interface__["data"][0], data.nbytes)
    out = plain.view(cls)
    out._gilfree_segment = seg
    return out


# -- sending side: picklers ----------------------------------------------------------------
class _ArgSegment:
    """An argument segment of an Arena, with the number of leases that hold it."""

    __slots__ = ("dtype", "frozen", "key", "name", "refs", "shape", "source")

    def __init__(self, name: str, arr: Any, frozen: bool) -> None:
        self.name = name
        self.frozen = frozen  # read-only when copied (rule 1 of the module docstring)
        self.refs = 1
        self.key = id(arr)
        self.source = weakref.ref(arr)  # the id is only a hint: is it still this array?
        self.shape = arr.shape
        self.dtype = arr.dtype


class Lease:
    """The segments one pickled chunk needs; ``release()`` says it needs them no more.

    Idempotent and thread-safe; after the arena closed it does nothing.
    """

    __slots__ = ("_arena", "_segments")

    def __init__(self, arena: Arena | None, segments: list[_ArgSegment]) -> None:
        self._arena = arena
        self._segments = segments

    def release(self) -> None:
        if self._arena is not None:
            self._arena._release_lease(self)

    @property
    def names(self) -> list[str]:
        """The segments this lease holds (empty once released)."""
        return [s.name for s in self._segments]


NO_LEASE = Lease(None, [])


class Arena:
    """Argument segments of one pool, reference-counted by the leases of ``dumps``."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        sweep_orphans()
        self.threshold = threshold
        self._lock = threading.Lock()
        self._live: dict[str, _ArgSegment] = {}  # every segment not yet unlinked
        self._by_id: dict[int, _ArgSegment] = {}  # id(array) -> its latest segment
        self._closed = False
        self.reused = 0  # segments handed out again after a comparison (for tests/benchmarks)

    def dumps(self, items: Any, *, by_value: bool = False) -> tuple[bytes, Lease]:
        """Pickle task items, large arrays through this arena's segments.

        Returns the bytes and a lease on the segments they reference: the pool
        holds it while any task of those bytes is queued or running and calls
        ``release()`` once (idempotent) when none is.
        """
        if not numpy_loaded():
            return _serialize.dumps_data(items, by_value=by_value), NO_LEASE
        used: dict[str, _ArgSegment] = {}

        def reduce(arr: Any) -> Any:
            if arr.nbytes < self.threshold or arr.dtype.hasobject:
                return arr.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
            seg = self._segment_for(arr, used)
            return (_private, (seg.name, arr.shape, arr.dtype))

        try:
            blob = dumps(items, reduce, by_value=by_value)
        except BaseException:
            self._release(list(used.values()))
            raise
        return blob, (Lease(self, list(used.values())) if used else NO_LEASE)

    def _segment_for(self, arr: Any, used: dict[str, _ArgSegment]) -> _ArgSegment:
        """A segment holding ``arr``'s bytes, counted once in ``used`` (this pickling's)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool's shared memory is closed")
            seg = self._by_id.get(id(arr))
            if seg is not None and (
                seg.source() is not arr or seg.shape != arr.shape or seg.dtype != arr.dtype
            ):
                seg = None
            if seg is not None:
                if seg.name in used:  # a second pickling attempt of the same items
                    return seg
                seg.refs += 1  # pinned while we compare, outside the lock
        frozen = _frozen(arr)
        if seg is not None:
            if (seg.frozen and frozen) or (
                arr.flags.c_contiguous and _same_bytes(seg.name, _bytes_of(arr))
            ):
                used[seg.name] = seg
                with self._lock:
                    self.reused += 1
                return seg
            self._release([seg])  # changed since it was copied: a new segment
        name = _segment_name("a")
        _create(name, _bytes_of(arr))
        seg = _ArgSegment(name, arr, frozen)
        with self._lock:
            if self._closed:
                unlink(name)
                raise RuntimeError("the pool's shared memory is closed")
            self._live[name] = seg
            self._by_id[seg.key] = seg
        used[name] = seg
        return seg

    def _release_lease(self, lease: Lease) -> None:
        with self._lock:
            segments, lease._segments = lease._segments, []
        self._release(segments)

    def _release(self, segments: Iterable[_ArgSegment]) -> None:
        gone = []
        with self._lock:
            for seg in segments:
                if self._live.get(seg.name) is not seg:
                    continue  # unlinked by close()
                seg.refs -= 1
                if seg.refs == 0:
                    del self._live[seg.name]
                    if self._by_id.get(seg.key) is seg:
                        del self._by_id[seg.key]
                    gone.append(seg.name)
        for name in gone:
            unlink(name)

    @property
    def segments(self) -> int:
        """How many argument segments are alive now."""
        return len(self._live)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            names = list(self._live)
            self._live.clear()
            self._by_id.clear()
        for name in names:
            unlink(name)


def _result_reduce(threshold: int, parent: int) -> Any:
    counter = itertools.count()

    def reduce(arr: Any) -> Any:
        if arr.nbytes < threshold or arr.dtype.hasobject:
            return arr.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        name = f"gilfree-{parent}-r{os.getpid()}-{next(counter)}"
        _create(name, _bytes_of(arr))
        return (_adopt, (name, arr.shape, arr.dtype))

    return reduce


def dumps(obj: Any, reduce_array: Any, *, by_value: bool = False) -> bytes:
    """Pickle with ndarray routed through ``reduce_array``; cloudpickle if asked or needed."""
    import numpy as np

    buf = io.BytesIO()
    if not by_value:
        p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
        p.dispatch_table = ChainMap({np.ndarray: reduce_array}, copyreg.dispatch_table)
        try:
            p.dump(obj)
            return buf.getvalue()
        except Exception:
            buf = io.BytesIO()
    import cloudpickle

    cp = cloudpickle.CloudPickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    # Through the C Pickler's own descriptor: CloudPickler has a class attribute
    # ``dispatch_table`` that shadows it, so ``cp.dispatch_table = ...`` would only
    # set an instance attribute the C code never reads (arrays went inline).
    pickle.Pickler.dispatch_table.__set__(  # type: ignore[attr-defined]
        cp, ChainMap({np.ndarray: reduce_array}, cloudpickle.CloudPickler.dispatch_table)
    )
    cp.dump(obj)
    return buf.getvalue()


def numpy_loaded() -> bool:
    return "numpy" in sys.modules


class ResultPickler:
    """What a worker uses for its results: large arrays go home through shared memory."""

    def __init__(self, threshold: int, parent: int) -> None:
        self._reduce = _result_reduce(threshold, parent)

    def dumps(self, obj: Any) -> bytes:
        return dumps(obj, self._reduce)

"""Shared-memory transport for NumPy arrays, both ways, with nothing left in /dev/shm.

Arguments: a NumPy array of ``share_threshold`` bytes (1 MiB) or more, found
anywhere in a task's arguments, is copied once per map or Executor into a
POSIX shared-memory segment (``/dev/shm/gilfree-<parent pid>-a<n>``); what
travels through the pipe is its name, shape and dtype, and the worker maps the
segment and gets a read-only view of the same memory -- no pickling of the
data, no copy per task. Every task that receives the same array object shares
the one segment. ``gilfree.share(array)`` does the same by hand and returns a
handle that can be passed to any number of maps.

Results: an array of the threshold or more returned by a task is written by
the worker into a segment of its own (``gilfree-<parent pid>-r<worker pid>-<n>``);
the parent maps it, unlinks the name at once and hands the caller an ordinary,
writable array backed by that memory. That is one copy in the worker, instead
of pickling, two pipe copies and unpickling.

No segment outlives its map or Executor: argument segments are unlinked when
the pool closes (success, exception, Ctrl-C alike); result segments are
unlinked as soon as the parent maps them, and a dead worker's unclaimed ones
are swept by name when its death is handled. A parent killed with SIGKILL
cannot clean up: the next gilfree pool on the machine sweeps segments whose
creating process no longer exists (``sweep_orphans``).

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
from collections import ChainMap, OrderedDict
from typing import Any

SHM_DIR = "/dev/shm"
DEFAULT_THRESHOLD = 1 << 20

_counter = itertools.count()


def _segment_name(kind: str) -> str:
    return f"gilfree-{os.getpid()}-{kind}{next(_counter)}"


def _create(name: str, data: memoryview) -> None:
    fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(1, data.nbytes))
        # write(), not a mapping: the copy then never counts twice in our RSS
        # (200 MB array + 200 MB mapped segment would peak at 2x).
        view, pos = data.cast("B"), 0
        while pos < len(view):
            pos += os.pwrite(fd, view[pos : pos + (64 << 20)], pos)
    except BaseException:  # Ctrl-C mid-copy included: no half-made segment stays
        unlink(name)
        raise
    finally:
        os.close(fd)


def _map(name: str, writable: bool) -> mmap.mmap:
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR if writable else os.O_RDONLY)
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    finally:
        os.close(fd)


def unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
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


def _contiguous(array: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(array)


# -- the receiving side --------------------------------------------------------------
#: Segments a worker keeps mapped (argument arrays reused across tasks).
_MAPPED_MAX = 64
_mapped: OrderedDict[str, mmap.mmap] = OrderedDict()
_mapped_lock = threading.Lock()


def _attach(name: str) -> mmap.mmap:
    with _mapped_lock:
        m = _mapped.get(name)
        if m is None:
            m = _mapped[name] = _map(name, writable=False)
            if len(_mapped) > _MAPPED_MAX:
                _mapped.popitem(last=False)  # its arrays keep the mapping alive
        else:
            _mapped.move_to_end(name)
        return m


def _view(name: str, shape: tuple[int, ...], dtype: str) -> Any:
    """A read-only array over an argument segment (rebuilt in the worker)."""
    import numpy as np

    arr = np.frombuffer(_attach(name), dtype=np.dtype(dtype), count=_count(shape)).reshape(shape)
    arr.flags.writeable = False
    return arr


def _adopt(name: str, shape: tuple[int, ...], dtype: str) -> Any:
    """A result segment becomes an ordinary writable array of the parent's."""
    import numpy as np

    m = _map(name, writable=True)
    unlink(name)  # the mapping keeps the memory; the name is no longer needed
    return np.frombuffer(m, dtype=np.dtype(dtype), count=_count(shape)).reshape(shape)


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- gilfree.share ------------------------------------------------------------------------
class SharedArray:
    """A NumPy array in shared memory, passed to process workers without copying.

    ``numpy.asarray(handle)`` gives the data (read-only in workers). The
    segment is freed by ``release()``, when the handle is garbage collected,
    or when the creating process exits.
    """

    def __init__(self, array: Any) -> None:
        import numpy as np

        arr = _contiguous(np.asarray(array))
        if arr.dtype.hasobject:
            raise TypeError("gilfree.share needs an array of plain values, not dtype=object")
        self.name = _segment_name("s")
        self.shape = tuple(arr.shape)
        self.dtype = arr.dtype.str
        _create(self.name, memoryview(arr).cast("B") if arr.nbytes else memoryview(b"\0"))
        self._finalizer = weakref.finalize(self, unlink, self.name)
        self._array: Any = None

    @classmethod
    def _attached(cls, name: str, shape: tuple[int, ...], dtype: str) -> SharedArray:
        self = cls.__new__(cls)
        self.name, self.shape, self.dtype = name, shape, dtype
        self._finalizer = None  # not ours to free
        self._array = None
        return self

    @property
    def array(self) -> Any:
        if self._array is None:
            if self._finalizer is not None and not self._finalizer.alive:
                raise ValueError(f"shared array {self.name} was released")
            self._array = _view(self.name, self.shape, self.dtype)
        return self._array

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        arr = self.array
        return arr if dtype is None else arr.astype(dtype)

    @property
    def nbytes(self) -> int:
        import numpy as np

        return _count(self.shape) * np.dtype(self.dtype).itemsize

    def release(self) -> None:
        self._array = None
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __reduce__(self) -> Any:
        return (SharedArray._attached, (self.name, self.shape, self.dtype))

    def __repr__(self) -> str:
        return f"<gilfree.SharedArray {self.name} shape={self.shape} dtype={self.dtype}>"


def share(array: Any) -> SharedArray:
    """Put ``array`` in shared memory once; pass the handle to any number of tasks."""
    return SharedArray(array)


# -- sending side: picklers ----------------------------------------------------------------
class Lease:
    """The segments one pickled chunk needs; ``release()`` says it needs them no more."""

    __slots__ = ()

    def release(self) -> None:
        pass


NO_LEASE = Lease()


class Arena:
    """Argument segments of one pool: one per array object, unlinked at close."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        sweep_orphans()
        self.threshold = threshold
        self._lock = threading.Lock()
        # id(array) -> (array, name): the reference keeps the id from being reused.
        self._by_id: dict[int, tuple[Any, str]] = {}
        self._closed = False

    def reduce(self, arr: Any) -> Any:
        if arr.nbytes < self.threshold or arr.dtype.hasobject:
            return arr.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool's shared memory is closed")
            known = self._by_id.get(id(arr))
            if known is None:
                name = _segment_name("a")
                _create(name, memoryview(_contiguous(arr)).cast("B"))
                known = self._by_id[id(arr)] = (arr, name)
        return (_view, (known[1], tuple(arr.shape), arr.dtype.str))

    def dumps(self, items: Any, *, by_value: bool = False) -> tuple[bytes, Lease]:
        """Pickle task items, large arrays through this arena's segments.

        Returns the bytes and a lease on the segments they reference: the pool
        holds it while any task of those bytes is queued or running and calls
        ``release()`` once (idempotent) when none is. (Contract for the pool;
        today segments still live until ``close``.)
        """
        if numpy_loaded():
            return dumps(items, self.reduce, by_value=by_value), NO_LEASE
        from . import _serialize

        return _serialize.dumps_data(items, by_value=by_value), NO_LEASE

    @property
    def segments(self) -> int:
        return len(self._by_id)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _arr, name in self._by_id.values():
                unlink(name)
            self._by_id.clear()


def _result_reduce(threshold: int, parent: int) -> Any:
    counter = itertools.count()

    def reduce(arr: Any) -> Any:
        if arr.nbytes < threshold or arr.dtype.hasobject:
            return arr.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        name = f"gilfree-{parent}-r{os.getpid()}-{next(counter)}"
        _create(name, memoryview(_contiguous(arr)).cast("B"))
        return (_adopt, (name, tuple(arr.shape), arr.dtype.str))

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
    cp.dispatch_table = ChainMap(
        {np.ndarray: reduce_array}, cloudpickle.CloudPickler.dispatch_table
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

"""``gilfree.share``: an ndarray whose memory is a shared-memory segment.

See ``gilfree._shm`` for what a process worker receives and when the segment goes.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from typing import Any

from ._segments import _bytes_of, _create, _map, _segment_name, _shared, unlink


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

    class SharedArray(np.ndarray):
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

    SharedArray.__module__ = "gilfree._shm"  # found by that package's __getattr__
    SharedArray.__qualname__ = "SharedArray"
    _SharedArray = SharedArray
    return SharedArray


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

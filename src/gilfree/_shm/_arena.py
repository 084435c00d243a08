"""Argument segments of one pool, reference-counted by the leases of ``Arena.dumps``.

See ``gilfree._shm`` for when a segment is reused and when it is unlinked.
"""

from __future__ import annotations

import pickle
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from .. import _serialize
from ._picklers import DEFAULT_THRESHOLD, dumps, numpy_loaded
from ._segments import (
    _bytes_of,
    _create,
    _frozen,
    _private,
    _same_bytes,
    _segment_name,
    sweep_orphans,
    unlink,
)


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
                seg.shape != arr.shape or seg.dtype != arr.dtype or seg.source() is not arr
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

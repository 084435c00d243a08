"""Shared-memory segments in ``/dev/shm``: made, compared, mapped and unlinked.

The operating-system plumbing under ``gilfree._shm`` (whose docstring says what
travels and why): names, creating a segment with ``write`` (never a mapping of
our own), comparing one with an array, mapping it in a worker (private
copy-on-write for arguments, shared for ``share`` handles), and sweeping what
dead processes left.
"""

from __future__ import annotations

import atexit
import itertools
import mmap
import os
from typing import Any

SHM_DIR = "/dev/shm"
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


_sweep_registered_pid = 0


def _sweep_own_at_exit() -> None:
    """At interpreter exit, unlink what this process made and still holds.

    A pool unlinks its segments when it shuts down; but a second Ctrl-C can
    land inside that shutdown, and the segments would stay until another
    gilfree process swept them (``sweep_orphans``). Workers leave with
    ``os._exit``, so this runs only in the process that made the pool."""
    if _sweep_registered_pid == os.getpid():
        sweep(f"gilfree-{os.getpid()}-")


def _create(name: str, data: Any) -> None:
    """A new segment holding ``data`` (flat uint8)."""
    global _sweep_registered_pid
    if _sweep_registered_pid != os.getpid():
        _sweep_registered_pid = os.getpid()
        atexit.register(_sweep_own_at_exit)
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
        view = buf.data  # a memoryview of buf
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
    try:
        entries = os.scandir(SHM_DIR)
    except OSError:
        return
    with entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                try:
                    os.unlink(entry.path)
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

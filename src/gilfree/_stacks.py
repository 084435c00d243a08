"""Python stacks that faulthandler writes to a pipe: reading one dump, and
keeping the task's frames. Shared by the pool and the forked probe, and light
to import: the probe's parent reads a stack right when a call overran, and an
import of the pool there took seconds on a loaded machine (3.13t)."""

from __future__ import annotations

import os
import select

#: After the first bytes, a dump is over when the pipe stays quiet this long:
#: faulthandler writes one dump in quick bursts, with no end marker.
BURST_GAP_S = 0.05


def read_dump(fd: int, wait_s: float = 0.0) -> str:
    """What faulthandler wrote to ``fd``, waiting up to ``wait_s`` for the first bytes."""
    return _read(fd, wait_s, BURST_GAP_S)[0].decode("utf-8", "replace")


def drain(fd: int) -> tuple[bytes, bool]:
    """What ``fd`` holds now, without waiting, and whether it is at its end."""
    return _read(fd, 0.0, 0.0)


def _read(fd: int, first_s: float, gap_s: float) -> tuple[bytes, bool]:
    """Read ``fd`` while it has data: up to ``first_s`` for the first bytes, then
    until it is quiet for ``gap_s`` (4 MiB at most: a dump is a few KiB). Returns
    the bytes and whether the pipe reached its end (or failed)."""
    chunks: list[bytes] = []
    timeout = first_s
    while len(chunks) < 64 and select.select([fd], [], [], timeout)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
        timeout = gap_s
    return b"".join(chunks), False


def task_frames(stack: str, loop_file: str) -> str:
    """A process's stack with the task's frames only.

    faulthandler prints from the innermost frame out; below the loop that
    called the task come frames inherited from the fork (the caller's ``map``
    and ``<module>`` lines), which would read as if the task had been called
    from there. Everything from the first frame of ``loop_file`` on goes.
    """
    out = []
    for line in stack.splitlines():
        if line.lstrip().startswith("File ") and loop_file in line:
            break
        out.append(line)
    return "\n".join(out).rstrip() + ("\n" if out else "")

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
    chunks: list[bytes] = []
    timeout = wait_s
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            break
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
        timeout = BURST_GAP_S
    return b"".join(chunks).decode("utf-8", "replace")


def drain(fd: int) -> tuple[bytes, bool]:
    """What ``fd`` holds now, without waiting, and whether it is at its end."""
    chunks: list[bytes] = []
    while len(chunks) < 64 and select.select([fd], [], [], 0)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
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

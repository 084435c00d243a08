"""The wire between the pool and its workers: length-prefixed frames on pipes.

Each worker has its own pair of pipes, so the parent always knows which worker
holds which chunk and no lock is shared with a process that may die holding it
(the failure that hangs ``multiprocessing.Pool``). A frame is an 8-byte
little-endian length and a pickled tuple whose first element is its kind.

The worker side blocks (it has nothing else to do); the parent side is
non-blocking, driven by one selector in the manager thread, so a worker that
stops reading can never stall the parent.
"""

from __future__ import annotations

import os
from collections import deque

HEADER = 8

# parent -> worker
FN = 1  # (FN, key, blob): define function `key`
FORGET = 2  # (FORGET, key): drop function `key`
CHUNK = 3  # (CHUNK, seq, key, items_blob, careful)
INIT = 4  # (INIT, blob): run this initializer once, before the first chunk
# worker -> parent
RESULT = 11  # (RESULT, seq, offset, values, failures, elapsed, final)
LOADFAIL = 12  # (LOADFAIL, seq, message): the chunk's items did not unpickle
RETIRE = 13  # (RETIRE, reason): the worker exits after this message
INITFAIL = 14  # (INITFAIL, exc, traceback_text): the initializer raised; the worker exits
INITOK = 15  # (INITOK,): the initializer returned

#: Exit status of a worker that lost its parent (or its end of the alive pipe).
PARENT_GONE = 70

#: Largest read per readiness event, so one chatty worker cannot starve others.
READ_BUDGET = 8 << 20


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER, "little") + payload


# -- worker side (blocking) -------------------------------------------------
def read_exact(fd: int, n: int) -> bytes | None:
    """n bytes from a blocking fd, or None on EOF."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return bytes(buf) if n < 4096 else buf  # type: ignore[return-value]


def recv_frame(fd: int) -> bytes | None:
    head = read_exact(fd, HEADER)
    if head is None:
        return None
    return read_exact(fd, int.from_bytes(head, "little"))


class BlockingFrames:
    """Frames from a blocking fd, read in gulps: one read per small frame, not two.

    The worker's side of its task pipe. Large bodies are read straight into
    their own buffer.
    """

    __slots__ = ("_buf", "_fd")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def recv(self) -> bytes | bytearray | None:
        """The next frame's payload, or None on EOF."""
        buf = self._buf
        while len(buf) < HEADER:
            data = os.read(self._fd, 65536)
            if not data:
                return None
            buf += data
        n = int.from_bytes(buf[:HEADER], "little")
        while len(buf) - HEADER < n and n - (len(buf) - HEADER) < 65536:
            data = os.read(self._fd, 65536)
            if not data:
                return None
            buf += data
        if len(buf) - HEADER >= n:
            body = bytes(buf[HEADER : HEADER + n])
            del buf[: HEADER + n]
            return body
        body_buf = bytearray(n)
        have = len(buf) - HEADER
        body_buf[:have] = buf[HEADER:]
        buf.clear()
        view = memoryview(body_buf)
        while have < n:
            k = os.readv(self._fd, [view[have:]])
            if k == 0:
                return None
            have += k
        return body_buf


def send_frame(fd: int, payload: bytes) -> None:
    data = memoryview(frame(payload)) if len(payload) < 65536 else None
    if data is None:  # avoid copying a large payload just to prepend 8 bytes
        _write_all(fd, memoryview(len(payload).to_bytes(HEADER, "little")))
        _write_all(fd, memoryview(payload))
    else:
        _write_all(fd, data)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


# -- parent side (non-blocking) -----------------------------------------------
class FrameReader:
    """Collects frames from a non-blocking fd; large bodies land in one buffer."""

    __slots__ = ("_body", "_fd", "_got", "_head", "eof")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._head = bytearray()
        self._body: bytearray | None = None
        self._got = 0
        self.eof = False

    def read(self) -> list[bytes | bytearray]:
        """Whatever complete frames are available now (up to READ_BUDGET bytes)."""
        frames: list[bytes | bytearray] = []
        budget = READ_BUDGET
        while budget > 0 and not self.eof:
            if self._body is None:
                try:
                    chunk = os.read(self._fd, max(HEADER - len(self._head), 65536))
                except BlockingIOError:
                    break
                if not chunk:
                    self.eof = True
                    break
                budget -= len(chunk)
                self._head += chunk
                self._split(frames)
                if len(chunk) < 65536 and self._body is None:
                    break  # drained for now: skip the read that would say EAGAIN
            else:
                view = memoryview(self._body)[self._got :]
                try:
                    k = os.readv(self._fd, [view])
                except BlockingIOError:
                    break
                if k == 0:
                    self.eof = True
                    break
                budget -= k
                self._got += k
                if self._got == len(self._body):
                    frames.append(self._body)
                    self._body = None
        return frames

    def _split(self, frames: list[bytes | bytearray]) -> None:
        """Cut complete frames out of the small-read buffer."""
        buf = self._head
        pos = 0
        while len(buf) - pos >= HEADER:
            n = int.from_bytes(buf[pos : pos + HEADER], "little")
            if len(buf) - pos - HEADER >= n:
                frames.append(bytes(buf[pos + HEADER : pos + HEADER + n]))
                pos += HEADER + n
                continue
            if n > 1 << 20:  # big body: read the rest straight into its own buffer
                body = bytearray(n)
                have = buf[pos + HEADER :]
                body[: len(have)] = have
                self._body, self._got = body, len(have)
                pos = len(buf)
            break
        del buf[:pos]


class FrameWriter:
    """Queues frames for a non-blocking fd and writes what the pipe accepts."""

    __slots__ = ("_fd", "_pending")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: deque[memoryview] = deque()

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    def send(self, payload: bytes) -> None:
        if len(payload) < 65536:
            data = frame(payload)
            if not self._pending:  # the common case: straight into the pipe
                try:
                    n = os.write(self._fd, data)
                except BlockingIOError:
                    n = 0
                if n < len(data):
                    self._pending.append(memoryview(data)[n:])
                return
            self._pending.append(memoryview(data))
        else:
            self._pending.append(memoryview(len(payload).to_bytes(HEADER, "little")))
            self._pending.append(memoryview(payload))
        self.flush()

    def flush(self) -> None:
        """Write until the pipe is full. Raises BrokenPipeError if the reader is gone."""
        pending = self._pending
        while pending:
            view = pending[0]
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                return
            if n == len(view):
                pending.popleft()
            else:
                pending[0] = view[n:]
                return

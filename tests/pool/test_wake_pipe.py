"""The manager's wake-up pipe: a submit after a forced wake still wakes it."""

from __future__ import annotations

import os
import select

from gilfree.pool._procs import WakePipe


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_a_submit_after_a_forced_wake_still_writes_a_byte():
    # A forced wake (stop, withdraw_pending) brings no work: it must not leave
    # the flag up, or the next submit's wake writes nothing and the manager
    # sleeps with chunks queued (seen: shutdown(cancel_futures=True) draining a map).
    pipe = WakePipe()
    try:
        pipe.wake(force=True)
        assert _readable(pipe.fd)
        pipe.drain()  # the manager wakes, finds nothing incoming, sleeps again
        assert not _readable(pipe.fd)
        pipe.wake()  # a submit appends a chunk
        assert _readable(pipe.fd)
    finally:
        pipe.close()


def test_one_byte_per_wake_up_until_the_manager_takes_the_work():
    pipe = WakePipe()
    try:
        pipe.wake()
        pipe.wake()
        pipe.wake()
        assert len(os.read(pipe.fd, 100)) == 1
        pipe.clear()  # taken
        pipe.wake()
        assert _readable(pipe.fd)
    finally:
        pipe.close()

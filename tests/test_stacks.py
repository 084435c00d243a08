"""Reading faulthandler's dumps (gilfree._stacks)."""

from __future__ import annotations

import faulthandler
import os
import time

import pytest

from gilfree import _stacks


@pytest.mark.timeout(30)
def test_a_dump_is_read_whole_and_without_waiting_out_the_wait():
    r, w = os.pipe()
    try:
        faulthandler.dump_traceback(file=w, all_threads=False)
        started = time.monotonic()
        text = _stacks.read_dump(r, wait_s=5.0)
        # faulthandler's dump has no end marker: a quiet pipe ends it, not wait_s.
        assert time.monotonic() - started < 2.0
        assert "test_a_dump_is_read_whole_and_without_waiting_out_the_wait" in text
        assert _stacks.read_dump(r) == ""  # nothing left, and no wait
    finally:
        os.close(r)
        os.close(w)


def test_task_frames_drop_the_loop_and_what_the_fork_inherited():
    stack = (
        "Current thread 0x1 (most recent call first):\n"
        '  File "/app/jobs.py", line 3 in work\n'
        '  File "/site/gilfree/_probe_child.py", line 70 in _child\n'
        '  File "/site/gilfree/_probe_fork.py", line 190 in probe\n'
        '  File "/app/main.py", line 9 in <module>\n'
    )
    kept = _stacks.task_frames(stack, loop_file="gilfree/_probe_child.py")
    assert kept == stack.split('  File "/site')[0]
    assert _stacks.task_frames("", loop_file="x.py") == ""

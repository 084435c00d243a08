"""The parent side of the forked probe (gilfree._probe_fork), driven by a stand-in child."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading
import time

import pytest

from gilfree import _probe_fork
from gilfree.errors import TaskTimeout
from gilfree.planner import _probe as probing


@pytest.mark.timeout(60)
def test_a_call_started_while_the_parent_waits_between_calls_gets_its_own_timeout():
    """The parent reads the mark "between calls" (a long limit); a moment later
    the child starts call 0 and hangs. The call's own timeout must stop it, not
    the between-calls limit of ~10 s (on a loaded machine the parent often read
    a batch before the child marked its next call)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    mark = mmap.mmap(-1, 16)
    view = memoryview(mark).cast("q")
    view[1], view[0] = time.monotonic_ns(), -1
    r, w = os.pipe()
    stack_r, stack_w = os.pipe()

    def child() -> None:  # the protocol of _probe_child: the start time, then the index
        time.sleep(0.2)
        view[1] = time.monotonic_ns()
        view[0] = 0

    stand_in = threading.Thread(target=child)
    stand_in.start()
    result = probing.ProbeResult()
    started = time.monotonic()
    try:
        settled, faulted = _probe_fork._collect(
            sleeper.pid, r, stack_r, view, [7, 8], 0.3, 0.0, result
        )
    finally:
        stand_in.join()
        sleeper.kill()
        sleeper.wait()
        for fd in (r, w, stack_r, stack_w):
            os.close(fd)
        view.release()
        mark.close()
    assert time.monotonic() - started < 3  # 0.2 + 0.3 + the stack wait; was ~10 s
    assert (settled, faulted) == (1, True)
    ok, error = result.outcomes[0]
    assert not ok and isinstance(error, TaskTimeout)
    assert _probe_fork.BETWEEN_CALLS_S >= 5  # the limit this test must not wait out

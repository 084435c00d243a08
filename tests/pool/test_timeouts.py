"""``_timeouts.kept``: what a worker whose task overran may still deliver."""

from __future__ import annotations

import pytest

from gilfree.pool._state import Worker, WorkerState
from gilfree.pool._timeouts import kept


@pytest.mark.parametrize(
    "seq, offset, count, expected",
    [
        (7, 0, 3, None),  # tasks 0-2, before the overrun at 4: all kept
        (7, 0, 4, None),
        (7, 0, 5, 4),  # tasks 0-4: the overrun task and after are dropped
        (7, 2, 6, 2),
        (7, 4, 1, 0),  # the overrun task alone
        (7, 5, 3, 0),  # after it
        (8, 4, 3, None),  # another chunk (prefetched): its own results
    ],
)
def test_results_from_the_overrun_task_on_are_dropped(seq, offset, count, expected):
    w = Worker.__new__(Worker)
    w.kill_reason = None
    w.state = WorkerState.RUNNING
    assert kept(w, seq, offset, count) is None
    w.overran(7, 4)
    assert w.state is WorkerState.STOPPING  # no more work for it
    assert kept(w, seq, offset, count) == expected

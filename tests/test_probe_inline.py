"""The probe's serial phase in the caller, for a function that can only compute."""

from __future__ import annotations

import pytest

from gilfree import _probe_inline
from gilfree._probe_child import serial_phase


def half(x):
    return 10 / x


def test_every_sample_is_called_once_and_kept_in_order():
    result = _probe_inline.probe(half, [1, 2, 0, 5], budget=0.5)
    assert (result.serial_calls, result.calls, result.failures) == (4, 4, 1)
    assert [result.outcomes[k][1] for k in (0, 1, 3)] == [10.0, 5.0, 2.0]
    ok, exc = result.outcomes[2]
    assert not ok and isinstance(exc, ZeroDivisionError)
    assert result.task_seconds is not None and result.seconds > 0


def interrupted(x):
    raise KeyboardInterrupt


def test_ctrl_c_stops_it_in_the_caller_and_is_a_failure_in_the_child():
    view = memoryview(bytearray(16)).cast("q")
    with pytest.raises(KeyboardInterrupt):
        serial_phase(interrupted, [1, 2], 2, 0.1, False, view, caller=True)
    # In the forked child (which ignores SIGINT) only the task itself can raise
    # it: that task's failure, as SystemExit is.
    result = serial_phase(interrupted, [1, 2], 2, 0.1, False, view)
    assert [ok for ok, _ in result.outcomes.values()] == [False, False]

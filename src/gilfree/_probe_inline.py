"""The probe of a function that can only compute, in the caller.

``planner._inert`` says when a function's calls on the samples can neither
crash nor hang (arithmetic on small numbers, read from its bytecode). Its
serial phase then runs here, as ``_probe_fork``'s child runs it, without the
fork: for ``x * x`` over 2,000,000 items the fork cost more than the job (the
caller's first pass over its items afterwards took a page fault per page).
Such calls take microseconds, so there is no two-thread phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ._probe_child import serial_phase
from .planner import _probe as probing


def probe(fn: Callable[[Any], Any], samples: Sequence[Any], budget: float) -> probing.ProbeResult:
    """The serial phase's measurements and outcomes, for a prefix of the samples
    (the rest run with the job). No fault can stop it, and no ``timeout``
    applies: an inert call ends within microseconds."""
    started = time.perf_counter()
    view = memoryview(bytearray(16)).cast("q")
    cap = probing.SERIAL_SHARE * budget
    result = serial_phase(fn, samples, len(samples), cap, False, view, caller=True)
    result.failures = sum(1 for ok, _ in result.outcomes.values() if not ok)
    result.seconds = time.perf_counter() - started
    return result

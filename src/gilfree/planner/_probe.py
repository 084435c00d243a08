"""The measured half of the planner: call the function on a few real samples.

Within ``budget`` seconds the probe measures, on the user's own inputs:

1. **Serial calls** in the calling thread, in growing batches (1, 1, 2, 4, ...
   calls timed together, so a 100 ns function is timed over many calls and a
   1 s function over one): wall time per call, and thread CPU time
   (``time.thread_time``) per call -> the CPU fraction. Little CPU means the
   call waits (I/O, sleep); all CPU means it computes.
2. **Two threads at once** on the next samples: how much more throughput two
   threads get than one. Pure Python holds the GIL and gets 1.0x; C code that
   releases the GIL (hashlib, NumPy) and waiting calls get up to 2.0x.
3. **Pickled sizes** of a few arguments and results (cloudpickle, protocol 5;
   NumPy buffers of 1 MiB or more counted apart, since the process backend
   sends those through shared memory).

Other processes on a busy machine make a thread wait for a core, which looks
like I/O to a wall clock. Where Linux reports it (``/proc/thread-self/schedstat``)
that run-queue wait is subtracted, so a CPU-bound call still reads as CPU-bound
and C code that releases the GIL still reads as scaling when the cores are busy.

Every call is a real task: ``outcomes[i]`` is ``(True, result)`` or
``(False, exception)`` for ``samples[i]``, for the samples that were run, each
called exactly once, so the engine can keep those results instead of running
the items again. ``probe`` runs them in the calling thread (a prefix of the
samples); ``gilfree._auto`` runs the same phases in pool workers instead, with
``Timed`` and ``PairProbe`` (``_probe_worker``), so that a call that crashes or
hangs costs the caller nothing.

A function that is not thread-safe may misbehave during step 2, exactly as it
would on the thread backend; that is the price of measuring instead of guessing.

This module is the probe's entry point and re-exports what ``gilfree._auto``
uses; the parts live in ``_probe_result`` (the measurements and what they
mean), ``_probe_phases`` (the two phases and their clocks), ``_probe_sizes``
(pickled sizes) and ``_probe_worker`` (the phases as pool tasks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ._probe_phases import (
    BARRIER_TIMEOUT,
    ONE_CALL_ENOUGH_S,
    PAIR_BATCH_S,
    STABLE_SERIAL_S,
    call_overhead,
    pair_phase,
    runqueue_seconds,
    serial_done,
    serial_phase,
)
from ._probe_result import WARM_UP_OUTLIER, ProbeResult, format_seconds
from ._probe_sizes import SHM_THRESHOLD, SIZE_SAMPLES, measure_sizes
from ._probe_worker import PAIR_MIN_CALL_S, Measured, PairProbe, Timed, add_measured

__all__ = [
    "BARRIER_TIMEOUT",
    "ONE_CALL_ENOUGH_S",
    "PAIR_BATCH_S",
    "PAIR_MIN_CALL_S",
    "PAIR_RESERVE",
    "PAIR_SHARE",
    "SERIAL_SHARE",
    "SHM_THRESHOLD",
    "SIZE_SAMPLES",
    "STABLE_SERIAL_S",
    "WARM_UP_OUTLIER",
    "Measured",
    "PairProbe",
    "ProbeResult",
    "Timed",
    "add_measured",
    "call_overhead",
    "format_seconds",
    "measure_sizes",
    "probe",
    "runqueue_seconds",
    "serial_done",
]

# Share of the budget each phase may use; the rest is slack for pickling.
SERIAL_SHARE = 0.35
PAIR_SHARE = 0.35
# Samples kept back from the serial phase for the two-thread phase (two calls
# per thread) when there are at least PAIR_RESERVE + 2 samples.
PAIR_RESERVE = 4


def probe(fn: Callable[[Any], Any], samples: Sequence[Any], budget: float = 1.0) -> ProbeResult:
    """Measure ``fn`` on a prefix of ``samples`` within about ``budget`` seconds."""
    result = ProbeResult()
    started = time.perf_counter()
    n = len(samples)
    limit = n - PAIR_RESERVE if n >= PAIR_RESERVE + 2 else n
    serial_phase(fn, samples, result, cap=SERIAL_SHARE * budget, limit=limit)
    t = result.task_seconds
    pair_cap = PAIR_SHARE * budget
    if result.calls >= n - 1 or not result.calls:
        result.pair_skipped = "there were no samples left for the two-thread measurement"
    elif t is not None and t < PAIR_MIN_CALL_S:
        result.pair_skipped = (
            f"its calls are shorter than {format_seconds(PAIR_MIN_CALL_S)}, too short for "
            "threads to gain anything on them"
        )
    elif t is not None and 2 * t > pair_cap:
        result.pair_skipped = (
            f"one call takes {format_seconds(t)}, too long to time two threads within the budget"
        )
    else:
        target = min(pair_cap, max(STABLE_SERIAL_S, 1.5 * (t or 0.0)))
        pair_phase(fn, samples, result, target=target)
    measure_sizes(fn, samples, result)
    result.failures = sum(1 for ok, _ in result.outcomes.values() if not ok)
    result.seconds = time.perf_counter() - started
    return result

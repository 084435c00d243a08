"""The probe's phases in a pool worker (``gilfree._auto``).

``Timed`` wraps the function so each serial call, an ordinary pool task,
reports its own cost; ``add_measured`` counts it into a ``ProbeResult``.
``PairProbe`` runs the two-thread phase as one task on its own samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._probe_phases import (
    STABLE_SERIAL_S,
    drop_late,
    noop,
    pair_phase,
    runqueue_seconds,
    serial_phase,
)
from ._probe_result import ProbeResult, format_seconds

# In a worker, calls shorter than this skip the two-thread phase: handing work
# to a thread costs ~30 us (planner._costs.THREAD_CHUNK_S), so their scaling
# cannot change the plan, and the phase would hold the job up for 20 ms.
PAIR_MIN_CALL_S = 20e-6


@dataclass(frozen=True)
class Measured:
    """What ``Timed`` returns for one call: its value and what the call cost."""

    value: Any
    wall: float
    cpu: float  # thread CPU time
    process_cpu: float
    runqueue: float


_timed_overhead: float | None = None


class Timed:
    """``fn`` wrapped to report its own cost, for the serial phase in a worker.

    Each call is an ordinary pool task, so a crash, a hang or an exception is
    that task's alone (``WorkerDied``, ``TaskTimeout``, retries) exactly as on
    ``backend="process"``. The clocks are read around the call alone; the
    ~100 ns they add is measured once per process on a no-op and subtracted.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Measured:
        global _timed_overhead
        if _timed_overhead is None:
            _timed_overhead = min(_time_one(noop, 0)[1] for _ in range(20))
        value, wall, cpu, pcpu, rq = _time_one(self.fn, item)
        own = _timed_overhead
        return Measured(value, max(wall - own, wall * 0.05), max(cpu - own, cpu * 0.05), pcpu, rq)


def _time_one(fn: Callable[[Any], Any], item: Any) -> tuple[Any, float, float, float, float]:
    q0 = runqueue_seconds()
    p0 = time.process_time()
    c0 = time.thread_time()
    w0 = time.perf_counter()
    value = fn(item)
    w1 = time.perf_counter()
    c1 = time.thread_time()
    p1 = time.process_time()
    q1 = runqueue_seconds()
    return value, w1 - w0, c1 - c0, p1 - p0, q1 - q0


def add_measured(result: ProbeResult, index: int, m: Measured) -> None:
    """Count one ``Timed`` call into the serial phase of ``result``."""
    if result.serial_calls == 0:
        result.first_wall = m.wall
    result.outcomes[index] = (True, m.value)
    result.serial_calls += 1
    result.serial_wall += m.wall
    result.serial_cpu += m.cpu
    result.serial_process_cpu += m.process_cpu
    result.serial_runqueue += m.runqueue


class PairProbe:
    """The two-thread phase as one task in a worker, on its own share of samples.

    It times one call alone (to size the threads' batches), then runs
    ``pair_phase`` on the rest for about ``target`` seconds. Its result is a
    ``ProbeResult`` whose outcomes cover a prefix of the items it was given;
    exceptions travel with their traceback (``(False, (exc, traceback text))``).
    Run as one task, a crash or hang in it cannot be pinned on one item: the
    caller then runs its items again, each as a task of its own.

    ``lean``: the items were costly to send (large arguments), so there are
    just two, one per thread, and no call alone first: both threads start at
    once, one call each.

    ``timeout``: the job's ``timeout=``. A call that took longer is not kept
    but left to run again alone (``drop_late``): the task as a whole has a
    longer limit, and its value must not come back as if it had been on time.
    """

    __slots__ = ("cap", "fn", "lean", "timeout")

    def __init__(
        self,
        fn: Callable[[Any], Any],
        cap: float,
        *,
        lean: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.cap = cap
        self.lean = lean
        self.timeout = timeout

    def __call__(self, items: list[Any]) -> ProbeResult:
        from .._serialize import exception_payload

        result = ProbeResult()
        if self.lean:
            if len(items) < 2:
                result.pair_skipped = "there were no samples left for the two-thread measurement"
            else:
                pair_phase(self.fn, items, result, target=self.cap, take=1, timeout=self.timeout)
            return _with_payloads(result, exception_payload)
        serial_phase(self.fn, items, result, cap=self.cap, limit=1)
        t = result.task_seconds or 0.0
        if len(items) < 3:
            result.pair_skipped = "there were no samples left for the two-thread measurement"
        elif t < PAIR_MIN_CALL_S:
            result.pair_skipped = (
                f"its calls are shorter than {format_seconds(PAIR_MIN_CALL_S)}, too short "
                "for threads to gain anything on them"
            )
        elif 2 * t > self.cap:
            result.pair_skipped = (
                f"one call takes {format_seconds(t)}, too long to time two threads "
                "within the budget"
            )
        else:
            target = min(self.cap, max(STABLE_SERIAL_S, 1.5 * t))
            pair_phase(self.fn, items, result, target=target, timeout=self.timeout)
        if self.timeout is not None and result.serial_wall > self.timeout:
            drop_late(result, [0])  # after the pair phase, which starts after the calls kept
        return _with_payloads(result, exception_payload)


def _with_payloads(result: ProbeResult, payload: Callable[[BaseException], Any]) -> ProbeResult:
    """Exceptions as ``(exc, traceback text)``, to travel to the parent."""
    for i, (ok, value) in list(result.outcomes.items()):
        if not ok:
            result.outcomes[i] = (False, payload(value))
    return result

"""The planner's probe with every call on a backend: the process pool the job
will use (or threads, for a function that cannot be pickled).

``run_probe`` runs the serial phase as ordinary tasks through ``Timed`` (one
task per call, in chunks of 1, 1, then enough for the phase) while one
``PairProbe`` task runs the two-thread phase on a second worker at the same
time; see ``gilfree._auto`` for why, and ``planner._probe`` for what is measured.
"""

from __future__ import annotations

import math
import pickle
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _serialize
from ._options import Options
from .backends import Backend, StreamJob
from .errors import SerializationError, WorkerDied
from .planner import _probe as probing

#: Seconds between health checks of the probing backend while waiting for outcomes.
HEALTH_CHECK_S = 1.0
#: The serial phase stops once this many calls failed and no fewer failed than
#: succeeded: each crash costs a worker, and failures say nothing about time.
MAX_PROBE_FAILURES = 2


def run_probe(
    backend: Backend,
    opts: Options,
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    budget: float,
) -> probing.ProbeResult:
    """The planner's probe (see ``planner._probe``) with every call on ``backend``."""
    result = probing.ProbeResult()
    started = time.perf_counter()
    n = len(samples)
    split = n - n // 2 if n >= probing.PAIR_RESERVE + 2 else n
    task_opts = opts.with_(retries=0, chunksize=None, progress=False)
    pair_job = None
    if split < n:
        pair_cap = probing.PAIR_SHARE * budget
        pair_job = StreamJob(
            probing.PairProbe(fn, pair_cap),
            task_opts.with_(timeout=None if opts.timeout is None else opts.timeout + pair_cap),
        )
        backend.submit(pair_job, 0, [list(samples[split:])])
    else:
        result.pair_skipped = "there were no samples left for the two-thread measurement"
    serial_job = StreamJob(_Timed(fn), task_opts)
    try:
        _serial_phase(backend, serial_job, samples, split, result, probing.SERIAL_SHARE * budget)
        if pair_job is not None:
            _merge_pair(result, _wait_for(backend, pair_job, 1), split)
    except BaseException:
        serial_job.cancelled = True
        if pair_job is not None:
            pair_job.cancelled = True
        raise
    probing.measure_sizes(fn, samples, result)
    result.failures = sum(1 for ok, _ in result.outcomes.values() if not ok)
    result.seconds = time.perf_counter() - started
    return result


class _Timed(probing.Timed):
    """``Timed``, whose call fails as the task's own would when its result cannot
    be pickled: the worker would otherwise name the wrapper (``Measured``)."""

    __slots__ = ()

    def __call__(self, item: Any) -> probing.Measured:
        measured = super().__call__(item)
        value = measured.value
        try:
            _pickles(value)
        except Exception as exc:
            raise SerializationError(
                f"result of type {type(value).__name__} ({_serialize.describe(value)}) "
                f"cannot be pickled back to the parent: {type(exc).__name__}: {exc}",
                what="result",
            ) from None
        return measured


def _pickles(value: Any) -> None:
    """Raise what pickling ``value`` for the trip home raises (its large buffers
    are not copied by plain pickle: they travel out of band and cannot fail)."""
    try:
        pickle.dumps(value, 5, buffer_callback=_out_of_band)
    except Exception:
        _serialize.dumps(value)  # what the worker falls back to


def _out_of_band(buffer: pickle.PickleBuffer) -> bool:
    return False


def _serial_phase(
    backend: Backend,
    job: StreamJob,
    samples: Sequence[Any],
    limit: int,
    result: probing.ProbeResult,
    cap: float,
) -> None:
    first, batch, failed = 0, 1, 0
    while first < limit:
        last = min(limit, first + batch)
        backend.submit(job, first, list(samples[first:last]))
        for ok, start, payload in _wait_for(backend, job, last - first):
            if ok:
                for k, measured in enumerate(payload):
                    probing.add_measured(result, start + k, measured)
            else:
                result.outcomes[start] = (False, payload)
                failed += 1
                result.crashes += isinstance(payload, WorkerDied)
        if probing.serial_done(result, cap):
            return
        if failed >= MAX_PROBE_FAILURES and failed >= result.serial_calls:
            return
        if first > 0:
            # 1, 1, then enough for the rest of the phase in one round trip
            # (at least double): the first call alone may be a warm-up, and
            # every round trip here is time the job waits.
            t = result.task_seconds
            batch *= 2
            if t:
                batch = max(batch, math.ceil((probing.STABLE_SERIAL_S - result.serial_wall) / t))
        first = last


def _wait_for(backend: Backend, job: StreamJob, count: int) -> list[tuple[bool, int, Any]]:
    """The next events of ``job`` until ``count`` items have an outcome."""
    events = []
    while count > 0:
        try:
            ev = job.outcomes.get(timeout=HEALTH_CHECK_S)
        except queue.Empty:
            backend.check()
            continue
        events.append(ev)
        count -= len(ev[2]) if ev[0] else 1
    return events


def _merge_pair(
    result: probing.ProbeResult, events: list[tuple[bool, int, Any]], offset: int
) -> None:
    ok, _index, payload = events[0]
    if not ok:
        # Several items ran in that one task: none can be blamed, so all of
        # them run again as ordinary tasks, where a culprit fails alone.
        result.pair_skipped = (
            f"the two-thread measurement stopped ({type(payload).__name__}); its samples "
            "run again as ordinary tasks"
        )
        result.crashes += isinstance(payload, WorkerDied)
        return
    pair: probing.ProbeResult = payload[0]
    for k, (done, value) in pair.outcomes.items():
        if not done:
            exc, tb = value
            value = _serialize.with_remote_traceback(exc, tb)
        result.outcomes[offset + k] = (done, value)
    result.pair_calls = pair.pair_calls
    result.pair_wall = pair.pair_wall
    result.pair_cpu = pair.pair_cpu
    result.pair_windows = pair.pair_windows
    result.overlap = pair.overlap
    result.pair_skipped = pair.pair_skipped

"""The child side of ``_probe_fork``: the probe's calls in the bare forked child.

The child runs the planner's serial phase in batches (1, 1, 2, 4, ... calls),
marking each call's index and start time in a page the parent shares, so that
a call that kills the child or overruns ``timeout=`` is named; each batch's
outcomes and timings go down a pipe. With large arguments it also runs the
two-thread phase under ``PAIR_MARK``, where no single call can be blamed.
It leaves by ``os._exit`` (see ``_probe_fork``). Nothing here runs in the caller
but ``serial_phase``, for a function that can only compute (``_probe_inline``).
"""

from __future__ import annotations

import faulthandler
import functools
import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _serialize
from .errors import SerializationError
from .planner import _probe as probing

#: The mark while the child's two threads run (no one call to blame).
PAIR_MARK = -2
#: With large arguments the first call in the child pays to copy every page of
#: its argument it touches (copy-on-write: ~30 ms where the call alone takes
#: 7 ms on a 200,000-tuple list), so the serial phase runs at least this many
#: calls, enough for the mean per call to leave a warm-up out
#: (``ProbeResult.task_seconds``). Their results are kept, so they cost little.
WARM_UP_CALLS = 3


def _child(  # pragma: no cover - runs in the forked child
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    limit: int,
    cap: float,
    whole: bool,
    pair_cap: float | None,
    view: memoryview,
    w: int,
    stack_w: int,
    timeout: float | None = None,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    faulthandler.enable(file=stack_w, all_threads=False)
    faulthandler.register(signal.SIGUSR1, file=stack_w, all_threads=False)
    result = serial_phase(fn, samples, limit, cap, whole, view, functools.partial(_send_batch, w))
    if pair_cap is not None:
        _pair(fn, samples, result, pair_cap, view, w, timeout)
    _write(w, pickle.dumps(None))


def serial_phase(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    limit: int,
    cap: float,
    whole: bool,
    view: memoryview,
    send: Callable[[int, list[tuple[bool, Any]], tuple[float, ...]], None] | None = None,
    *,
    caller: bool = False,
) -> probing.ProbeResult:
    """The planner's serial phase on ``samples[:limit]``, in batches of 1, 1, 2,
    4, ... calls, each call marked in ``view``; each batch's outcomes and
    timings go to ``send``. In the forked child; in the ``caller`` only for a
    function that can only compute (``planner._inert``), where Ctrl-C stops it."""
    # Copy-on-write: the first write to each page the fork shares (a sample's
    # reference count, the allocator's free lists) costs a page fault of ~1 us,
    # which would read as the function's time. Touch them before timing.
    touched = list(samples[:limit])
    touched.append(fn)
    per_batch, per_call = _loop_overhead(view)
    clock = time.monotonic_ns
    result = probing.ProbeResult()
    first, batch = 0, 1
    later_busy = 0.0  # the calls after the first: CPU time, or wall time not spent waiting
    while first < limit:
        last = min(limit, first + batch)
        outcomes: list[tuple[bool, Any]] = []
        append = outcomes.append
        q0 = probing.runqueue_seconds()
        p0 = time.process_time()
        c0 = time.thread_time()
        w0 = time.perf_counter()
        for i in range(first, last):
            view[1] = clock()
            view[0] = i
            try:
                append((True, fn(samples[i])))
            except KeyboardInterrupt as exc:
                if caller:
                    raise
                append((False, exc))
            except BaseException as exc:  # SystemExit in a task is that task's failure
                append((False, exc))
        w1 = time.perf_counter()
        c1 = time.thread_time()
        p1 = time.process_time()
        q1 = probing.runqueue_seconds()
        view[1] = clock()
        view[0] = -1
        own = per_batch + (last - first) * per_call
        wall = max(w1 - w0 - own, (w1 - w0) * 0.05)
        cpu = max(c1 - c0 - own, (c1 - c0) * 0.05)
        if send is not None:
            send(first, outcomes, (wall, cpu, p1 - p0, q1 - q0))
        if first == 0:
            result.first_wall = wall
        result.outcomes.update(enumerate(outcomes, first))
        result.serial_calls += last - first
        result.serial_wall += wall
        result.serial_cpu += cpu
        result.serial_process_cpu += p1 - p0
        result.serial_runqueue += q1 - q0
        if probing.serial_done(result, cap) and (
            not whole or result.serial_calls >= WARM_UP_CALLS or result.serial_wall >= cap
        ):
            break
        if first > 0:
            later_busy += max(cpu, wall - (q1 - q0))
        # Not tiny after all: the rest is probed on the pool, two threads too. Read
        # over 3 calls at least: one call on a loaded machine can take 20 us of
        # page faults or a preemption (x * x went to the pool so, in 1 make test).
        if not whole and last > 3 and later_busy >= (last - 1) * probing.PAIR_MIN_CALL_S:
            break
        if first > 0:  # 1, 1, 2, 4, ...: the first call alone may be a warm-up
            batch *= 2
        first = last
    return result


def _pair(  # pragma: no cover - in the child
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    result: probing.ProbeResult,
    cap: float,
    view: memoryview,
    w: int,
    timeout: float | None,
) -> None:
    """The two-thread phase on the samples after the serial ones, as the
    pool's ``PairProbe`` runs it, under the pair mark (no one call to blame);
    calls past ``timeout`` go back as suspects, to run again alone."""
    from .planner._probe_phases import pair_phase

    t = result.task_seconds
    if result.calls >= len(samples) - 1 or t is None:
        skipped = "there were no samples left for the two-thread measurement"
    elif t < probing.PAIR_MIN_CALL_S:
        skipped = (
            f"its calls are shorter than {probing.format_seconds(probing.PAIR_MIN_CALL_S)}, "
            "too short for threads to gain anything on them"
        )
    elif 2 * t > cap:
        skipped = (
            f"one call takes {probing.format_seconds(t)}, too long to time two threads "
            "within the budget"
        )
    else:
        view[1] = time.monotonic_ns()
        view[0] = PAIR_MARK
        base = result.calls
        target = min(cap, max(probing.STABLE_SERIAL_S, 1.5 * t))
        pair_phase(fn, samples, result, target=target, timeout=timeout)
        view[1] = time.monotonic_ns()
        view[0] = -1
        out = probing.ProbeResult(
            pair_calls=result.pair_calls,
            pair_wall=result.pair_wall,
            pair_cpu=result.pair_cpu,
            pair_windows=result.pair_windows,
            overlap=result.overlap,
            pair_skipped=result.pair_skipped,
            suspects=result.suspects,
        )
        for k in sorted(k for k in result.outcomes if k >= base):
            ok, value = result.outcomes[k]
            out.outcomes[k] = _sendable(k, ok, value if ok else _serialize.exception_payload(value))
        _write(w, _serialize.dumps_data(("pair", out)))
        return
    _write(w, _serialize.dumps_data(("pair", probing.ProbeResult(pair_skipped=skipped))))


def _loop_overhead(view: memoryview) -> tuple[float, float]:  # pragma: no cover
    """``(per batch, per call)`` seconds the loop above adds around the calls
    (its shape on a no-op, best of several), as ``planner._probe.call_overhead``."""

    def time_batch(k: int) -> float:
        clock = time.monotonic_ns
        outcomes: list[tuple[bool, Any]] = []
        append = outcomes.append
        fn = _noop
        t0 = time.perf_counter()
        for i in range(k):
            view[1] = clock()
            view[0] = -1
            try:
                append((True, fn(i)))
            except BaseException as exc:
                append((False, exc))
        return time.perf_counter() - t0

    one = min(time_batch(1) for _ in range(20))
    many = min(time_batch(256) for _ in range(3))
    per_call = max(0.0, (many - one) / 255)
    return max(0.0, one - per_call), per_call


def _noop(x: Any) -> Any:
    return x


def _send_batch(  # pragma: no cover - in the child
    w: int, first: int, outcomes: list[tuple[bool, Any]], timing: tuple[float, ...]
) -> None:
    """A batch's outcomes down the pipe: exceptions with their traceback; a
    result that cannot be pickled becomes that task's SerializationError."""
    sent = [(ok, v if ok else _serialize.exception_payload(v)) for ok, v in outcomes]
    try:
        data = _serialize.dumps_data((first, sent, *timing))
    except BaseException:  # a result's __reduce__ may even call sys.exit
        sent = [_sendable(first + k, ok, v) for k, (ok, v) in enumerate(sent)]
        data = _serialize.dumps_data((first, sent, *timing))
    _write(w, data)


def _sendable(index: int, ok: bool, value: Any) -> tuple[bool, Any]:  # pragma: no cover
    if not ok:
        return ok, value
    try:
        _serialize.dumps_data(value)
        return ok, value
    except BaseException as exc:
        err = SerializationError(
            f"result of type {type(value).__name__} ({_serialize.describe(value)}) "
            f"cannot be pickled back to the parent: {type(exc).__name__}: {exc}",
            what="result",
            index=index,
        )
        return False, (err, "")


def _write(w: int, data: bytes) -> None:  # pragma: no cover - in the child
    data = len(data).to_bytes(8, "little") + data
    view = memoryview(data)
    while view:
        view = view[os.write(w, view) :]

"""The probe's two phases, run in the calling thread on real samples.

1. ``serial_phase``: calls in growing batches, timed by the wall clock, the
   thread's CPU clock, the process's CPU clock and the run-queue wait.
2. ``pair_phase``: two threads share the next samples; scaling is read over
   the time both were running calls.

``probe`` (``_probe``) runs both in the calling thread; ``_probe_worker`` runs
them in a pool worker.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._probe_result import Overlap, ProbeResult, Window

# The serial phase stops once it has this much wall time over >= 2 calls: enough
# for a mean stable to a few percent at perf_counter's resolution. It also stops
# after a single call this long: the two-thread phase refines the estimate.
STABLE_SERIAL_S = 0.02
ONE_CALL_ENOUGH_S = 0.05
# Each thread of the pair phase takes work in batches at least this long, so
# that taking work (a lock) is not what we measure for tiny functions.
PAIR_BATCH_S = 0.002
# A thread of the pair phase that does not start within this many seconds
# means the process is badly overloaded; we then skip the measurement.
BARRIER_TIMEOUT = 5.0


_overhead: tuple[float, float] | None = None


def call_overhead() -> tuple[float, float]:
    """``(per batch, per call)`` seconds the serial phase's timing loop adds
    around the function, measured once per process on a no-op (best of
    several runs), so a 50 ns function is not reported as taking 500 ns."""
    global _overhead
    if _overhead is None:
        one = min(_time_batch(1) for _ in range(20))
        many = min(_time_batch(256) for _ in range(3))
        per_call = max(0.0, (many - one) / 255)
        _overhead = (max(0.0, one - per_call), per_call)
    return _overhead


def _time_batch(k: int) -> float:
    # The same shape as the loop in serial_phase.
    outcomes: list[tuple[bool, Any]] = []
    items = list(range(k))
    t0 = time.perf_counter()
    for i in range(0, k):
        outcomes.append(_call(noop, items[i]))
    return time.perf_counter() - t0


def noop(x: Any) -> Any:
    return x


def _call(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except Exception as exc:  # a task's failure is a result, not a probe error
        return False, exc


def serial_phase(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    result: ProbeResult,
    cap: float,
    limit: int,
) -> None:
    n = min(limit, len(samples))
    batch = 1
    # Calibrate first: it also runs the timing loop's own code hundreds of
    # times, so its first timed calls are not its cold ones (on 3.14 and 3.15
    # cold calls of _call read ~2 us where warm ones read ~85 ns).
    call_overhead()
    while result.calls < n:
        first = result.calls
        last = min(n, first + batch)
        q0 = runqueue_seconds()
        p0 = time.process_time()
        c0 = time.thread_time()
        w0 = time.perf_counter()
        for i in range(first, last):
            result.outcomes[i] = _call(fn, samples[i])
        w1 = time.perf_counter()
        c1 = time.thread_time()
        p1 = time.process_time()
        q1 = runqueue_seconds()
        result.serial_runqueue += q1 - q0
        result.serial_calls += last - first
        # The timing loop itself is not the function's time.
        per_batch, per_call = call_overhead()
        own = per_batch + (last - first) * per_call
        wall = max(w1 - w0 - own, (w1 - w0) * 0.05)
        if first == 0:
            result.first_wall = wall  # the first batch is one call
        result.serial_wall += wall
        result.serial_cpu += max(c1 - c0 - own, (c1 - c0) * 0.05)
        result.serial_process_cpu += p1 - p0
        if serial_done(result, cap):
            break
        if first > 0:  # 1, 1, 2, 4, ...: the first call alone may be a warm-up
            batch *= 2


def serial_done(result: ProbeResult, cap: float) -> bool:
    """Whether the serial phase has measured enough (or spent its share)."""
    return (
        result.serial_wall >= cap
        or (result.serial_calls >= 2 and result.serial_wall >= STABLE_SERIAL_S)
        or result.serial_wall >= ONE_CALL_ENOUGH_S
    )


def pair_phase(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    result: ProbeResult,
    target: float,
    take: int | None = None,
    timeout: float | None = None,
) -> None:
    """Two threads share the samples after the serial ones until ``target``
    seconds have passed; every sample handed out is run to completion, so the
    outcomes stay a gap-free prefix -- but for calls that took longer than
    ``timeout``, which ``drop_late`` moves to ``result.suspects``.

    Scaling is read only over the *overlap*, from the moment the second thread
    takes its first batch to the moment the first thread runs out of work: the
    thread that crosses each edge (and so holds the GIL) reads both threads'
    CPU clocks, so neither a late start nor an early finish reads as poor
    scaling. ``take`` (calls per batch) defaults to PAIR_BATCH_S of work at
    the serial phase's time per call."""
    n = len(samples)
    base = result.calls
    t = result.task_seconds or 0.0
    if take is None:
        take = max(1, min(64, int(PAIR_BATCH_S / t))) if t > 0 else 64
    slots: list[tuple[bool, Any] | None] = [None] * (n - base)
    lock = threading.Lock()
    barrier = threading.Barrier(2)
    # Set once both threads hold a first batch (or one found none). Each thread
    # waits for it before running its first batch: under the GIL the second
    # thread wakes only at the first's next switch (5 ms), by which time calls
    # shorter than that have used up every sample, which measures nothing.
    both = threading.Event()
    members: list[tuple[int, int]] = []  # (ident, native_id) of each thread
    shared: dict[str, Any] = {
        "next": base,
        "stop": False,
        "t0": 0.0,
        "broken": False,
        "takers": set(),
        "a": None,
        "b": None,
        "ran_out": False,
    }
    windows: list[Window] = []
    late: list[int] = []  # calls past timeout

    def worker() -> None:
        me = threading.get_ident()
        with lock:
            members.append((me, threading.get_native_id()))
        try:
            barrier.wait(BARRIER_TIMEOUT)
        except threading.BrokenBarrierError:
            shared["broken"] = True
            return
        q0 = runqueue_seconds()
        c0 = time.thread_time()
        w0 = time.perf_counter()
        w1 = w0
        calls = 0
        while True:
            with lock:
                if shared["stop"] or shared["next"] >= n:
                    shared["ran_out"] = shared["ran_out"] or not shared["stop"]
                    if shared["b"] is None and shared["a"] is not None:
                        shared["b"] = _snapshot(members)
                    both.set()
                    break
                first = shared["next"]
                last = min(n, first + take)
                if me not in shared["takers"]:
                    shared["takers"].add(me)
                    if len(shared["takers"]) == 2:
                        shared["a"] = _snapshot(members)
                        both.set()
                    else:
                        # The first batch leaves the partner at least half: one
                        # that took every sample would leave nothing to overlap
                        # (seen on 3.14, 10 samples of 0.3 ms with take=16).
                        last = min(last, first + max(1, (n - first) // 2))
                shared["next"] = last
            if not calls:
                both.wait(target)  # bounded: a partner that never comes is no reading
                q0 = runqueue_seconds()
                c0 = time.thread_time()
                w0 = time.perf_counter()
                with lock:
                    if not shared["t0"]:
                        shared["t0"] = w0
            if timeout is None:
                for i in range(first, last):
                    slots[i - base] = _call(fn, samples[i])
            else:
                for i in range(first, last):
                    began = time.perf_counter()
                    slots[i - base] = _call(fn, samples[i])
                    if time.perf_counter() - began > timeout:
                        late.append(i)
            calls += last - first
            w1 = time.perf_counter()
            if w1 - shared["t0"] >= target:
                with lock:
                    shared["stop"] = True
        # Wall, CPU and wait read at one moment (after the last call: ``end``),
        # so the wait is never longer than the wall: read late, on a busy
        # machine, it was (a window of 53 ms waited 62 ms, "100% busy").
        cpu = time.thread_time() - c0
        runqueue = runqueue_seconds() - q0
        wall = time.perf_counter() - w0
        window = Window(calls=calls, wall=wall, cpu=cpu, runqueue=min(runqueue, wall), end=w1)
        with lock:
            windows.append(window)

    threads = [
        threading.Thread(target=worker, name=f"gilfree-probe-{k}", daemon=True) for k in range(2)
    ]
    for th in threads:
        th.start()
    for th in threads:
        # Unbounded on purpose: the threads run the user's calls, and a call
        # that never returns would hang the same call on any backend.
        th.join()
    done = shared["next"] - base
    for k, s in enumerate(slots[:done]):
        if s is not None:
            result.outcomes[base + k] = s
    drop_late(result, late)
    if shared["broken"] or done == 0:
        result.pair_skipped = "the two-thread measurement could not start"
        return
    result.pair_calls = done
    result.pair_windows = [w for w in windows if w.calls]
    result.pair_wall = max(w.end for w in windows) - shared["t0"]
    result.pair_cpu = sum(w.cpu for w in windows)
    a, b = shared["a"], shared["b"]
    if a is not None and b is not None and b.wall > a.wall:
        result.overlap = Overlap(
            wall=b.wall - a.wall,
            cpu=sum(b.cpu) - sum(a.cpu),
            # The smaller of the two: a thread waiting for the GIL also sits
            # on the run queue after each timed wake-up while the other one
            # makes progress, so only time *both* may have lost is subtracted
            # (never more than the smaller), which keeps a GIL-bound function
            # from ever reading above 1.0x.
            runqueue=min(q1 - q0 for q0, q1 in zip(a.runqueue, b.runqueue, strict=True)),
        )
    elif a is None:
        # Only one thread ever took work: it ran the whole measurement (or all
        # of the samples) before the other got a core. That is no reading of
        # scaling at all -- seen on an idle machine with sha256, which lets go
        # of the GIL -- so none is given, and the policy falls back on the
        # bytecode and the serial phase instead of a false "no scaling".
        result.overlap = Overlap(wall=0.0, cpu=0.0, runqueue=0.0, starved=True)
        result.pair_skipped = (
            f"the second of the two threads never got to take a call (the first ran all "
            f"{done} before it started), so the measurement says nothing about scaling"
        )


def drop_late(result: ProbeResult, late: list[int]) -> None:
    """Calls that ran past ``timeout=`` in a probe task are not kept: they are
    ``suspects``, run again each as a task of its own, where the timeout stops
    them on time (a pool task) and they end as ``TaskTimeout``. Two threads
    also slow each other's calls (the GIL), so an overrun here proves nothing
    until it happens alone."""
    for i in sorted(set(late)):
        if result.outcomes.pop(i, None) is not None:
            result.suspects.append(i)


@dataclass(frozen=True)
class _Snapshot:
    wall: float
    cpu: tuple[float, ...]
    runqueue: tuple[float, ...]


def _snapshot(members: list[tuple[int, int]]) -> _Snapshot:
    cpu = []
    rq = []
    for ident, native in members:
        try:
            cpu.append(time.clock_gettime(time.pthread_getcpuclockid(ident)))
        except (AttributeError, OSError):  # not on this platform
            cpu.append(math.nan)
        rq.append(runqueue_seconds(native))
    return _Snapshot(time.perf_counter(), tuple(cpu), tuple(rq))


def runqueue_seconds(native_id: int | None = None) -> float:
    """Seconds a thread (default: this one) has waited for a CPU (Linux); 0.0 elsewhere."""
    global _schedstat_ok
    if not _schedstat_ok:
        return 0.0
    path = (
        "/proc/thread-self/schedstat"
        if native_id is None
        else (f"/proc/self/task/{native_id}/schedstat")
    )
    try:
        with open(path, "rb") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        _schedstat_ok = False
        return 0.0


_schedstat_ok = True

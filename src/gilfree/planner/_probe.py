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
``Timed`` and ``PairProbe`` below, so that a call that crashes or hangs costs
the caller nothing.

A function that is not thread-safe may misbehave during step 2, exactly as it
would on the thread backend; that is the price of measuring instead of guessing.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Share of the budget each phase may use; the rest is slack for pickling.
SERIAL_SHARE = 0.35
PAIR_SHARE = 0.35
# The serial phase stops once it has this much wall time over >= 2 calls: enough
# for a mean stable to a few percent at perf_counter's resolution. It also stops
# after a single call this long: the two-thread phase refines the estimate.
STABLE_SERIAL_S = 0.02
ONE_CALL_ENOUGH_S = 0.05
# Each thread of the pair phase takes work in batches at least this long, so
# that taking work (a lock) is not what we measure for tiny functions.
PAIR_BATCH_S = 0.002
# A first call this many times slower than the next ones is a warm-up (imports,
# cold caches) and is left out of the mean time per call.
WARM_UP_OUTLIER = 3.0
# Samples kept back from the serial phase for the two-thread phase (two calls
# per thread) when there are at least PAIR_RESERVE + 2 samples.
PAIR_RESERVE = 4
# Pickled sizes are measured on this many samples (pickling is not free).
SIZE_SAMPLES = 3
# NumPy buffers of at least this size go to process workers through shared
# memory (SPEC: "NumPy arrays of 1 MiB or more ... without copying").
SHM_THRESHOLD = 1 << 20
# In a worker, calls shorter than this skip the two-thread phase: handing work
# to a thread costs ~30 us (planner._costs.THREAD_CHUNK_S), so their scaling
# cannot change the plan, and the phase would hold the job up for 20 ms.
PAIR_MIN_CALL_S = 20e-6
# A thread of the pair phase that does not start within this many seconds
# means the process is badly overloaded; we then skip the measurement.
BARRIER_TIMEOUT = 5.0


@dataclass
class ProbeResult:
    """Raw measurements from one probe (see the module docstring)."""

    outcomes: dict[int, tuple[bool, Any]] = field(default_factory=dict)  # by sample index
    serial_calls: int = 0
    serial_wall: float = 0.0
    serial_cpu: float = 0.0  # thread CPU time of the serial calls
    serial_process_cpu: float = 0.0  # whole-process CPU time during them
    serial_runqueue: float = 0.0  # time the thread waited for a core (busy machine)
    first_wall: float = 0.0  # wall time of the first serial call alone
    pair_calls: int = 0
    pair_wall: float = 0.0  # elapsed time of the two-thread phase
    pair_cpu: float = 0.0  # thread CPU time summed over both threads
    pair_windows: list[_Window] = field(default_factory=list, repr=False)
    overlap: _Overlap | None = field(default=None, repr=False)
    pair_skipped: str | None = None  # why the two-thread phase did not run
    failures: int = 0
    crashes: int = 0  # calls (or the two-thread task) that killed their worker
    arg_bytes: float | None = None  # mean in-band pickled size of an argument
    shm_bytes: float = 0.0  # mean bytes per argument sent via shared memory
    result_bytes: float | None = None
    fn_bytes: int | None = None
    unpicklable: str | None = None  # what could not be pickled, and why
    seconds: float = 0.0  # the probe's own wall time

    @property
    def calls(self) -> int:
        return len(self.outcomes)

    @property
    def task_seconds(self) -> float | None:
        """Mean wall time of a serial call. The very first call of a function
        often pays for imports and cold caches: with 3 or more calls, it is left
        out when it took more than WARM_UP_OUTLIER times the others' mean."""
        if not self.serial_calls:
            return None
        if self.serial_calls >= 3:
            rest = (self.serial_wall - self.first_wall) / (self.serial_calls - 1)
            if self.first_wall > WARM_UP_OUTLIER * rest:
                return rest
        return self.serial_wall / self.serial_calls

    @property
    def cpu_fraction(self) -> float | None:
        if not self.serial_calls or self.serial_wall <= 0:
            return None
        busy = max(self.serial_cpu, self.serial_wall - self.serial_runqueue)
        return min(1.0, self.serial_cpu / busy) if busy > 0 else 1.0

    @property
    def busy_share(self) -> float:
        """Share of the probe's time its threads waited for a CPU that other
        processes held: high on a busy machine, where two threads cannot show
        how well they would scale."""
        shares = []
        if self.serial_wall > 0:
            shares.append(self.serial_runqueue / self.serial_wall)
        for w in self.pair_windows:
            if w.wall > 0:
                shares.append(w.runqueue / w.wall)
        return min(1.0, max(shares, default=0.0))

    @property
    def internal_parallelism(self) -> float | None:
        """Process CPU over thread CPU in the serial phase: above 1 when the
        function runs threads of its own (BLAS, for one)."""
        if not self.serial_calls or self.serial_cpu <= 1e-4:
            return None
        return max(1.0, self.serial_process_cpu / self.serial_cpu)

    @property
    def pair_speedup(self) -> float | None:
        """Throughput of two threads over one thread (1.0 = no gain)."""
        if not self.pair_windows or not self.serial_calls:
            return None
        f = self.cpu_fraction or 0.0
        ov = self.overlap
        if f >= 0.5 and ov is not None:
            if ov.starved:
                return 1.0
            if math.isfinite(ov.cpu) and ov.cpu > 0:
                # CPU-bound: a call's CPU time barely changes under contention,
                # so CPU time / serial CPU fraction is the serial time of the
                # same work -- robust when items differ in cost. Waiting for a
                # core another process holds is not the GIL's doing.
                return (ov.cpu / f) / max(ov.wall - ov.runqueue, ov.cpu / 2)
        busy = self.serial_wall - self.serial_runqueue
        t = max(busy, self.serial_cpu) / self.serial_calls  # a call's time, given a core
        rate = 0.0
        for w in self.pair_windows:
            # CPU-bound: a call's CPU time barely changes under contention, so
            # CPU time / serial CPU fraction is the serial time of the same
            # calls -- robust when items differ in cost. Waiting calls: count.
            work = w.cpu / f if f >= 0.5 and w.cpu > 0 else w.calls * t
            # Waiting for a core that another process holds is not the GIL's doing.
            active = max(w.wall - w.runqueue, w.cpu, 1e-9)
            rate += work / active
        return rate

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("outcomes")
        d.pop("pair_windows")
        d.pop("overlap")
        d["calls"] = self.calls
        return d


def probe(fn: Callable[[Any], Any], samples: Sequence[Any], budget: float = 1.0) -> ProbeResult:
    """Measure ``fn`` on a prefix of ``samples`` within about ``budget`` seconds."""
    result = ProbeResult()
    started = time.perf_counter()
    n = len(samples)
    limit = n - PAIR_RESERVE if n >= PAIR_RESERVE + 2 else n
    _serial_phase(fn, samples, result, cap=SERIAL_SHARE * budget, limit=limit)
    t = result.task_seconds
    pair_cap = PAIR_SHARE * budget
    if result.calls >= n - 1 or not result.calls:
        result.pair_skipped = "there were no samples left for the two-thread measurement"
    elif t is not None and 2 * t > pair_cap:
        result.pair_skipped = (
            f"one call takes {format_seconds(t)}, too long to time two threads within the budget"
        )
    else:
        target = min(pair_cap, max(STABLE_SERIAL_S, 1.5 * (t or 0.0)))
        _pair_phase(fn, samples, result, target=target)
    measure_sizes(fn, samples, result)
    result.failures = sum(1 for ok, _ in result.outcomes.values() if not ok)
    result.seconds = time.perf_counter() - started
    return result


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
    # The same shape as the loop in _serial_phase.
    outcomes: list[tuple[bool, Any]] = []
    items = list(range(k))
    t0 = time.perf_counter()
    for i in range(0, k):
        outcomes.append(_call(_noop, items[i]))
    return time.perf_counter() - t0


def _noop(x: Any) -> Any:
    return x


def _call(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    try:
        return True, fn(item)
    except Exception as exc:  # a task's failure is a result, not a probe error
        return False, exc


def _serial_phase(
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


def _pair_phase(
    fn: Callable[[Any], Any], samples: Sequence[Any], result: ProbeResult, target: float
) -> None:
    """Two threads share the samples after the serial ones until ``target``
    seconds have passed; every sample handed out is run to completion, so the
    outcomes stay a gap-free prefix.

    Scaling is read only over the *overlap*, from the moment the second thread
    takes its first batch to the moment the first thread runs out of work: the
    thread that crosses each edge (and so holds the GIL) reads both threads'
    CPU clocks, so neither a late start nor an early finish reads as poor
    scaling."""
    n = len(samples)
    base = result.calls
    t = result.task_seconds or 0.0
    take = max(1, min(64, int(PAIR_BATCH_S / t))) if t > 0 else 64
    slots: list[tuple[bool, Any] | None] = [None] * (n - base)
    lock = threading.Lock()
    barrier = threading.Barrier(2)
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
    windows: list[_Window] = []

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
                    break
                if not shared["t0"]:
                    shared["t0"] = w0
                if me not in shared["takers"]:
                    shared["takers"].add(me)
                    if len(shared["takers"]) == 2:
                        shared["a"] = _snapshot(members)
                first = shared["next"]
                last = min(n, first + take)
                shared["next"] = last
            for i in range(first, last):
                slots[i - base] = _call(fn, samples[i])
            calls += last - first
            w1 = time.perf_counter()
            if w1 - shared["t0"] >= target:
                with lock:
                    shared["stop"] = True
        window = _Window(
            calls=calls,
            wall=w1 - w0,
            cpu=time.thread_time() - c0,
            runqueue=runqueue_seconds() - q0,
            end=w1,
        )
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
    if shared["broken"] or done == 0:
        result.pair_skipped = "the two-thread measurement could not start"
        return
    result.pair_calls = done
    result.pair_windows = [w for w in windows if w.calls]
    result.pair_wall = max(w.end for w in windows) - shared["t0"]
    result.pair_cpu = sum(w.cpu for w in windows)
    a, b = shared["a"], shared["b"]
    if a is not None and b is not None and b.wall > a.wall:
        result.overlap = _Overlap(
            wall=b.wall - a.wall,
            cpu=sum(b.cpu) - sum(a.cpu),
            # The smaller of the two: a thread waiting for the GIL also sits
            # on the run queue after each timed wake-up while the other one
            # makes progress, so only time *both* may have lost is subtracted
            # (never more than the smaller), which keeps a GIL-bound function
            # from ever reading above 1.0x.
            runqueue=min(q1 - q0 for q0, q1 in zip(a.runqueue, b.runqueue, strict=True)),
        )
    elif a is None and not shared["ran_out"]:
        # One thread ran for the whole measurement and the other never got to
        # take work: the first held the GIL throughout.
        result.overlap = _Overlap(wall=0.0, cpu=0.0, runqueue=0.0, starved=True)


@dataclass(frozen=True)
class _Window:
    """What one thread of the pair phase did, from its first take to its last finish."""

    calls: int
    wall: float
    cpu: float
    runqueue: float
    end: float


@dataclass(frozen=True)
class _Snapshot:
    wall: float
    cpu: tuple[float, ...]
    runqueue: tuple[float, ...]


@dataclass(frozen=True)
class _Overlap:
    """Both threads' CPU time while both were running calls."""

    wall: float
    cpu: float  # summed over the two threads
    runqueue: float  # the smaller of the two threads' run-queue waits
    starved: bool = False  # the second thread never got to run a call


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


def measure_sizes(fn: Callable[[Any], Any], samples: Sequence[Any], result: ProbeResult) -> None:
    """Pickled sizes; records what cannot be pickled (then processes are out)."""
    import cloudpickle

    try:
        result.fn_bytes = len(cloudpickle.dumps(fn, protocol=5))
    except Exception as exc:
        result.unpicklable = f"the function cannot be pickled ({type(exc).__name__}: {exc})"
        return
    ran = sorted(i for i, (ok, _) in result.outcomes.items() if ok)[:SIZE_SAMPLES]
    k = len(ran)
    if k == 0:
        return
    arg_in, arg_shm, res_in = 0.0, 0.0, 0.0
    for i in ran:
        try:
            inband, oob = _pickled_size(samples[i])
        except Exception as exc:
            result.unpicklable = f"argument {i} cannot be pickled ({type(exc).__name__}: {exc})"
            return
        big = sum(b for b in oob if b >= SHM_THRESHOLD)
        arg_in += inband + (sum(oob) - big)
        arg_shm += big
        _ok, value = result.outcomes[i]
        try:
            inband, oob = _pickled_size(value)
        except Exception as exc:
            result.unpicklable = (
                f"the result of sample {i} cannot be pickled ({type(exc).__name__}: {exc})"
            )
            return
        res_in += inband + sum(oob)
    result.arg_bytes = arg_in / k
    result.shm_bytes = arg_shm / k
    result.result_bytes = res_in / k


def _pickled_size(obj: Any) -> tuple[int, list[int]]:
    """In-band pickle size and the sizes of out-of-band buffers (not copied)."""
    import cloudpickle

    buffers: list[int] = []

    def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
        buffers.append(buf.raw().nbytes)
        return False

    data = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_out_of_band)
    return len(data), buffers


def format_seconds(seconds: float) -> str:
    """3 significant figures in a unit people read easily: 48 ms, 1.2 s, 350 us."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3g} us"
    return f"{seconds * 1e9:.3g} ns"


# -- the same phases in a worker (gilfree._auto) --------------------------------------
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
            _timed_overhead = min(_time_one(_noop, 0)[1] for _ in range(20))
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
    ``_pair_phase`` on the rest for about ``target`` seconds. Its result is a
    ``ProbeResult`` whose outcomes cover a prefix of the items it was given;
    exceptions travel with their traceback (``(False, (exc, traceback text))``).
    Run as one task, a crash or hang in it cannot be pinned on one item: the
    caller then runs its items again as ordinary tasks.
    """

    __slots__ = ("cap", "fn")

    def __init__(self, fn: Callable[[Any], Any], cap: float) -> None:
        self.fn = fn
        self.cap = cap

    def __call__(self, items: list[Any]) -> ProbeResult:
        from .._serialize import exception_payload

        result = ProbeResult()
        _serial_phase(self.fn, items, result, cap=self.cap, limit=1)
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
            _pair_phase(self.fn, items, result, target=min(self.cap, max(STABLE_SERIAL_S, 1.5 * t)))
        for i, (ok, value) in list(result.outcomes.items()):
            if not ok:
                result.outcomes[i] = (False, exception_payload(value))
        return result

"""What one probe measured (``ProbeResult``), and how it reads as features.

The raw clocks of the serial and two-thread phases (``_probe_phases``) and the
pickled sizes (``_probe_sizes``) go in; the properties give what the policy
uses: time per call, CPU fraction, two-thread speedup, busy share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# A first call this many times slower than the next ones is a warm-up (imports,
# cold caches) and is left out of the mean time per call.
WARM_UP_OUTLIER = 3.0


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
    pair_windows: list[Window] = field(default_factory=list, repr=False)
    overlap: Overlap | None = field(default=None, repr=False)
    pair_skipped: str | None = None  # why the two-thread phase did not run
    failures: int = 0
    crashes: int = 0  # calls (or the two-thread task) that killed their worker
    arg_bytes: float | None = None  # mean in-band pickled size of an argument
    shm_bytes: float = 0.0  # mean bytes per argument sent via shared memory
    result_bytes: float | None = None
    fn_bytes: int | None = None
    unpicklable: str | None = None  # what could not be pickled, and why
    arg_pickle_s: float | None = None  # pickling the first argument, timed in the parent
    arg_pickle_partial: bool = False  # stopped once it took longer than a call: a floor
    sent_fewer: str | None = None  # why the probe sent its workers fewer samples
    # Samples a task that ran several of them took down with it (the two-thread
    # phase, when its worker died): none can be blamed, so each runs again alone.
    suspects: list[int] = field(default_factory=list)
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
        """Throughput of two threads over one thread (1.0 = no gain); None when
        it was not measured, or when only one thread took work (``starved``:
        that says nothing about how two would scale)."""
        if not self.pair_windows or not self.serial_calls:
            return None
        f = self.cpu_fraction or 0.0
        ov = self.overlap
        if ov is not None and ov.starved:
            return None
        if f >= 0.5 and ov is not None and math.isfinite(ov.cpu) and ov.cpu > 0:
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


@dataclass(frozen=True)
class Window:
    """What one thread of the pair phase did, from its first take to its last finish."""

    calls: int
    wall: float
    cpu: float
    runqueue: float
    end: float


@dataclass(frozen=True)
class Overlap:
    """Both threads' CPU time while both were running calls."""

    wall: float
    cpu: float  # summed over the two threads
    runqueue: float  # the smaller of the two threads' run-queue waits
    starved: bool = False  # one thread never got to run a call: no reading


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

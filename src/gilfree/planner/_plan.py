"""The Plan: what the planner decided, why, and what it measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._bytecode import HOLDS_THE_GIL, WITHOUT_A_GIL, Finding
from ._probe import format_seconds

BACKEND_WORDS = {
    "serial": "run the calls one after another in this thread (a plain loop)",
    "thread": "threads",
    "process": "processes",
    "dask": "the Dask cluster",
}


@dataclass(frozen=True)
class Profile:
    """The measurements a Plan rests on (None where not measured)."""

    calls: int = 0  # calls the probe made (each one a real task)
    task_seconds: float | None = None  # mean wall time per call, one thread
    cpu_fraction: float | None = None  # thread CPU time / wall time
    thread_scaling: float | None = None  # 2-thread throughput / 1-thread throughput
    arg_bytes: float | None = None  # mean pickled argument (in-band)
    shm_bytes: float = 0.0  # mean argument bytes sent through shared memory
    result_bytes: float | None = None  # mean pickled result
    internal_parallelism: float | None = None  # process CPU / thread CPU (BLAS threads)
    busy_share: float = 0.0  # share of probe time spent waiting for a CPU (busy machine)
    failures: int = 0
    probe_seconds: float = 0.0
    process_start_s: float | None = None  # starting one worker process here
    process_roundtrip_s: float | None = None  # one message to a worker and back
    process_byte_s: float | None = None  # seconds per byte through a pipe
    cpus: int = 1
    gil_enabled: bool = True  # False on a free-threaded interpreter running without its GIL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """How to run a function over many inputs, and why.

    ``outcomes[i]`` is ``(True, result)`` or ``(False, exception)`` for
    ``samples[i]`` of the ``advise`` call; samples not in it were not run.
    Those calls were real: the engine keeps their results.
    """

    backend: str
    workers: int
    chunksize: int | None
    reasons: list[str]
    profile: Profile
    findings: list[Finding] = field(default_factory=list)
    predicted: dict[str, float] = field(default_factory=dict)
    outcomes: dict[int, tuple[bool, Any]] = field(default_factory=dict, repr=False)
    function: str = "the function"
    total: int = 0  # items the prediction is for
    total_known: bool = False
    cached: bool = False  # measurements reused from an earlier probe of this function
    notes: list[str] = field(default_factory=list)  # caveats that are not reasons
    #: Samples the probe ran inside a task that died with several of them:
    #: not in ``outcomes``; the engine runs each alone, so a culprit fails alone.
    suspects: list[int] = field(default_factory=list, repr=False)
    #: Set when a probe call crashed or hung and the plan moved to processes
    #: from threads: ``(workers, reason)`` of the thread plan the timings chose,
    #: and the sentence saying why it moved. ``backend="auto"`` goes back to
    #: it where its threads run inside worker processes anyway.
    from_threads: tuple[int, str] | None = field(default=None, repr=False)

    def explain(self) -> str:
        """A few paragraphs a newcomer can read: the choice, why, the numbers."""
        lines = [f"Plan for {self.function}: {self._headline()}.", "", "Why:"]
        lines += [f"  - {r}" for r in self.reasons]
        if self.predicted:
            count = f"{self.total:,} items" + ("" if self.total_known else " (assumed)")
            lines += ["", f"Predicted time for {count}:"]
            best = min(self.predicted.values())
            for name, secs in sorted(self.predicted.items(), key=lambda kv: kv[1]):
                mark = "  <- chosen" if name == self.backend else ""
                slower = f"  ({secs / best:.2f}x the fastest)" if best > 0 and secs > best else ""
                lines.append(f"  {name:<8} {format_seconds(secs):>9}{slower}{mark}")
        if self.findings:
            lines += ["", "What the bytecode shows:"]
            for f in self.findings[:12]:
                said = f.detail
                if not self.profile.gil_enabled:
                    said = said.replace(HOLDS_THE_GIL, WITHOUT_A_GIL)
                lines.append(f"  - {said}")
            if len(self.findings) > 12:
                lines.append(f"  - ... and {len(self.findings) - 12} more")
        p = self.profile
        lines += ["", "Measured:"]
        if self.cached:
            lines.append(f"  {p.calls} real calls in an earlier probe of this function (reused)")
        else:
            lines.append(
                f"  {p.calls} real calls in {format_seconds(p.probe_seconds)} "
                "(their results are kept)"
            )
        if p.task_seconds is not None:
            lines.append(f"  time per call    {format_seconds(p.task_seconds)}")
        if p.cpu_fraction is not None:
            lines.append(f"  on the CPU       {p.cpu_fraction:.0%} of it")
        if p.thread_scaling is not None:
            lines.append(f"  2 threads ran at {p.thread_scaling:.2f}x the rate of one")
        if p.arg_bytes is not None:
            lines.append(
                f"  pickled sizes    argument {format_bytes(p.arg_bytes + p.shm_bytes)}, "
                f"result {format_bytes(p.result_bytes or 0)}"
            )
        lines.append(
            "  GIL              "
            + ("enabled" if p.gil_enabled else "disabled (free-threaded interpreter)")
        )
        if p.process_start_s is not None and p.process_roundtrip_s is not None:
            lines.append(
                f"  process costs    start {format_seconds(p.process_start_s)}, "
                f"round trip {format_seconds(p.process_roundtrip_s)}"
            )
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def _headline(self) -> str:
        if self.backend == "serial":
            return BACKEND_WORDS["serial"]
        unit = {"thread": "thread", "process": "process", "dask": "Dask thread"}[self.backend]
        many = "es" if unit == "process" else "s"
        chunk = (
            f", {self.chunksize} item{'s' if self.chunksize != 1 else ''} per chunk to start"
            if self.chunksize
            else ", chunk size chosen as it runs"
        )
        return f"use {self.workers} {unit}{many if self.workers != 1 else ''}{chunk}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (for ``gilfree advise --json``); results left out."""
        return {
            "function": self.function,
            "backend": self.backend,
            "workers": self.workers,
            "chunksize": self.chunksize,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "predicted_seconds": dict(self.predicted),
            "total": self.total,
            "total_known": self.total_known,
            "cached": self.cached,
            "profile": self.profile.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "probe_calls": len(self.outcomes),
        }


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"

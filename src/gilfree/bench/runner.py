"""Time the workload suite on every local backend and on auto.

Each measurement is one ``gilfree.Executor(backend=...)`` opened, mapped over
the whole input and shut down: pool start-up and shutdown are part of what a
user pays for one map, so they are part of the time. ``auto`` includes its
probe, and ``Executor.statistics()`` says which backend it went on to use.
Results are checked against the serial run, so a fast wrong answer shows.
"""

from __future__ import annotations

import gc
import os
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .workloads import SUITE, Workload

if TYPE_CHECKING:
    from .._api import BackendName

BACKENDS: tuple[BackendName, ...] = ("serial", "thread", "process", "auto")


@dataclass
class Timing:
    """One backend on one workload."""

    backend: str
    seconds: float | None = None  # best of the runs; None when it failed
    runs: list[float] = field(default_factory=list)
    used: str | None = None  # the backend that ran it (differs from backend for auto)
    workers: int | None = None
    error: str | None = None  # why it failed, or that its results were wrong

    def to_dict(self, serial: float | None) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "runs": self.runs,
            "speedup": speedup(serial, self.seconds),
            "used": self.used,
            "workers": self.workers,
            "error": self.error,
        }


@dataclass
class WorkloadResult:
    name: str
    description: str
    tasks: int
    timings: dict[str, Timing] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def serial(self) -> float | None:
        t = self.timings.get("serial")
        return t.seconds if t else None

    def speedup(self, backend: str) -> float | None:
        t = self.timings.get(backend)
        return speedup(self.serial, t.seconds if t else None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "tasks": self.tasks,
            "skipped": self.skipped,
            "backends": {b: t.to_dict(self.serial) for b, t in self.timings.items()},
        }


def speedup(serial: float | None, seconds: float | None) -> float | None:
    if serial is None or seconds is None or seconds <= 0:
        return None
    return serial / seconds


def time_gilfree(
    fn: Callable[[Any], Any], items: list[Any], backend: BackendName
) -> tuple[float, Any, dict]:
    """Seconds for one Executor map over ``items``; its results and statistics."""
    import gilfree

    start = time.perf_counter()
    with gilfree.Executor(backend=backend) as executor:
        results = list(executor.map(fn, items))
        stats = executor.statistics()
    seconds = time.perf_counter() - start
    used = stats[-1] if stats else {"backend": backend, "workers": None}
    return seconds, results, used


def run_workload(
    workload: Workload,
    *,
    quick: bool,
    repeat: int,
    backends: Sequence[BackendName] = BACKENDS,
    report: Callable[[str], None] = lambda line: None,
) -> WorkloadResult:
    missing = workload.missing()
    if missing:
        return WorkloadResult(workload.name, workload.description, 0, skipped=missing)
    items = workload.items(quick=quick)
    result = WorkloadResult(workload.name, workload.description, len(items))
    expected: list[Any] | None = None
    for backend in backends:
        timing = Timing(backend)
        result.timings[backend] = timing
        for _ in range(repeat):
            report(f"{workload.name}: {backend}")
            gc.collect()
            try:
                seconds, values, used = time_gilfree(workload.fn, items, backend)
            except Exception as exc:
                timing.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                if os.environ.get("GILFREE_DEBUG"):
                    traceback.print_exc()
                break
            if expected is None and backend == "serial":
                expected = values
            elif expected is not None and values != expected:
                timing.error = "wrong results"
                break
            timing.runs.append(seconds)
            timing.used = used.get("backend")
            timing.workers = used.get("workers")
        if timing.error is None and timing.runs:
            timing.seconds = min(timing.runs)
    del items
    return result


def run_suite(
    *,
    quick: bool,
    repeat: int = 1,
    backends: Sequence[BackendName] = BACKENDS,
    workloads: Sequence[Workload] = SUITE,
    report: Callable[[str], None] = lambda line: None,
) -> list[WorkloadResult]:
    return [
        run_workload(w, quick=quick, repeat=repeat, backends=backends, report=report)
        for w in workloads
    ]


def machine_info() -> dict[str, Any]:
    """Where the numbers came from: CPUs, CPU model, Python, gilfree, date."""
    from .. import __version__
    from .._options import usable_cpus

    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": usable_cpus(),
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "gilfree": __version__,
        # Other work on the machine while timing: speedups shrink when it is near `cpus`.
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def select(only: str | None) -> tuple[Workload, ...]:
    """The workloads named in ``--only`` (comma-separated), in suite order."""
    if not only:
        return SUITE
    names = {n.strip() for n in only.split(",") if n.strip()}
    known = {w.name for w in SUITE}
    unknown = sorted(names - known)
    if unknown or not names:
        from .._usage import UsageError

        raise UsageError(
            f"--only {only!r}: no workload named {', '.join(unknown) or only!r}; "
            f"choose from {','.join(w.name for w in SUITE)}"
        )
    return tuple(w for w in SUITE if w.name in names)

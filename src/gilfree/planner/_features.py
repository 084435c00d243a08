"""What the policy looks at: the measurements and findings for one function."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._bytecode import Finding
from ._machine import MachineCosts


@dataclass(frozen=True)
class Features:
    """Everything ``choose`` looks at. Times in seconds, sizes in bytes."""

    machine: MachineCosts
    task_seconds: float | None = None  # None: nothing measured (no samples)
    cpu_fraction: float | None = None
    pair_speedup: float | None = None
    pair_skipped: str | None = None
    busy_share: float = 0.0  # share of probe time spent waiting for a CPU
    internal_parallelism: float | None = None
    arg_bytes: float = 0.0
    shm_bytes: float = 0.0
    result_bytes: float = 0.0
    calls: int = 0
    failures: int = 0
    crashes: int = 0  # probe calls that killed their worker process
    failure_type: str | None = None
    unpicklable: str | None = None
    probe_seconds: float = 0.0
    findings: tuple[Finding, ...] = ()
    function: str = "the function"
    total: int | None = None
    workers: int | None = None  # imposed by the user
    address: str | None = None
    dask_threads: int | None = None  # total threads on the cluster
    dask_workers: int | None = None  # worker processes on the cluster
    dask_error: str | None = None
    notes: tuple[str, ...] = field(default=())
    # sys._is_gil_enabled() when planning (False: threads run Python in parallel)
    gil_enabled: bool = True
    free_threaded_build: bool = False  # built with --disable-gil (the GIL may still be on)

    def kinds(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

"""What the policy looks at: the measurements and findings for one function,
and the interpreter they were measured on."""

from __future__ import annotations

import sys
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
    hangs: int = 0  # probe calls stopped at timeout= (only a process can be stopped)
    failure_type: str | None = None
    unpicklable: str | None = None
    arg_pickle_s: float | None = None  # pickling one argument, timed (None: not timed)
    arg_pickle_partial: bool = False  # arg_pickle_s is a floor: pickling was stopped there
    sent_fewer: str | None = None  # why the probe sent fewer samples (large arguments)
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
    # The interpreter at plan time (see gil_enabled / free_threaded_build below).
    # Defaults describe a GIL build, so policy tables that do not set them keep
    # their meaning.
    gil_enabled: bool = True
    free_threaded_build: bool = False

    def kinds(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]


def free_threaded_build() -> bool:
    """True on a CPython built without the GIL (``--disable-gil``: 3.13t, 3.14t).

    ``sysconfig``'s ``Py_GIL_DISABLED`` says so too, but importing sysconfig
    costs ~1.5 ms of the first ``map``; the ABI flags carry the build's "t"."""
    flags = getattr(sys, "abiflags", None)
    if flags is not None:
        return "t" in flags
    import sysconfig  # Windows has no abiflags

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    """Whether the GIL is on *now*. False only on a free-threaded build where it
    stayed off: importing a C extension that does not declare free-threading
    support turns it back on for the rest of the process (and ``PYTHON_GIL=1``
    or ``-X gil=1`` starts with it on), so ask at plan time, not at import."""
    check = getattr(sys, "_is_gil_enabled", None)  # 3.13+
    return True if check is None else bool(check())

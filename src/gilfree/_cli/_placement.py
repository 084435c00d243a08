"""Where ``gilfree run`` calls the user's function: never in its own process.

The command holds the output file and what it has not yet written; a record
that segfaults or calls ``os._exit`` must cost that record only. So the
function runs on process workers (gilfree's pool, which turns a dead worker
into a ``WorkerDied`` for its task and replaces it) or on a Dask cluster.
Where the user or the plan asks for a backend that would run it in this
process, it runs on process workers instead, and one stderr line says so:

* ``serial`` -> one worker process: calls stay one at a time, in order;
* ``thread`` -> several worker processes (at most ``THREADS_AS_PROCESSES``).

Everything here is checked before the output file is touched: a wrong
combination of options, or a Dask scheduler that does not answer, ends the
command with one line and exit status 2.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .._options import usable_cpus
from . import UsageError

#: Worker processes that stand in for threads: threads overlap waiting (I/O),
#: and so do processes, at a few tens of MB each instead of a stack. Four per
#: CPU, at most 32 (the thread backend's own default count), keeps memory bounded.
THREADS_AS_PROCESSES = max(2, min(32, 4 * usable_cpus()))
#: Seconds to reach a Dask scheduler before giving up: a refused connection
#: answers at once; this bounds a silent one (a firewall dropping packets).
DASK_CHECK_S = 3.0
ADDRESS_ENV = "GILFREE_DASK_ADDRESS"
WHY = "gilfree run never calls your function in its own process"


@dataclass(frozen=True)
class Placement:
    """The backend the library is given ("process", "dask", or "auto" until the
    probe has planned), its worker count, and a line for stderr (or None)."""

    backend: str
    workers: int | None
    address: str | None
    note: str | None = None


def place(backend: str, workers: int | None, address: str | None) -> Placement:
    """Check the options for ``backend`` and decide where the function runs."""
    if address is not None and backend not in ("dask", "auto"):
        raise UsageError(f"--address is for --backend dask (or auto), not --backend {backend}")
    if backend == "serial":
        if workers is not None:
            raise UsageError("--workers does not apply to --backend serial (one call at a time)")
        note = f"gilfree: --backend serial runs on 1 worker process: {WHY}"
        return Placement("process", 1, None, note)
    if backend == "thread":
        workers, note = _as_processes("--backend thread:", workers)
        return Placement("process", workers, None, note)
    if backend == "process":
        return Placement("process", workers, None)
    address = address or os.environ.get(ADDRESS_ENV) or None
    if backend == "dask":
        if address is None:
            raise UsageError(
                f"--backend dask needs the scheduler's address: --address tcp://host:8786 "
                f"or the {ADDRESS_ENV} environment variable"
            )
        check_dask(address)
        return Placement("dask", workers, address)
    if address is not None:  # auto may choose Dask only when a scheduler is named
        check_dask(address)
    return Placement("auto", workers, address)


def from_plan(plan_backend: str, plan_workers: int | None, placement: Placement) -> Placement:
    """The placement for what the probe planned (``placement.backend`` is "auto")."""
    workers = placement.workers or plan_workers
    if plan_backend == "dask":
        return Placement("dask", placement.workers, placement.address)
    if plan_backend == "serial":
        note = f"gilfree: the plan is serial; running it on 1 worker process: {WHY}"
        return Placement("process", 1, None, note)
    if plan_backend == "thread":
        workers, note = _as_processes("the plan is thread;", workers)
        return Placement("process", workers, None, note)
    return Placement("process", workers, None)


def _as_processes(what: str, workers: int | None) -> tuple[int, str]:
    n = min(workers or THREADS_AS_PROCESSES, THREADS_AS_PROCESSES)
    capped = f" (not {workers}: at most {n} here)" if workers and workers > n else ""
    return n, f"gilfree: {what} running it on {n} worker processes{capped}: {WHY}"


def check_dask(address: str) -> None:
    """Raise UsageError unless a Dask scheduler with workers answers at ``address``."""
    try:
        from ..backends._dask import connect
    except ImportError:
        raise UsageError("--backend dask needs dask.distributed: pip install 'gilfree[dask]'")
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{address!r} is not a Dask scheduler address (tcp://host:port)")
    if parts.scheme in ("tcp", "tls") and parts.hostname and port:
        # Dask's own connect retries a refused port until its timeout; a plain
        # socket is refused at once, and bounded when nothing answers at all.
        try:
            socket.create_connection((parts.hostname, port), timeout=DASK_CHECK_S).close()
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {reason}")
    try:
        client = connect(address, DASK_CHECK_S)
    except (OSError, ValueError) as exc:  # ConnectionError, TimeoutError, a bad address
        raise UsageError(f"cannot connect to the Dask scheduler at {address}: {_first_line(exc)}")
    try:
        threads = sum(client.nthreads().values())
    finally:
        client.close()
    if not threads:
        raise UsageError(f"the Dask cluster at {address} has no workers")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""The Dask cluster ``backend="auto"`` may consider: its size, asked once per address."""

from __future__ import annotations

import threading

_cluster_lock = threading.Lock()
_clusters: dict[str, tuple[int | None, int | None, str | None]] = {}


def cluster_size(address: str) -> tuple[int | None, int | None, str | None]:
    """``(threads, workers, error)`` of the Dask cluster at ``address``, asked once."""
    with _cluster_lock:
        if address in _clusters:
            return _clusters[address]
    try:
        from .backends._dask import connect
    except ImportError:
        found: tuple[int | None, int | None, str | None] = (
            None,
            None,
            "dask.distributed is not installed (pip install 'gilfree[dask]')",
        )
    else:
        try:
            with connect(address, timeout=5) as client:
                per_worker = client.nthreads()
            found = (
                (sum(per_worker.values()), len(per_worker), None)
                if per_worker
                else (None, None, "it has no workers")
            )
        except Exception as exc:  # connection refused, timeout, version mismatch
            found = (None, None, f"connecting failed ({type(exc).__name__}: {exc})")
    with _cluster_lock:
        _clusters[address] = found
    return found


def forget_clusters() -> None:
    """Ask clusters again next time (tests; after a cluster changed)."""
    with _cluster_lock:
        _clusters.clear()

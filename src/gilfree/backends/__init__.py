"""Backends: where chunks run. ``create(name, options)`` builds one; dask loads lazily."""

from __future__ import annotations

import importlib

from .._options import Options
from ..errors import ConfigurationError
from ._base import Backend, FutureJob, Job, StreamJob

__all__ = ["Backend", "FutureJob", "Job", "StreamJob", "chunk_target", "create"]

# name -> (module, class); imported on first use so `import gilfree` stays light.
_REGISTRY = {
    "serial": ("._serial", "SerialBackend"),
    "thread": ("._thread", "ThreadBackend"),
    "process": ("._process", "ProcessBackend"),
    "dask": ("._dask", "DaskBackend"),
}


def chunk_target(name: str) -> float:
    """Seconds of work per chunk that backend ``name`` aims for."""
    return float(_backend_class(name).chunk_target_s)


def create(name: str, options: Options) -> Backend:
    return _backend_class(name)(options)


def _backend_class(name: str) -> type[Backend]:
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise ConfigurationError(f"backend={name!r} has no implementation here") from None
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as exc:
        if name == "dask":
            raise ImportError(
                "backend='dask' needs dask.distributed: pip install 'gilfree[dask]'"
            ) from exc
        raise
    cls: type[Backend] = getattr(module, class_name)
    return cls

"""gilfree: run a function over many inputs on the right kind of parallelism.

The public surface is re-exported here; everything else is private. Importing
gilfree starts nothing: no thread, process or atexit hook until a pool is made.
"""

from __future__ import annotations

from typing import Any

from ._api import Executor, imap, map
from .errors import (
    ConfigurationError,
    DeadlockError,
    GilfreeError,
    PoolBroken,
    RemoteTraceback,
    SerializationError,
    TaskTimeout,
    WorkerDied,
)

__all__ = [
    "ConfigurationError",
    "DeadlockError",
    "Executor",
    "GilfreeError",
    "Lock",
    "Plan",
    "PoolBroken",
    "RLock",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeout",
    "WorkerDied",
    "advise",
    "deadlock_detection",
    "imap",
    "map",
    "share",
]

__version__ = "0.1.0"

# Heavier parts load on first use (planner reads bytecode, share needs numpy).
_LAZY = {
    "advise": ("gilfree._auto", "advise"),
    "Plan": ("gilfree.planner", "Plan"),
    "share": ("gilfree._shm", "share"),
    "Lock": ("gilfree.deadlock", "Lock"),
    "RLock": ("gilfree.deadlock", "RLock"),
    "deadlock_detection": ("gilfree.deadlock", "deadlock_detection"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'gilfree' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

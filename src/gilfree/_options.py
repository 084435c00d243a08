"""Validated, frozen option objects: every public option is checked here, once."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigurationError

BACKENDS = ("auto", "serial", "thread", "process", "dask")
ERRORS = ("raise", "return")
START_METHODS = (None, "fork", "zygote", "spawn")


def usable_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Options:
    """What one map / imap / Executor was asked to do."""

    backend: str = "auto"
    workers: int | None = None
    chunksize: int | None = None
    timeout: float | None = None
    retries: int = 0
    errors: str = "raise"
    progress: bool = False
    address: str | None = None
    ordered: bool = True
    start_method: str | None = None
    max_tasks_per_worker: int | None = None
    max_worker_memory: int | None = None
    share_threshold: int = 1 << 20
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigurationError(
                f"backend={self.backend!r} is not one of {', '.join(map(repr, BACKENDS))}"
            )
        _check_positive_int("workers", self.workers)
        _check_positive_int("chunksize", self.chunksize)
        _check_positive_int("max_tasks_per_worker", self.max_tasks_per_worker)
        _check_positive_int("max_worker_memory", self.max_worker_memory)
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
                raise ConfigurationError(f"timeout={self.timeout!r} must be a number of seconds")
            if not self.timeout > 0:
                raise ConfigurationError(f"timeout={self.timeout!r} must be greater than 0")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"retries={self.retries!r} must be an integer >= 0")
        if self.errors not in ERRORS:
            raise ConfigurationError(f"errors={self.errors!r} must be 'raise' or 'return'")
        if self.start_method not in START_METHODS:
            raise ConfigurationError(
                f"start_method={self.start_method!r} must be 'fork', 'zygote' or 'spawn' (or None)"
            )
        if self.initializer is not None and not callable(self.initializer):
            raise ConfigurationError(f"initializer={self.initializer!r} is not callable")
        if not isinstance(self.initargs, tuple):
            raise ConfigurationError(f"initargs={self.initargs!r} must be a tuple")
        if self.address is not None and not isinstance(self.address, str):
            raise ConfigurationError(
                f"address={self.address!r} must be a string like tcp://host:port"
            )

    def with_(self, **changes: Any) -> Options:
        return replace(self, **changes)


def _check_positive_int(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name}={value!r} must be a positive integer or None")


def make_options(**kwargs: Any) -> Options:
    """Build Options from keyword arguments, naming any unknown one."""
    known = Options.__dataclass_fields__
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return Options(**kwargs)

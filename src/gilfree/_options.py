"""Validated, frozen option objects: every public option is checked here, once."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigurationError

BACKENDS = ("auto", "serial", "thread", "process", "dask")
#: The longest timeout: a year, far below what threading and select accept.
MAX_TIMEOUT = 365 * 24 * 3600.0
ERRORS = ("raise", "return")
START_METHODS = (None, "fork", "zygote", "spawn")


def usable_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _opt(default: Any, doc: str, applies: tuple[str, ...] = ()) -> Any:
    """A documented option: ``doc`` is what help(), the docs table and errors show;
    ``applies`` the backends it means something on (empty: all of them)."""
    return field(default=default, metadata={"doc": doc, "applies": applies})


@dataclass(frozen=True)
class Options:
    """What one map / imap / Executor was asked to do.

    This class is the one source of every option's default and meaning: the
    public signatures in ``_api`` repeat the names and defaults (so that
    ``help()`` and IDEs show them; ``tests/test_public_api.py`` checks they
    agree), and their docstrings and the docs' options table are generated
    from the ``doc`` here.
    """

    backend: str = _opt(
        "auto",
        "'auto' (probe, explain, pick), 'serial', 'thread', 'process' or 'dask'.",
    )
    workers: int | None = _opt(
        None,
        "How many workers. None: usable CPUs for processes, enough to overlap "
        "I/O for threads, what the planner picks for 'auto'.",
        ("thread", "process", "dask"),
    )
    chunksize: int | None = _opt(
        None,
        "Items per round trip to a worker. None: sized from the measured time "
        "per item, adapting as the job runs.",
    )
    timeout: float | None = _opt(
        None,
        "Seconds one task may run. A process task past it is killed with its "
        "worker (TaskTimeout, with the worker's stack); a thread task fails on "
        "time and its thread is abandoned.",
    )
    retries: int = _opt(
        0,
        "Run a task that raised, timed out or whose worker died up to this many more times.",
    )
    errors: str = _opt(
        "raise",
        "'raise': the first failure propagates and the rest is cancelled. "
        "'return': a failed slot holds the exception and the job finishes.",
    )
    progress: bool = _opt(False, "Show a progress bar on stderr.")
    address: str | None = _opt(
        None,
        "Dask scheduler address (tcp://host:port); default $GILFREE_DASK_ADDRESS. "
        "'auto' considers Dask only when one is set.",
        ("dask",),
    )
    ordered: bool = _opt(True, "imap only: yield results in input order (False: as they complete).")
    start_method: str | None = _opt(
        None,
        "How process workers start: 'fork', 'zygote' (gilfree's fork server) or "
        "'spawn'. None: fork while the caller has one thread, else the zygote.",
        ("process",),
    )
    max_tasks_per_worker: int | None = _opt(
        None, "Replace a process worker after this many tasks (leaky code).", ("process",)
    )
    max_worker_memory: int | str | None = _opt(
        None,
        "Replace a process worker whose memory (RSS) grows past this after a "
        "task: bytes, or a string such as '512MiB' or '1GB'.",
        ("process",),
    )
    share_threshold: int | str = _opt(
        "1MiB",
        "NumPy arrays of this size or more go to process workers through shared "
        "memory instead of the pipe: bytes, or a string such as '4MiB'.",
        ("process", "dask"),
    )
    initializer: Callable[..., Any] | None = _opt(  # noqa: RUF009 - _opt returns a field
        None,
        "Executor only: called as initializer(*initargs) once in each worker "
        "before its first task; if it fails, the executor is broken (PoolBroken).",
        ("thread", "process"),
    )
    initargs: tuple[Any, ...] = _opt((), "Arguments for initializer.", ("thread", "process"))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigurationError(
                f"backend={self.backend!r} is not one of {', '.join(map(repr, BACKENDS))}"
            )
        _check_positive_int("workers", self.workers)
        _check_positive_int("chunksize", self.chunksize)
        _check_positive_int("max_tasks_per_worker", self.max_tasks_per_worker)
        object.__setattr__(
            self, "max_worker_memory", parse_size("max_worker_memory", self.max_worker_memory)
        )
        object.__setattr__(
            self, "share_threshold", parse_size("share_threshold", self.share_threshold)
        )
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
                raise ConfigurationError(f"timeout={self.timeout!r} must be a number of seconds")
            if not self.timeout > 0:
                raise ConfigurationError(f"timeout={self.timeout!r} must be greater than 0")
            if not self.timeout <= MAX_TIMEOUT:  # inf and nan too: no timer takes them
                raise ConfigurationError(
                    f"timeout={self.timeout!r} must be at most {MAX_TIMEOUT:.0f} seconds "
                    "(use None for no timeout)"
                )
        for name in ("progress", "ordered"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"{name}={getattr(self, name)!r} must be True or False")
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


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 10**3,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 10**12,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(name: str, value: object) -> int | None:
    """Bytes from an int or a string: '512MiB', '1GB' (10**9), '2G' (2**30), '4096'."""
    if value is None:
        return None
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ConfigurationError(
                f"{name}={value!r} is not a size: give bytes, or a number with a unit "
                "such as '512MiB', '1GB' or '2G'"
            )
        value = int(float(m.group(1)) * _UNITS[unit])
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name}={value!r} must be a positive number of bytes or None")
    return value


def option_docs() -> list[tuple[str, str, str, str]]:
    """``(name, type, default, meaning)`` of every option, for docstrings and the docs."""
    rows = []
    for f in fields(Options):
        kind = str(f.type).replace("Callable[..., Any]", "callable")
        kind = kind.replace("tuple[Any, ...]", "tuple").replace(" | ", " or ")
        applies = f.metadata["applies"]
        doc = f.metadata["doc"] + (f" ({', '.join(applies)} only.)" if applies else "")
        rows.append((f.name, kind, repr(f.default), doc))
    return rows


def options_table() -> str:
    """The options as a Markdown table (docs/options.md is generated from it)."""
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{n}` | `{t}` | `{d}` | {doc} |" for n, t, d, doc in option_docs()]
    return "\n".join(lines) + "\n"


def inapplicable(opts: Options, backend: str) -> list[str]:
    """Options set to something other than their default that mean nothing on ``backend``."""
    out = []
    for f in fields(Options):
        applies = f.metadata["applies"]
        value = getattr(opts, f.name)
        if f.name == "workers" and value == 1:
            continue  # one worker is what serial is
        if applies and backend not in applies and value != _default(f.name):
            out.append(f.name)
    return out


def _default(name: str) -> Any:
    value = Options.__dataclass_fields__[name].default
    return parse_size(name, value) if name in ("share_threshold", "max_worker_memory") else value


def check_applicable(opts: Options, backend: str, *, chosen_by_auto: bool = False) -> None:
    """An option that means nothing on the backend is an error naming it; where
    ``auto`` chose the backend, a warning (the caller could not know)."""
    bad = inapplicable(opts, backend)
    if chosen_by_auto:  # auto planned with these two: the plan says what it did with them
        bad = [name for name in bad if name not in ("workers", "address")]
    if not bad:
        return
    listed = ", ".join(f"{name}={getattr(opts, name)!r}" for name in bad)
    if chosen_by_auto:
        import warnings

        warnings.warn(
            f"{listed} not used: backend='auto' chose {backend!r}, where "
            f"{'it does' if len(bad) == 1 else 'they do'} not apply",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    raise ConfigurationError(
        f"{listed} {'does' if len(bad) == 1 else 'do'} not apply to backend={backend!r}"
    )


def make_options(**kwargs: Any) -> Options:
    """Build Options from keyword arguments, naming any unknown one."""
    known = Options.__dataclass_fields__
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return Options(**kwargs)


def stdlib_workers(workers: int | None, max_workers: int | None) -> int | None:
    """``max_workers`` is the stdlib's name for ``workers``: one of them, checked."""
    if max_workers is None:
        return workers
    if isinstance(max_workers, int) and not isinstance(max_workers, bool) and max_workers <= 0:
        raise ConfigurationError(f"max_workers={max_workers!r}: max_workers must be greater than 0")
    if workers is not None and workers != max_workers:
        raise ConfigurationError(
            f"workers={workers!r} and max_workers={max_workers!r} disagree; give one of them"
        )
    return max_workers

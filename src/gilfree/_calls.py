"""What an ``Executor`` sends to a backend for one call, how it keys plans and keeps them.

Backends run one-argument functions; ``_StarCall`` and ``_StarArgs`` adapt
``fn(*args, **kwargs)`` and ``fn(*item)`` to that, and tell the planner that
what it measured of ``fn`` holds for them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import pickle
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ._options import Options
    from .backends import Backend, FutureJob


class _StarCall:
    """fn(*args, **kwargs) as a one-argument callable (what backends run)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    @property
    def __gilfree_plans_as__(self) -> Callable[..., Any]:
        return self.fn  # the planner's measurements of fn hold for this adapter

    def __call__(self, call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        args, kwargs = call
        return self.fn(*args, **kwargs)


class _Arguments(tuple[tuple[Any, ...], dict[str, Any]]):
    """One ``submit``'s ``(args, kwargs)``, read in messages as the arguments of
    the call: ``(input: 0)`` or ``(input: 1, 2, key=3)``, not ``((0,), {})``."""

    __slots__ = ()

    def __repr__(self) -> str:
        args, kwargs = self
        return ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])


class _StarArgs:
    """fn(*item), for Executor.map over several iterables."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    @property
    def __gilfree_plans_as__(self) -> Callable[..., Any]:
        return self.fn  # the planner's measurements of fn hold for this adapter

    def __call__(self, args: tuple[Any, ...]) -> Any:
        return self.fn(*args)


def _snapshot(item: Any) -> Any:
    """A call's arguments as they are now, for a call that runs later (while its
    function is being planned): pickled, as a worker would receive them, so a
    change the caller makes after ``submit`` returns is not seen. What cannot
    be pickled is passed as it is (it could only run here anyway)."""
    from . import _serialize  # cloudpickle: only once a call waits for a plan

    try:
        return pickle.loads(_serialize.dumps(item))
    except Exception:
        return item


def _plan_key(fn: Any) -> Any:
    """What an Executor remembers a plan by: the code, so that a lambda made
    anew for every submit is planned once, not probed (and kept) each time."""
    code = getattr(fn, "__code__", None)
    if code is not None:
        return code
    try:
        hash(fn)
        return fn
    except TypeError:
        return type(fn)


class Known(NamedTuple):
    """A function's plan as options: for ``map``, which runs in the caller's
    thread, and for ``submit``, which must never run a call there."""

    map: Options
    submit: Options


def plan_known(
    fn: Any,
    samples: list[Any],
    options: Options,
    backend: Backend | None,
    probe_timeout: float | None = None,
) -> tuple[Known, Any, Backend | None]:
    """Probe ``fn`` on ``backend`` (or where gilfree.map would: see
    ``_auto.plan``) and plan: the Known options, the plan, and the pool the
    probe ran on if the plan keeps it. ``probe_timeout`` bounds each probed
    call (an ``Executor.map``'s own timeout), not the plan's tasks."""
    from . import _auto
    from ._session import _apply_plan, dask_address

    probing = options
    if probe_timeout is not None and (options.timeout is None or options.timeout > probe_timeout):
        probing = options.with_(timeout=probe_timeout)
    plan, kept = _auto.plan(
        fn,
        samples,
        probing,
        total=None,
        address=dask_address(options),
        backend=backend,
        in_caller=True,
    )
    if options.initializer is not None and plan.backend in ("serial", "thread"):
        plan = _in_initialized_workers(plan, backend)
    chosen = _apply_plan(options, plan)
    submit = chosen
    if chosen.backend == "serial":
        # submit must not block, and one probed call says little about the
        # next ones: calls too quick for threads to gain on stay in the
        # worker processes, where a crash fails only its own future (a
        # function that cannot be pickled gets one thread instead). map
        # runs in the caller's thread anyway and follows the plan, as
        # gilfree.map does: 20,000 tiny calls took 3.8 ms in a loop and
        # 31-43 ms sent to processes (make demo's "tiny" workload).
        if backend is not None and backend.name == "process":  # fn reached it
            submit = chosen.with_(backend="process", workers=backend.workers)
        else:
            name, opts = _auto.probe_backend(fn, options, None)
            submit = (
                chosen.with_(backend="process", workers=opts.workers)
                if name == "process"
                else chosen.with_(backend="thread", workers=1)
            )
    return Known(chosen, submit), plan, kept


def _in_initialized_workers(plan: Any, probed_on: Backend | None) -> Any:
    """The plan, moved to workers that ran ``initializer(*initargs)``: calls
    in this process's thread would run without it. The probe ran on the
    Executor's process pool, where it ran first; calls go there too, not to
    threads here, where an initializer that exits would end the caller. A
    function that cannot be pickled keeps threads (each runs the initializer
    first, as ThreadPoolExecutor's do): one for a serial plan."""
    if probed_on is not None and probed_on.name == "process":
        backend, workers = "process", probed_on.workers
        where = "worker processes, each of which runs it first, not in this process"
    elif plan.backend == "serial":
        backend, workers = "thread", 1
        where = "one worker thread, which runs it first, not in the caller's thread"
    else:
        return plan  # threads: each runs the initializer before its first call
    why = f"An initializer was given: calls run in {where} ({plan.backend} was quickest)."
    return dataclasses.replace(plan, backend=backend, workers=workers, reasons=[*plan.reasons, why])


def withdraw_if_cancelled(
    backend: weakref.ref[Backend],
    job: weakref.ref[FutureJob],
    future: concurrent.futures.Future[Any],
) -> None:
    """A future cancelled while queued frees its shared memory at once."""
    if future.cancelled():
        b, j = backend(), job()
        if b is not None and j is not None:
            b.withdraw(j)

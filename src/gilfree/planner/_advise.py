"""``advise``: bytecode + probe -> Features -> ``choose`` -> Plan, cached per function.

The measurements (bytecode findings, probe numbers) are cached per function,
not the Plan: a later ``advise`` for the same function with a different
``total``, ``workers`` or ``address`` re-runs the (pure, instant) policy on the
cached measurements and runs no call, so its ``outcomes`` are empty.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import TaskTimeout
from . import _bytecode, _machine, _probe
from ._features import Features, free_threaded_build, gil_enabled
from ._model import choose
from ._plan import Plan

# A cached probe that ran fewer calls than this is redone when new samples come:
# one call (an Executor's first submit) says too little to plan a long job on.
MIN_CACHED_CALLS = 3

#: A Dask cluster's size: ``(threads, worker processes, why unknown)``.
ClusterSize = tuple[int | None, int | None, str | None]
#: What runs the probe's calls: ``(fn, samples, budget) -> ProbeResult``.
ProbeFn = Callable[[Callable[[Any], Any], Sequence[Any], float], _probe.ProbeResult]

_cache_lock = threading.Lock()
_cache: weakref.WeakKeyDictionary[Any, Features] = weakref.WeakKeyDictionary()


def advise(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    *,
    budget: float = 1.0,
    total: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    cache: bool = True,
    probe: ProbeFn | None = None,
    cluster: Callable[[str], ClusterSize] | None = None,
) -> Plan:
    """Measure ``fn`` on ``samples`` (each called at most once) and plan a job.

    ``total`` is the number of items in the whole job when known; ``address``
    a Dask scheduler (Dask is never planned without one); ``workers`` a count
    the user imposed. With ``cache=True`` the measurements of an earlier call
    for the same function are reused (then no sample is run). ``probe`` runs
    the calls: by default ``_probe.probe``, in this thread; ``gilfree.advise``
    and ``backend="auto"`` pass one that runs them in pool workers. ``cluster``
    gives ``(threads, workers, error)`` of the Dask cluster at an address (the
    planner itself reaches no cluster: it depends on nothing above it).
    """
    if budget <= 0:
        raise ValueError(f"budget={budget!r} must be a positive number of seconds")
    samples = samples if isinstance(samples, Sequence) else list(samples)
    key = _cache_key(fn)
    cached = None
    if cache and key is not None:
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None and cached.calls < MIN_CACHED_CALLS and len(samples) > cached.calls:
            cached = None
    outcomes: dict[int, tuple[bool, Any]] = {}
    suspects: list[int] = []
    if cached is not None:
        features = cached
    else:
        features, outcomes, suspects = _measure(fn, samples, budget, probe or _probe.probe)
        # Nothing measured, or every call failed: too little to plan later jobs on.
        # A crash is kept too: a later job of the same function must not run inline.
        worth_keeping = features.crashes + features.hangs > 0 or (
            features.task_seconds is not None and features.failures < features.calls
        )
        if cache and key is not None and worth_keeping:
            with _cache_lock:
                _cache[key] = features
    if address is None:
        dask: ClusterSize = (None, None, None)
    elif cluster is None:
        dask = (None, None, "no way to reach a Dask cluster was given to the planner")
    else:
        dask = cluster(address)
    features = dataclasses.replace(
        features,
        gil_enabled=gil_enabled(),
        free_threaded_build=free_threaded_build(),
        total=total,
        workers=workers,
        address=address,
        dask_threads=dask[0],
        dask_workers=dask[1],
        dask_error=dask[2],
    )
    plan = choose(features)
    plan.outcomes = outcomes
    plan.suspects = suspects
    plan.cached = cached is not None
    return plan


def clear_cache() -> None:
    """Forget every cached measurement (tests; or after the code changed)."""
    with _cache_lock:
        _cache.clear()
    _machine.forget()


def sample_indices(n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)`` in the order to hand them to ``advise``.

    The probe runs a prefix of its samples, so the order matters: 0, then the
    last, the middle, the quarters, ... spreads even a two-call probe over the
    whole input, which matters when items near the end cost more than the first.
    """
    k = max(0, min(k, n))
    if k == 0:
        return []
    order: list[int] = []
    seen: set[int] = set()

    def add(i: int) -> None:
        if i not in seen and len(order) < k:
            seen.add(i)
            order.append(i)

    add(0)
    add(n - 1)
    parts = 2
    while len(order) < k and parts < 2 * n:
        for j in range(1, parts, 2):
            add(j * (n - 1) // parts)
        parts *= 2
    for i in range(n):  # fill whatever the halving missed
        if len(order) >= k:
            break
        add(i)
    return order


def _cache_key(fn: Any) -> Any:
    """The object to cache measurements on; None when it cannot be weakly keyed.

    A wrapper that calls a user's function (an Executor's ``fn(*args)`` adapter)
    names it as ``__gilfree_plans_as__``: what was measured of the function,
    a crash included, holds however it is called."""
    fn = getattr(fn, "__gilfree_plans_as__", fn)
    if isinstance(fn, types.MethodType):
        # A bound method is a new object at each attribute access.
        fn = fn.__func__
    try:
        weakref.ref(fn)
        hash(fn)
    except TypeError:
        return None
    return fn


def _measure(
    fn: Callable[[Any], Any], samples: Sequence[Any], budget: float, probe: ProbeFn
) -> tuple[Features, dict[int, tuple[bool, Any]], list[int]]:
    analysis = _bytecode.analyze(fn)
    machine = _machine.machine_costs()
    result = probe(fn, samples, budget)
    # Each kind of failure once, in the order met (a crash and a hang: both).
    kinds = dict.fromkeys(type(v).__name__ for ok, v in result.outcomes.values() if not ok)
    notes = []
    if result.failures and result.failures < result.calls:
        failed = ", ".join(kinds)
        notes.append(f"{result.failures} of {result.calls} probe calls failed ({failed}).")
    features = Features(
        machine=machine,
        task_seconds=result.task_seconds,
        cpu_fraction=result.cpu_fraction,
        pair_speedup=result.pair_speedup,
        pair_skipped=result.pair_skipped,
        busy_share=result.busy_share,
        internal_parallelism=result.internal_parallelism,
        arg_bytes=result.arg_bytes or 0.0,
        shm_bytes=result.shm_bytes,
        result_bytes=result.result_bytes or 0.0,
        calls=result.calls,
        failures=result.failures,
        crashes=result.crashes,
        hangs=sum(1 for ok, v in result.outcomes.values() if not ok and isinstance(v, TaskTimeout)),
        failure_type=next(iter(kinds), None),
        unpicklable=result.unpicklable,
        sent_fewer=result.sent_fewer,
        arg_pickle_s=result.arg_pickle_s,
        arg_pickle_partial=result.arg_pickle_partial,
        probe_seconds=result.seconds,
        findings=tuple(analysis.findings),
        function=_name(fn, analysis.function),
        notes=tuple(notes),
    )
    return features, result.outcomes, list(result.suspects)


def _name(fn: Any, fallback: str) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({fallback})"
    return fallback

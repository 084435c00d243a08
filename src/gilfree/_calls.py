"""What an ``Executor`` sends to a backend for one call, and how it keys plans.

Backends run one-argument functions; ``_StarCall`` and ``_StarArgs`` adapt
``fn(*args, **kwargs)`` and ``fn(*item)`` to that, and tell the planner that
what it measured of ``fn`` holds for them.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any


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

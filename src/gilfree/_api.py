"""map / imap / Executor: options -> plan -> backend -> engine.

``map`` and ``imap`` are here; one map call's set-up is in ``_session``, the
``Executor`` in ``_executor``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._executor import Executor
from ._options import Options, make_options
from ._session import (
    AUTO_SAMPLES,
    BackendName,
    ErrorPolicy,
    StartMethod,
    _direct,
    _given,
    _options_doc,
    _resolve,
    _session,
    _stopped_here,
    _values,
    reap_probes,
)

__all__ = ["AUTO_SAMPLES", "Executor", "imap", "imap_indexed", "map"]


@_options_doc("ordered", "initializer", "initargs")
def map(
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    backend: BackendName = "auto",
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    errors: ErrorPolicy = "raise",
    progress: bool = False,
    address: str | None = None,
    start_method: StartMethod | None = None,
    max_tasks_per_worker: int | None = None,
    max_worker_memory: int | str | None = None,
    share_threshold: int | str = "1MiB",
) -> list[Any]:
    """Call ``fn(item)`` for every item; return the results in input order.

    With ``errors="raise"`` the first failure propagates with its original
    type (the worker's traceback as ``__cause__``) and the rest is cancelled;
    with ``errors="return"`` a failed item's slot holds its exception.
    """
    opts = make_options(**_given(locals(), "fn", "iterable"))
    resolved = _resolve(fn, iterable, opts)
    direct = _direct(fn, resolved)
    if direct is not None:
        try:
            return direct.results(raise_errors=opts.errors == "raise")
        except Exception as exc:  # only a task's own failure (after its retries)
            raise _stopped_here(exc)
        finally:
            reap_probes()
    slots: dict[int, list[Any]] = {}
    with _session(fn, iterable, opts, ordered=False, resolved=resolved) as run:
        for ok, start, payload in run.events():
            if ok:
                slots[start] = payload
            elif opts.errors == "raise":
                raise _stopped_here(payload)
            else:
                slots[start] = [payload]
    out: list[Any] = []
    for start in sorted(slots):
        out.extend(slots[start])
    return out


@_options_doc("initializer", "initargs")
def imap(
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    ordered: bool = True,
    backend: BackendName = "auto",
    workers: int | None = None,
    chunksize: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    errors: ErrorPolicy = "raise",
    progress: bool = False,
    address: str | None = None,
    start_method: StartMethod | None = None,
    max_tasks_per_worker: int | None = None,
    max_worker_memory: int | str | None = None,
    share_threshold: int | str = "1MiB",
) -> Iterator[Any]:
    """Lazily yield results, in input order or (``ordered=False``) as they complete.

    The input is read a bounded window at a time, so a generator of ten
    million items runs in bounded memory.
    """
    opts = make_options(**_given(locals(), "fn", "iterable"))
    return _imap(fn, iterable, opts)


def imap_indexed(
    fn: Callable[[Any], Any], iterable: Iterable[Any], *, ordered: bool = True, **options: Any
) -> Iterator[tuple[int, bool, Any]]:
    """Like imap, yielding ``(index, ok, value)``; failures are yielded, never raised."""
    opts = make_options(ordered=ordered, **options).with_(errors="return")
    return _imap_indexed(fn, iterable, opts)


def _imap(fn: Callable[[Any], Any], iterable: Iterable[Any], opts: Options) -> Iterator[Any]:
    with _session(fn, iterable, opts, ordered=opts.ordered) as run:
        yield from _values(run.events(), opts.errors)


def _imap_indexed(
    fn: Callable[[Any], Any], iterable: Iterable[Any], opts: Options
) -> Iterator[tuple[int, bool, Any]]:
    with _session(fn, iterable, opts, ordered=opts.ordered) as run:
        for ok, start, payload in run.events():
            if ok:
                for k, value in enumerate(payload):
                    yield start + k, True, value
            else:
                yield start, False, payload

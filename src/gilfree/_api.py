"""map / imap / Executor: options -> plan -> backend -> engine."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ._engine import Event, Run, length_hint
from ._options import Options, make_options
from ._progress import Bar
from .backends import Backend, FutureJob, Job, StreamJob, create
from .errors import ConfigurationError

__all__ = ["Executor", "imap", "imap_indexed", "map"]

#: How many items `backend="auto"` hands the planner as samples (spread over an
#: indexable input); the planner runs only as many as its budget needs -- a 10 ms
#: call ~6, a 100 ns call all of them, which it needs to time it reliably -- and
#: their results are kept.
AUTO_SAMPLES = 64
#: Seconds the planner may spend probing before a map starts.
AUTO_BUDGET = 0.5


# -- public functions --------------------------------------------------------
def map(fn: Callable[[Any], Any], iterable: Iterable[Any], **options: Any) -> list[Any]:
    """Call ``fn(item)`` for every item; return the results in input order."""
    opts = make_options(**options)
    slots: dict[int, list[Any]] = {}
    with _session(fn, iterable, opts, ordered=False) as run:
        for ok, start, payload in run.events():
            if ok:
                slots[start] = payload
            elif opts.errors == "raise":
                raise payload
            else:
                slots[start] = [payload]
    out: list[Any] = []
    for start in sorted(slots):
        out.extend(slots[start])
    return out


def imap(
    fn: Callable[[Any], Any], iterable: Iterable[Any], *, ordered: bool = True, **options: Any
) -> Iterator[Any]:
    """Lazily yield results, in input order or (``ordered=False``) as they complete."""
    opts = make_options(ordered=ordered, **options)
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


def _values(events: Iterator[Event], errors: str) -> Iterator[Any]:
    """Results one by one; a failure raised or yielded as ``errors`` says."""
    for ok, _start, payload in events:
        if ok:
            yield from payload
        elif errors == "raise":
            raise payload
        else:
            yield payload


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


# -- one map call ------------------------------------------------------------
@contextmanager
def _session(fn: Callable[[Any], Any], iterable: Iterable[Any], opts: Options, *, ordered: bool):
    _check_callable(fn)
    total = length_hint(iterable)
    opts, iterable, prefilled, resubmit, plan = _resolve_auto(fn, iterable, opts, total)
    backend = create(opts.backend, opts)
    job = StreamJob(fn, opts)
    _seed_timing(job, plan)
    bar = None
    finished = False
    try:
        run = Run(
            backend,
            job,
            iterable,
            ordered=ordered,
            total=total,
            prefilled=prefilled,
            resubmit=resubmit,
        )
        if opts.progress:
            bar = run.progress = Bar(total, f"gilfree {opts.backend}").start()
        yield run
        finished = True
    finally:
        try:
            if finished:
                backend.shutdown(wait=True)
            else:  # an error, errors="raise", Ctrl-C or an abandoned generator
                backend.cancel(job)
                backend.shutdown(wait=False, kill=True)
        finally:
            if bar is not None:
                bar.close()


def _check_callable(fn: object) -> None:
    if not callable(fn):
        raise ConfigurationError(f"fn={fn!r} is not callable")


def dask_address(opts: Options) -> str | None:
    return opts.address or os.environ.get("GILFREE_DASK_ADDRESS") or None


def _resolve_auto(
    fn: Callable[[Any], Any], iterable: Iterable[Any], opts: Options, total: int | None
) -> tuple[Options, Iterable[Any], list[Event], list[tuple[int, Any]], Any]:
    """For backend="auto": probe some items, keep their results, pick a backend.

    Returns the options to run with, the input still to run, the probe's
    outcomes as events, items to run again, and the plan (or None).
    """
    if opts.backend != "auto":
        return opts, iterable, [], [], None
    from .planner import advise, sample_indices

    # An indexable input is probed on items spread over all of it (first, last,
    # middle, quarters...): cheap leading items must not hide the expensive
    # ones further on. Probed items are skipped when the rest runs.
    spread = isinstance(iterable, Sequence) and total is not None and total > AUTO_SAMPLES
    if spread:
        indices = sample_indices(total, AUTO_SAMPLES)  # type: ignore[arg-type]
        samples = [iterable[i] for i in indices]  # type: ignore[index]
    else:
        it = iter(iterable)
        samples = list(itertools.islice(it, AUTO_SAMPLES))
        if not samples:
            return opts.with_(backend="serial"), it, [], [], None
    plan = advise(
        fn,
        samples,
        budget=AUTO_BUDGET,
        total=total,
        address=dask_address(opts),
        workers=opts.workers,
    )
    if spread:
        prefilled, resubmit, rest = _reuse_spread_probe(plan, iterable, indices, opts.retries)
    else:
        prefilled, resubmit, rest = _reuse_probe(plan, samples, it, opts.retries)
    return _apply_plan(opts, plan), rest, prefilled, resubmit, plan


def _seed_timing(job: Job, plan: Any) -> None:
    """Start the chunker from the probe's timing instead of from one-item chunks."""
    profile = getattr(plan, "profile", None)
    if profile is not None and profile.calls and profile.task_seconds:
        job.record(profile.calls, profile.calls * profile.task_seconds)


def _apply_plan(opts: Options, plan: Any) -> Options:
    """The plan decides what the caller left open."""
    return opts.with_(
        backend=plan.backend,
        workers=opts.workers or plan.workers,
        chunksize=opts.chunksize or plan.chunksize,
    )


def _reuse_probe(
    plan: Any, samples: list[Any], it: Iterator[Any], retries: int
) -> tuple[list[Event], list[tuple[int, Any]], _Offset]:
    """The probe's calls were real: their outcomes become the first events.

    Returns the events, the items to run again, and the input still to run
    (from the first leading sample the probe did not run).
    """
    prefilled, resubmit, n_run = _probe_events(plan, list(enumerate(samples)), retries)
    return prefilled, resubmit, _Offset(itertools.chain(samples[n_run:], it), n_run)


def _reuse_spread_probe(
    plan: Any, seq: Sequence[Any], indices: list[int], retries: int
) -> tuple[list[Event], list[tuple[int, Any]], _Skipping]:
    """Like _reuse_probe for samples taken at ``indices``: the whole input
    still runs, minus the indices the probe ran."""
    prefilled, resubmit, n_run = _probe_events(plan, [(i, seq[i]) for i in indices], retries)
    return prefilled, resubmit, _Skipping(seq, frozenset(indices[:n_run]))


def _probe_events(
    plan: Any, samples: list[tuple[int, Any]], retries: int
) -> tuple[list[Event], list[tuple[int, Any]], int]:
    """Events for the samples the probe ran (``plan.outcomes`` is a prefix of
    ``samples``); a failed one is run again by the backend when retries are
    allowed, the probe having been its first attempt."""
    prefilled: list[Event] = []
    resubmit: list[tuple[int, Any]] = []
    outcomes = plan.outcomes if plan is not None else []
    for (index, item), (ok, value) in zip(samples, outcomes, strict=False):
        if ok:
            prefilled.append((True, index, [value]))
        elif retries > 0:
            resubmit.append((index, item))
        else:
            prefilled.append((False, index, value))
    return prefilled, resubmit, len(outcomes)


class _Skipping:
    """The whole input, from index 0, with indices already run (``skip``)."""

    offset = 0

    def __init__(self, seq: Sequence[Any], skip: frozenset[int]) -> None:
        self.seq = seq
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        return iter(self.seq)


class _Offset:
    """An iterator whose items start at input index ``offset``."""

    def __init__(self, it: Iterator[Any], offset: int) -> None:
        self.it = it
        self.offset = offset

    def __iter__(self) -> Iterator[Any]:
        return self.it


# -- Executor ----------------------------------------------------------------
class _StarCall:
    """fn(*args, **kwargs) as a one-argument callable (what backends run)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        args, kwargs = call
        return self.fn(*args, **kwargs)


class _StarArgs:
    """fn(*item), for Executor.map over several iterables."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: tuple[Any, ...]) -> Any:
        return self.fn(*args)


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` on any gilfree backend.

    Workers start once and are reused across ``submit`` and ``map`` calls.
    With ``backend="auto"`` the first call of each function is probed and the
    plan remembered for later calls of the same function.
    """

    def __init__(self, backend: str = "auto", workers: int | None = None, **options: Any) -> None:
        self._options = make_options(backend=backend, workers=workers, **options)
        self._lock = threading.Lock()
        self._backends: dict[tuple[str, int | None], Backend] = {}
        self._plans: dict[Any, Options] = {}
        self._pending: set[FutureJob] = set()
        self._shutdown = False
        if self._options.backend != "auto":
            # Start workers now: while the caller may still have one thread, a
            # process pool can fork them (see gilfree/pool/_procs.py).
            self._backend(self._options)

    # which backend runs fn
    def _route(self, fn: Any, key: Any, samples: list[Any]) -> tuple[Options, Any]:
        """Options for running fn, and the plan if one was just made (its outcomes count)."""
        opts = self._options
        if opts.backend != "auto":
            return opts, None
        with self._lock:
            known = self._plans.get(key)
        if known is not None:
            return known, None
        from .planner import advise

        plan = advise(
            fn, samples, budget=AUTO_BUDGET, address=dask_address(opts), workers=opts.workers
        )
        chosen = _apply_plan(opts, plan)
        with self._lock:
            self._plans[key] = chosen
        return chosen, plan

    def _backend(self, opts: Options) -> Backend:
        key = (opts.backend, opts.workers)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            backend = self._backends.get(key)
            if backend is None:
                backend = self._backends[key] = create(opts.backend, opts)
            return backend

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        _check_callable(fn)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: concurrent.futures.Future = concurrent.futures.Future()
        call = _StarCall(fn)
        opts, plan = self._route(call, _plan_key(fn), [(args, kwargs)])
        if plan is not None and plan.outcomes:  # the probe already ran this call
            ok, value = plan.outcomes[0]
            future.set_running_or_notify_cancel()
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
            return future
        backend = self._backend(opts)
        job = FutureJob(call, opts, future)
        with self._lock:
            self._pending.add(job)
        future.add_done_callback(lambda _f, job=job: self._forget(job))
        backend.submit(job, 0, [(args, kwargs)])
        return future

    def _forget(self, job: FutureJob) -> None:
        with self._lock:
            self._pending.discard(job)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
    ) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``, chunked and with a bounded window.

        Work starts before the first result is asked for, but only a bounded
        window of items is read ahead, so an endless input is fine.
        """
        _check_callable(fn)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        call = _StarArgs(fn)
        items: Iterable[Any] = zip(*iterables, strict=False)
        total = (
            min((length_hint(i) for i in iterables), default=None)
            if all(length_hint(i) is not None for i in iterables)
            else None
        )
        it = iter(items)
        samples = list(itertools.islice(it, AUTO_SAMPLES))
        opts, plan = self._route(call, _plan_key(fn), samples)
        if chunksize is not None:
            opts = opts.with_(chunksize=chunksize)
        prefilled, resubmit, rest = _reuse_probe(plan, samples, it, opts.retries)
        backend = self._backend(opts)
        job = StreamJob(call, opts.with_(ordered=ordered))
        run = Run(
            backend,
            job,
            rest,
            ordered=ordered,
            total=total,
            prefilled=prefilled,
            resubmit=resubmit,
        )
        if timeout is not None:
            run.deadline = time.monotonic() + timeout
        run.start()  # submit the first window now, as concurrent.futures does
        return _executor_results(run, opts.errors)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._close(wait=wait, cancel_futures=cancel_futures, kill=False)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Ctrl-C or SystemExit: do not wait for running work.
            self._close(wait=False, cancel_futures=True, kill=True)
        else:
            self._close(wait=True, cancel_futures=False, kill=False)
        return False

    def _close(self, *, wait: bool, cancel_futures: bool, kill: bool) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
            backends = list(self._backends.values())
        if cancel_futures:
            for job in pending:
                job.future.cancel()
        for backend in backends:
            backend.shutdown(wait=wait, kill=kill)

    def statistics(self) -> list[dict[str, Any]]:
        with self._lock:
            return [b.statistics() for b in self._backends.values()]


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


def _executor_results(run: Run, errors: str) -> Iterator[Any]:
    try:
        yield from _values(run.events(), errors)
    finally:
        if not run.finished:
            run.abort()

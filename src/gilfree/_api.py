"""map / imap / Executor: options -> plan -> backend -> engine."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import os
import pickle
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeVar

from ._engine import Event, Run, Skipping, length_hint
from ._options import Options, check_applicable, make_options, option_docs, usable_cpus
from ._progress import Bar
from .backends import Backend, FutureJob, Job, StreamJob, create
from .errors import ConfigurationError

__all__ = ["Executor", "imap", "imap_indexed", "map"]

#: How many items `backend="auto"` hands the planner as samples (spread over an
#: indexable input); the planner runs only as many as its budget needs -- a 10 ms
#: call ~6, a 100 ns call all of them, which it needs to time it reliably -- and
#: their results are kept.
AUTO_SAMPLES = 64


# -- public functions --------------------------------------------------------
BackendName = Literal["auto", "serial", "thread", "process", "dask"]
ErrorPolicy = Literal["raise", "return"]
StartMethod = Literal["fork", "zygote", "spawn"]
F = TypeVar("F", bound=Callable[..., Any])


def _options_doc(*exclude: str) -> Callable[[F], F]:
    """Append every option's type, default and meaning (from ``Options``) to a docstring."""

    def decorate(func: F) -> F:
        rows = [row for row in option_docs() if row[0] not in exclude]
        width = max(len(name) for name, *_ in rows)
        lines = ["", "    Options (keyword-only):", ""]
        for name, kind, default, doc in rows:
            lines.append(f"        {name:<{width}}  {kind} = {default}")
            lines += textwrap.wrap(doc, 76, initial_indent=" " * 12, subsequent_indent=" " * 12)
        func.__doc__ = (func.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
        return func

    return decorate


def _given(values: dict[str, Any], *drop: str) -> dict[str, Any]:
    """The option arguments of a public function (its ``locals()`` on entry)."""
    return {k: v for k, v in values.items() if k not in drop}


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
    slots: dict[int, list[Any]] = {}
    with _session(fn, iterable, opts, ordered=False) as run:
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


def _values(events: Iterator[Event], errors: str) -> Iterator[Any]:
    """Results one by one; a failure raised or yielded as ``errors`` says."""
    for ok, _start, payload in events:
        if not ok:
            if errors == "raise":
                raise _stopped_here(payload)
            yield payload
            continue
        # Hand each value over without keeping it here (nor in the event):
        # once the caller drops a result, it is gone (concurrent.futures too).
        payload.reverse()
        while payload:
            yield payload.pop()


def _stopped_here(exc: BaseException) -> BaseException:
    """Say what errors="raise" did with the rest of the job (a message written
    where the failure happened cannot know)."""
    exc.add_note(
        "gilfree: errors='raise' stopped the job at this failure; its unfinished "
        "tasks were cancelled (errors='return' keeps going and returns each failure "
        "in its slot)."
    )
    return exc


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
@contextlib.contextmanager
def _session(
    fn: Callable[[Any], Any], iterable: Iterable[Any], opts: Options, *, ordered: bool
) -> Iterator[Run]:
    _check_callable(fn)
    total = length_hint(iterable)
    if opts.backend != "auto":
        check_applicable(opts, opts.backend)
    opts, iterable, prefilled, resubmit, plan, backend = _resolve_auto(fn, iterable, opts, total)
    if plan is not None:
        check_applicable(opts, opts.backend, chosen_by_auto=True)
    job = StreamJob(fn, opts)
    bar = None
    finished = False
    try:
        if backend is None:
            backend = create(opts.backend, opts)
        _seed_timing(job, plan)
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
            if backend is None:
                pass
            elif finished:
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
) -> tuple[Options, Iterable[Any], list[Event], list[tuple[int, Any]], Any, Backend | None]:
    """For backend="auto": probe some items on workers, keep their results, pick a backend.

    Returns the options to run with, the input still to run, the probe's
    outcomes as events, items to run again, the plan (or None), and the
    backend that ran the probe when the job is to go on running there.
    """
    if opts.backend != "auto":
        return opts, iterable, [], [], None, None
    from . import _auto
    from .planner import sample_indices

    # An indexable input is probed on items spread over all of it (first, last,
    # middle, quarters...): cheap leading items must not hide the expensive
    # ones further on. Probed items are skipped when the rest runs.
    if isinstance(iterable, Sequence) and total is not None and total > AUTO_SAMPLES:
        indices = sample_indices(total, AUTO_SAMPLES)
        samples = [iterable[i] for i in indices]
        rest: Iterable[Any] = iterable
    else:
        it = iter(iterable)
        samples, it = _leading(it)
        if not samples:
            return opts.with_(backend="serial"), it, [], [], None, None
        indices = list(range(len(samples)))
        rest = itertools.chain(samples, it)
    plan, backend = _auto.plan(fn, samples, opts, total=total, address=dask_address(opts))
    prefilled, resubmit, ran = _probe_events(plan, indices, samples, opts.retries)
    return _apply_plan(opts, plan), Skipping(rest, ran), prefilled, resubmit, plan, backend


def _leading(it: Iterator[Any]) -> tuple[list[Any], Iterator[Any]]:
    """The first AUTO_SAMPLES items, and the input after them. An input that
    raises meanwhile raises again after those items, where a plain loop would."""
    samples: list[Any] = []
    try:
        samples.extend(itertools.islice(it, AUTO_SAMPLES))
    except Exception as exc:
        return samples, _raising(exc)
    return samples, it


def _raising(exc: Exception) -> Iterator[Any]:
    raise exc
    yield  # a generator


def _seed_timing(job: Job, plan: Any) -> None:
    """Start the chunker from the probe's timing instead of from one-item chunks."""
    profile = getattr(plan, "profile", None)
    if profile is not None and profile.calls and profile.task_seconds:
        job.record(profile.calls, profile.calls * profile.task_seconds)


def _apply_plan(opts: Options, plan: Any) -> Options:
    """The plan decides what the caller left open. The chunk size stays
    adaptive: the engine starts at the plan's (seeded from the probe) and
    follows the time the workers measure."""
    return opts.with_(backend=plan.backend, workers=opts.workers or plan.workers)


def _probe_events(
    plan: Any, indices: Sequence[int], samples: Sequence[Any], retries: int
) -> tuple[list[Event], list[tuple[int, Any]], frozenset[int]]:
    """The probe's calls were real: their outcomes become the first events.

    ``plan.outcomes[k]`` is the outcome of ``samples[k]``, input index
    ``indices[k]``. A failed one is run again by the backend when retries are
    allowed (the probe was its first attempt). Returns the events, the items
    to run again, and the input indices the probe settled or hands back.
    """
    prefilled: list[Event] = []
    resubmit: list[tuple[int, Any]] = []
    for k, (ok, value) in sorted(plan.outcomes.items()):
        index = indices[k]
        if ok:
            prefilled.append((True, index, [value]))
        elif retries > 0:
            resubmit.append((index, samples[k]))
        else:
            prefilled.append((False, index, value))
    return prefilled, resubmit, frozenset(indices[k] for k in plan.outcomes)


# -- Executor ----------------------------------------------------------------
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


@_options_doc("ordered")
class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` on any gilfree backend.

    Workers start once and are reused across ``submit`` and ``map`` calls.
    With ``backend="auto"`` the first call of each function is probed on a
    process worker (in a planning thread, so ``submit`` returns at once) and
    the plan is remembered for later calls of the same function; calls that
    arrive while it is being made wait for it. ``max_workers`` is the stdlib's
    name for ``workers``; ``initializer(*initargs)`` runs once in each worker
    before its first task.
    """

    def __init__(
        self,
        backend: BackendName = "auto",
        workers: int | None = None,
        *,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
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
    ) -> None:
        options = _given(locals(), "self", "backend", "workers", "max_workers")
        if max_workers is not None:
            if (
                isinstance(max_workers, int)
                and not isinstance(max_workers, bool)
                and (max_workers <= 0)
            ):
                raise ConfigurationError(
                    f"max_workers={max_workers!r}: max_workers must be greater than 0"
                )
            if workers is not None and workers != max_workers:
                raise ConfigurationError(
                    f"workers={workers!r} and max_workers={max_workers!r} disagree; "
                    "give one of them"
                )
            workers = max_workers
        self._options = make_options(backend=backend, workers=workers, **options)
        if backend != "auto":
            check_applicable(self._options, backend)
        self._lock = threading.Lock()
        self._backends: dict[tuple[str, int | None], Backend] = {}
        self._plans: dict[Any, Options] = {}
        # key -> calls that arrived while that function's plan was being made
        self._planning: dict[Any, list[tuple[Any, Any, concurrent.futures.Future[Any]]]] = {}
        self._planners: set[threading.Thread] = set()
        # Futures not finished yet, for shutdown(cancel_futures=True); weak, so
        # a finished task's future (and so its function, arguments and result)
        # is never kept here.
        self._pending: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()
        self._shutdown = False
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        # Dropped without shutdown(), or still open at exit: the workers stop
        # once their queued work is done, as concurrent.futures' do. Neither
        # hook holds the Executor itself.
        self._finalizer = weakref.finalize(self, _release, self._backends, self._lock)
        _live.add(self)
        _register_exit_hook()
        # Start workers now: while the caller may still have one thread, a
        # process pool can fork them (see gilfree/pool/_procs.py). With "auto"
        # that is the pool plans are probed on.
        first = self._options
        if first.backend == "auto":
            first = first.with_(backend="process", workers=first.workers or usable_cpus())
        self._backend(first)

    # which backend runs fn
    def _backend(self, opts: Options) -> Backend:
        key = (opts.backend, opts.workers)
        with self._lock:
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            backend = self._backends.get(key)
            if backend is None:
                backend = self._backends[key] = create(opts.backend, opts)
            return backend

    def _probe_pool(self, fn: Any) -> Backend | None:
        """The Executor's process pool, when ``fn`` can be probed there."""
        from . import _auto

        name, opts = _auto.probe_backend(fn, self._options, None)
        return self._backend(opts) if name == "process" else None

    def _make_plan(self, fn: Any, samples: list[Any]) -> tuple[Options, Any]:
        from . import _auto

        plan, _ = _auto.plan(
            fn,
            samples,
            self._options,
            total=None,
            address=dask_address(self._options),
            backend=self._probe_pool(fn),
        )
        chosen = _apply_plan(self._options, plan)
        if chosen.backend == "serial":
            # submit must not block, and one probed call says little about the
            # next ones: calls too quick for threads to gain on stay in the
            # worker processes, where a crash fails only its own future (a
            # function that cannot be pickled gets one thread instead).
            pool = self._probe_pool(fn)
            chosen = (
                chosen.with_(backend="process", workers=pool.workers)
                if pool is not None
                else chosen.with_(backend="thread", workers=1)
            )
        return chosen, plan

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return its ``concurrent.futures.Future`` at once.

        The future holds the result, or the task's exception with the worker's
        traceback as ``__cause__`` (``WorkerDied``, ``TaskTimeout``,
        ``SerializationError`` for what gilfree itself caught). Never blocks:
        with ``backend="auto"`` the first call of a function is its probe, run
        on a worker while a planning thread decides.
        """
        _check_callable(fn)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future[Any]()
        call = _StarCall(fn)
        item = (args, kwargs)
        if self._options.backend != "auto":
            self._dispatch(self._options, call, item, future)
            return future
        key = _plan_key(fn)
        with self._lock:
            known = self._plans.get(key)
        # A call that waits for its function's plan runs later: it gets its
        # arguments as they are now (a call with a plan is sent at once).
        deferred = (call, item if known is not None else _snapshot(item), future)
        with self._lock:
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            known = self._plans.get(key)
            waiting = self._planning.get(key)
            if known is None and waiting is not None:
                waiting.append(deferred)
                return future
            if known is None:
                self._planning[key] = []
                planner = threading.Thread(
                    target=self._plan_then_run,
                    args=(key, *deferred),
                    name="gilfree-planner",
                    daemon=True,
                )
                self._planners.add(planner)
        if known is not None:
            self._dispatch(known, call, item, future)
            return future
        future.set_running_or_notify_cancel()  # its call runs as the probe
        planner.start()
        return future

    def _plan_then_run(
        self, key: Any, call: Any, item: Any, future: concurrent.futures.Future[Any]
    ) -> None:
        """In a planning thread: probe ``call(item)``, settle ``future`` with
        its outcome, remember the plan, and run the calls that waited for it."""
        try:
            chosen, plan = self._make_plan(call, [item])
        except BaseException as exc:
            with self._lock:
                waiting = self._planning.pop(key, [])
                self._planners.discard(threading.current_thread())
            future.set_exception(exc)
            for _call, _item, fut in waiting:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        outcome = plan.outcomes.get(0)
        if outcome is None or (not outcome[0] and chosen.retries > 0):
            with contextlib.suppress(Exception):  # the future holds the error
                self._dispatch(chosen, call, item, future, started=True)
        elif outcome[0]:
            future.set_result(outcome[1])
        else:
            future.set_exception(outcome[1])
        with self._lock:
            self._plans[key] = chosen
            waiting = self._planning.pop(key, [])
            self._planners.discard(threading.current_thread())
        for w_call, w_item, fut in waiting:
            with contextlib.suppress(Exception):  # each future holds its own error
                self._dispatch(chosen, w_call, w_item, fut)

    def _dispatch(
        self,
        opts: Options,
        call: Any,
        item: Any,
        future: concurrent.futures.Future[Any],
        started: bool = False,
    ) -> None:
        """Run ``call(item)`` on the backend ``opts`` names, settling ``future``."""
        try:
            backend = self._backend(opts)
        except BaseException as exc:
            if started or future.set_running_or_notify_cancel():
                future.set_exception(exc)
            raise
        job = FutureJob(call, opts, future)
        with self._lock:
            self._pending.add(future)
        # Weak: a future the caller keeps must not keep its task's function,
        # arguments or backend alive once it is done.
        future.add_done_callback(
            functools.partial(_withdraw_if_cancelled, weakref.ref(backend), weakref.ref(job))
        )
        try:
            backend.submit(job, 0, [item])
        except BaseException as exc:  # PoolBroken, or shut down meanwhile
            if started or future.set_running_or_notify_cancel():
                future.set_exception(exc)
            raise

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
        window of items is read ahead, so an endless input is fine. With
        ``backend="auto"`` a function not planned yet is probed first, on
        workers, in the calling thread.
        """
        _check_callable(fn)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        call = _StarArgs(fn)
        items: Iterable[Any] = zip(*iterables, strict=False)
        lengths = [length_hint(i) for i in iterables]
        sizes = [n for n in lengths if n is not None]
        total = min(sizes, default=None) if len(sizes) == len(lengths) else None
        it = iter(items)
        opts = self._options
        prefilled: list[Event] = []
        resubmit: list[tuple[int, Any]] = []
        rest: Iterable[Any] = it
        if opts.backend == "auto":
            key = _plan_key(fn)
            with self._lock:
                known = self._plans.get(key)
            if known is not None:
                opts = known
            else:
                samples, it = _leading(it)
                opts, plan = self._make_plan(call, samples)
                with self._lock:
                    self._plans.setdefault(key, opts)
                prefilled, resubmit, ran = _probe_events(
                    plan, range(len(samples)), samples, opts.retries
                )
                rest = Skipping(itertools.chain(samples, it), ran)
        if chunksize is not None:
            opts = opts.with_(chunksize=chunksize)
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
        """Stop accepting work and release the workers, as ``concurrent.futures`` does.

        ``wait=True`` returns once every submitted task has finished;
        ``cancel_futures=True`` first cancels the tasks no worker has started.
        Leaving a ``with`` block calls ``shutdown()``; leaving it by Ctrl-C stops
        running tasks at once.
        """
        self._close(wait=wait, cancel_futures=cancel_futures, kill=False)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Ctrl-C or SystemExit: do not wait for running work.
            self._close(wait=False, cancel_futures=True, kill=True)
        else:
            self._close(wait=True, cancel_futures=False, kill=False)
        return False

    def _close(self, *, wait: bool, cancel_futures: bool, kill: bool) -> None:
        with self._lock:
            self._shutdown = True
            pending = [f for f in self._pending if not f.done()]
            planners = list(self._planners)
            waiting = [fut for calls in self._planning.values() for _c, _i, fut in calls]
            backends = list(self._backends.values())
        if cancel_futures:
            # Calls waiting for a plan never reached a backend: cancel them here.
            # Queued calls are cancelled by their backend, which alone knows
            # which it already handed to a worker (those run, as in
            # concurrent.futures); cancelling them from this thread raced the
            # workers and could cancel all of them. A backend that cannot do
            # that gets the old way.
            fallback = pending if not all(b.cancels_pending for b in backends) else []
            for fut in waiting + fallback:
                fut.cancel()
        if not kill:
            # A plan being made still runs the calls that waited for it.
            for planner in planners:
                planner.join()
        with self._lock:
            backends = list(self._backends.values())
        for backend in backends:
            if cancel_futures and backend.cancels_pending:
                backend.shutdown(wait=wait, kill=kill, cancel_pending=True)  # type: ignore[call-arg]
            else:
                backend.shutdown(wait=wait, kill=kill)
            if not wait and not kill:
                _draining.add(backend)
        self._finalizer.detach()

    def statistics(self) -> list[dict[str, Any]]:
        with self._lock:
            return [b.statistics() for b in self._backends.values()]


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


def _withdraw_if_cancelled(
    backend: weakref.ref[Backend],
    job: weakref.ref[FutureJob],
    future: concurrent.futures.Future[Any],
) -> None:
    """A future cancelled while queued frees its shared memory at once."""
    if future.cancelled():
        b, j = backend(), job()
        if b is not None and j is not None:
            b.withdraw(j)


def _release(backends: dict[Any, Backend], lock: threading.Lock) -> None:
    """An Executor no one holds: its workers finish queued work, then stop."""
    with lock:
        found = list(backends.values())
    for backend in found:
        try:
            backend.shutdown(wait=False)
            _draining.add(backend)
        except Exception:  # a finalizer must not raise
            pass


#: Executors still open, and backends shut down without waiting, for the exit
#: hook (weak: it keeps none alive; a backend still working is kept by its threads).
_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_draining: weakref.WeakSet[Backend] = weakref.WeakSet()
_exiting = False
_hook_registered = False
_hook_pid = 0


def _register_exit_hook() -> None:
    """Once per process, before threads are stopped at interpreter exit: no new
    work, and work already submitted finishes (what concurrent.futures does).
    Threads abandoned after a timeout are not waited for."""
    global _hook_registered, _hook_pid
    if _hook_registered:
        return
    _hook_registered = True
    _hook_pid = os.getpid()
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_at_exit)
    else:  # pragma: no cover - CPython has had it since 3.9
        import atexit

        atexit.register(_at_exit)


def _at_exit() -> None:
    global _exiting
    if os.getpid() != _hook_pid:
        return  # a forked child (a worker): these executors are the parent's
    _exiting = True
    for ex in list(_live):
        try:
            ex.shutdown(wait=True)
        except Exception:
            pass
    for backend in list(_draining):
        try:
            backend.shutdown(wait=True)
        except Exception:
            pass


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

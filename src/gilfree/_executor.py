"""``Executor``: a ``concurrent.futures.Executor`` on any gilfree backend.

With ``backend="auto"`` each function's first call is probed on the process
pool in a planning thread (``submit`` never blocks) and the plan is kept per
function; ``Executor.map`` plans in the calling thread. Shutting down at
interpreter exit and when dropped is in ``_lifetime``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from . import _lifetime
from ._calls import _Arguments, _plan_key, _snapshot, _StarArgs, _StarCall
from ._engine import Event, Rerun, Run, Skipping, length_hint
from ._lifetime import _draining, _live, _register_exit_hook, _release
from ._options import Options, check_applicable, make_options, usable_cpus
from ._session import (
    BackendName,
    ErrorPolicy,
    StartMethod,
    _apply_plan,
    _check_callable,
    _given,
    _leading,
    _options_doc,
    _probe_events,
    _values,
    dask_address,
)
from .backends import Backend, FutureJob, StreamJob, create
from .errors import ConfigurationError


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
        if _lifetime._exiting:
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
            if _lifetime._exiting:
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
        item = _Arguments((args, kwargs))
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
            if _lifetime._exiting:
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
        # One iterable: fn(item) as it is, so that an item reads as itself in
        # messages (a WorkerDied said "input: (0,)" for item 0).
        call: Callable[..., Any] = fn if len(iterables) == 1 else _StarArgs(fn)
        items: Iterable[Any] = (
            iterables[0] if len(iterables) == 1 else zip(*iterables, strict=False)
        )
        lengths = [length_hint(i) for i in iterables]
        sizes = [n for n in lengths if n is not None]
        total = min(sizes, default=None) if len(sizes) == len(lengths) else None
        it = iter(items)
        opts = self._options
        prefilled: list[Event] = []
        resubmit: list[Rerun] = []
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


def _executor_results(run: Run, errors: str) -> Iterator[Any]:
    try:
        yield from _values(run.events(), errors)
    finally:
        if not run.finished:
            run.abort()

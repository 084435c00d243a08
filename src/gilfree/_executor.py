"""``Executor``: a ``concurrent.futures.Executor`` on any gilfree backend.

With ``backend="auto"`` a function's first ``submit`` is probed on the
process pool in a planning thread (``submit`` never blocks), and ``map`` plans
in the calling thread as ``gilfree.map`` does; the plan is kept per function.
No pool starts until a plan or a ``submit`` needs one. Shutting down at
interpreter exit and when dropped is in ``_lifetime``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from . import _lifetime
from ._calls import (
    Known,
    _Arguments,
    _plan_key,
    _snapshot,
    _StarArgs,
    _StarCall,
    plan_known,
    withdraw_if_cancelled,
)
from ._engine import Event, Rerun, Run, Skipping, length_hint
from ._lifetime import _draining, _live, _register_exit_hook, _release
from ._map_results import MapResults
from ._options import Options, check_applicable, make_options, stdlib_workers
from ._session import (
    BackendName,
    ErrorPolicy,
    StartMethod,
    _check_callable,
    _given,
    _leading,
    _options_doc,
    _probe_events,
    probe_only,
    reap_probes,
)
from .backends import Backend, FutureJob, StreamJob, create
from .errors import as_submitted_call

#: The least time a probed call gets under ``Executor.map(timeout=)``: a timeout
#: of 0 (or less) is a deadline already past, but a probed call needs a bound.
MIN_PROBE_LIMIT_S = 0.001


@_options_doc("ordered")
class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` on any gilfree backend.

    Workers start once and are reused across ``submit`` and ``map`` calls.
    With ``backend="auto"`` the first call of each function is its probe (for
    ``submit`` on a process worker, in a planning thread, so ``submit``
    returns at once; ``map`` probes as ``gilfree.map`` does), and the plan is
    kept for later calls of that function (calls made meanwhile wait for it).
    A plan for a plain loop runs ``map`` in the caller's thread; submitted
    calls still go to a worker process. ``max_workers`` is the stdlib's name
    for ``workers``; ``initializer(*initargs)`` runs once in each worker first.
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
        workers = stdlib_workers(workers, max_workers)
        self._options = make_options(backend=backend, workers=workers, **options)
        if backend != "auto":
            check_applicable(self._options, backend)
        self._lock = threading.Lock()
        self._backends: dict[tuple[str, int | None], Backend] = {}
        self._plans: dict[Any, Known] = {}
        # key -> calls that arrived while that function's plan was being made
        self._planning: dict[Any, list[tuple[Any, Any, concurrent.futures.Future[Any]]]] = {}
        self._planners: set[threading.Thread] = set()
        # Futures not finished yet, for shutdown(cancel_futures=True); weak, so
        # a finished task's future (and so its function, arguments and result)
        # is never kept here.
        self._pending: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()
        # Maps whose results may still be read: shutdown drains those unread
        # (see _map_results). Weak: a map no one holds is nobody's to finish.
        self._maps: weakref.WeakSet[MapResults] = weakref.WeakSet()
        self._shutdown = False
        self._killed = False  # shut down by Ctrl-C or the exit hook: nothing more runs
        if _lifetime._exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        # Dropped without shutdown(), or still open at exit: the workers stop
        # once their queued work is done, as concurrent.futures' do. Neither
        # hook holds the Executor itself.
        self._finalizer = weakref.finalize(self, _release, self._backends, self._lock)
        _live.add(self)
        _register_exit_hook()
        # Start workers now, while the caller may still have one thread to fork
        # them from (gilfree/pool/_procs.py). On "auto" the first call decides:
        # map probes as gilfree.map does, submit makes its probe pool here.
        if self._options.backend != "auto":
            self._backend(self._options)

    # which backend runs fn
    def _backend(self, opts: Options, *, accepted: bool = False) -> Backend:
        """The backend ``opts`` names, made on first use. ``accepted``: for
        calls submitted before shutdown (they waited for their plan), which
        run as concurrent.futures runs queued work; only a kill refuses them."""
        key = (opts.backend, opts.workers)
        with self._lock:
            if self._killed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not accepted and _lifetime._exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if not accepted and self._shutdown:
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

    def _made_pool(self) -> Backend | None:
        """A process pool this Executor made already, if any."""
        with self._lock:
            return next((b for b in self._backends.values() if b.name == "process"), None)

    def _make_plan(
        self, fn: Any, samples: list[Any], backend: Backend | None, limit: float | None = None
    ) -> tuple[Known, Any]:
        """Probe ``fn`` on ``backend`` (or where gilfree.map would; each call
        within ``limit`` s) and plan; a pool the probe made and the plan keeps
        becomes this Executor's. Calls probed after an initializer run on its pool."""
        if backend is None and self._options.initializer is not None:
            backend = self._probe_pool(fn)
        known, plan, kept = plan_known(fn, samples, self._options, backend, limit)
        if kept is not None and kept is not backend:
            self._adopt(kept)
        return known, plan

    def _adopt(self, backend: Backend) -> None:
        """Keep a pool the probe made (shut it down if one of its shape is here already)."""
        key = (backend.name, backend.workers)
        with self._lock:
            spare = self._shutdown or key in self._backends
            if not spare:
                self._backends[key] = backend
        if spare:
            backend.shutdown(wait=False)

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
                pool: list[Backend | None] = []  # filled below, before the planner starts
                planner = threading.Thread(
                    target=self._plan_then_run,
                    args=(key, *deferred, pool),
                    name="gilfree-planner",
                    daemon=True,
                )
                self._planners.add(planner)
        if known is not None:
            self._dispatch(known.submit, call, item, future)
            return future
        try:
            # The pool the planner probes on, made here: in the caller's
            # thread it can fork its workers directly (gilfree/pool/_procs.py).
            pool.append(self._probe_pool(call))
        except BaseException as exc:  # shut down meanwhile, or no pool could start
            with self._lock:
                waiting = self._planning.pop(key, [])
                self._planners.discard(planner)
            for _call, _item, fut in waiting:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(exc)
            raise
        future.set_running_or_notify_cancel()  # its call runs as the probe
        planner.start()
        return future

    def _plan_then_run(
        self,
        key: Any,
        call: Any,
        item: Any,
        future: concurrent.futures.Future[Any],
        pool: list[Backend | None],
    ) -> None:
        """In a planning thread: probe ``call(item)`` on ``pool[0]`` (submit made
        it), settle ``future``, keep the plan, run the calls that waited for it."""
        try:
            known, plan = self._make_plan(call, [item], pool[0])
            chosen = known.submit
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
                self._dispatch(chosen, call, item, future, started=True, accepted=True)
        elif outcome[0]:
            future.set_result(outcome[1])
        else:
            future.set_exception(as_submitted_call(outcome[1]))
        with self._lock:
            self._plans[key] = known
            waiting = self._planning.pop(key, [])
        for w_call, w_item, fut in waiting:
            with contextlib.suppress(Exception):  # each future holds its own error
                self._dispatch(chosen, w_call, w_item, fut, accepted=True)
        with self._lock:  # only now: shutdown joins the planners it finds, then closes
            self._planners.discard(threading.current_thread())

    def _dispatch(
        self,
        opts: Options,
        call: Any,
        item: Any,
        future: concurrent.futures.Future[Any],
        started: bool = False,
        accepted: bool = False,
    ) -> None:
        """Run ``call(item)`` on the backend ``opts`` names, settling ``future``
        (``accepted``: submitted before shutdown, see ``_backend``)."""
        try:
            backend = self._backend(opts, accepted=accepted)
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
            functools.partial(withdraw_if_cancelled, weakref.ref(backend), weakref.ref(job))
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

        Work starts at once, but only a bounded window of items is read ahead
        (an endless input is fine) until ``shutdown`` runs the rest of a map no
        one has started reading. With ``backend="auto"`` a function not planned
        yet is probed first (as by ``gilfree.map``), in the calling thread,
        each probed call bounded by ``timeout``.
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
        end = time.monotonic() + (timeout or 0.0)  # as concurrent.futures: from the call
        opts = self._options
        prefilled: list[Event] = []
        resubmit: list[Rerun] = []
        rest: Iterable[Any] = it
        if opts.backend == "auto":
            key = _plan_key(fn)
            with self._lock:
                known = self._plans.get(key)
            if known is not None:
                opts = known.map
            else:
                samples, it = _leading(it)
                # The map's timeout bounds each probed call: a sample past it
                # is run again by the backend (reading it raises TimeoutError).
                tighter = timeout is not None and (opts.timeout or math.inf) > timeout
                limit = max(timeout, MIN_PROBE_LIMIT_S) if tighter and timeout is not None else None
                made, plan = self._make_plan(call, samples, self._made_pool(), limit)
                opts = made.map
                unsettled = probe_only(plan, limit)
                if not any(not ok and unsettled(v) for ok, v in plan.outcomes.values()):
                    with self._lock:  # not a plan made from calls the deadline cut
                        self._plans.setdefault(key, made)
                prefilled, resubmit, ran = _probe_events(
                    plan, range(len(samples)), samples, opts.retries, unsettled
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
            run.deadline = end
        run.start()  # submit the first window now, as concurrent.futures does
        results = MapResults(run, opts.errors)
        with self._lock:
            self._maps.add(results)
        return results

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work and release the workers, as ``concurrent.futures`` does.

        ``wait=True`` returns once every submitted task has finished and every
        ``map`` no one has started reading has run to its end (its results
        stay readable, as with ``concurrent.futures``; one being read hands on
        what ran, then says what did not). ``cancel_futures=True`` first cancels
        the submitted tasks no worker has started, not a map's. Leaving a
        ``with`` block calls ``shutdown()``; Ctrl-C stops running tasks.
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
            self._killed = self._killed or kill
            pending = [f for f in self._pending if not f.done()]
            planners = list(self._planners)
            waiting = [fut for calls in self._planning.values() for _c, _i, fut in calls]
            backends = list(self._backends.values())
        if cancel_futures:
            # Calls waiting for a plan never reached a backend: cancelled here.
            # Queued calls are cancelled by their backend, which alone knows which
            # it handed to a worker (those run, as in concurrent.futures); from
            # here that raced the workers. A backend that cannot gets the old way.
            fallback = pending if not all(b.cancels_pending for b in backends) else []
            for fut in waiting + fallback:
                fut.cancel()
            for backend in backends:  # now: draining a map may take long
                backend.cancel_pending()
        with self._lock:  # a map is not a future: cancel_futures drains it too
            maps = [] if kill else [m for m in self._maps if m.at_shutdown()]
        if (maps or planners) and not wait and not kill:  # goes on behind the caller
            threading.Thread(
                target=self._drain_then_close,
                args=(maps, cancel_futures, planners),
                name="gilfree-drain",
                daemon=True,
            ).start()
            return
        self._drain_then_close(maps, cancel_futures, planners, wait, kill)

    def _drain_then_close(
        self,
        maps: list[MapResults],
        cancel: bool,
        planners: list[threading.Thread],
        wait: bool = False,
        kill: bool = False,
    ) -> None:
        """Let a plan being made run the calls that waited for it (a kill does not
        wait), run the maps no one has started reading to their end, then close."""
        for planner in [] if kill else planners:
            planner.join()
        for results in maps:
            results.drain()
        reap_probes()
        with self._lock:
            backends = list(self._backends.values())
        for backend in backends:
            if cancel and backend.cancels_pending:
                backend.shutdown(wait=wait, kill=kill, cancel_pending=True)  # type: ignore[call-arg]
            else:
                backend.shutdown(wait=wait, kill=kill)
            if not wait and not kill:
                _draining.add(backend)
        self._finalizer.detach()

    def statistics(self) -> list[dict[str, Any]]:
        with self._lock:
            return [b.statistics() for b in self._backends.values()]

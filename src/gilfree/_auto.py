"""backend="auto": probe a function on pool workers, plan, and hand the workers on.

The planner (``gilfree.planner``) decides; this module runs its probe where a
call that crashes, hangs or raises costs the caller nothing -- on the process
pool the job will then use::

    samples ─┬─ first half:  Timed(fn), one pool task per call, in chunks of
             │               1, 1, 2, 4, ... items                       ──► worker A
             └─ second half: PairProbe(fn), one task running two threads  ──► worker B
    measurements + outcomes ──► planner.advise(probe=...) ──► Plan
    Plan.backend == "process": the same pool runs the rest of the job.

Every serial-phase call is an ordinary task of ``backend="process"``: a crash is
``WorkerDied`` for that item, ``timeout=`` gives ``TaskTimeout`` on time, and
``retries=`` apply (the engine runs a failed probe call again). The two-thread
phase is one task for several items, so a crash or hang inside it cannot be
pinned on one item: its items then run again as ordinary tasks, where the
culprit fails alone -- a hung item there is stopped after at most
``timeout + PAIR_SHARE * budget`` and then ``timeout`` again. Both phases run at
once on two workers, and their results are kept, so planning costs a job little
more than the round trips it adds.

A function that cannot be pickled cannot reach a process; it is probed on the
thread backend instead, where ``timeout=`` still bounds each call (the plan
then says processes are out).
"""

from __future__ import annotations

import math
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _probe_fork, _serialize
from ._options import Options, usable_cpus
from .backends import Backend, StreamJob, create
from .errors import ConfigurationError, SerializationError, TaskTimeout, WorkerDied
from .planner import Plan
from .planner import _probe as probing
from .planner._advise import advise as _plan

#: Seconds the planner may spend probing before a map starts (its calls' results are kept).
AUTO_BUDGET = 0.5
#: gilfree.advise without timeout=: a sample may run this long, or this many
#: budgets, before it is stopped (a plan must come back; a map has no such bound).
ADVISE_TIMEOUT_S = 10.0
ADVISE_TIMEOUT_BUDGETS = 10
#: Seconds between health checks of the probing backend while waiting for outcomes.
HEALTH_CHECK_S = 1.0
#: The serial phase stops once this many calls failed and no fewer failed than
#: succeeded: each crash costs a worker, and failures say nothing about time.
MAX_PROBE_FAILURES = 2


class ProbeRunner:
    """Runs the planner's probe on a backend made on first use (or given)."""

    def __init__(self, opts: Options, total: int | None, backend: Backend | None = None) -> None:
        self.opts = opts
        self.total = total
        self.backend = backend
        self.owned = backend is None
        self.forked = False  # some probe calls ran in a bare forked child

    def backend_for(self, fn: Callable[[Any], Any]) -> Backend:
        if self.backend is None:
            small = looks_tiny(fn)
            self.backend = create(*probe_backend(fn, self.opts, self.total, small=small))
        return self.backend

    def __call__(
        self, fn: Callable[[Any], Any], samples: Sequence[Any], budget: float
    ) -> probing.ProbeResult:
        if (
            self.backend is None
            and _probe_fork.available(self.opts.start_method)
            and looks_tiny(fn)
        ):
            return self._fork_first(fn, samples, budget)
        return run_probe(self.backend_for(fn), self.opts, fn, samples, budget)

    def _fork_first(
        self, fn: Callable[[Any], Any], samples: Sequence[Any], budget: float
    ) -> probing.ProbeResult:
        """The serial phase in a bare forked child (no pool); the two-thread
        phase on the pool only when the calls turn out too long to skip it."""
        self.forked = True
        result, settled = _probe_fork.probe(fn, samples, budget, self.opts.timeout)
        t = result.task_seconds
        rest = len(samples) - settled
        # A fault stopped the child (a crash, a call past timeout=, or a stop
        # between calls), or the calls take long enough for two threads to be
        # worth timing: the rest of the samples are probed on the pool.
        last = result.outcomes.get(settled - 1, (True, None))
        faulted = result.pair_skipped is not None or (
            not last[0] and isinstance(last[1], WorkerDied | TaskTimeout)
        )
        if rest == 0 or not (faulted or t is None or t >= probing.PAIR_MIN_CALL_S):
            short = probing.format_seconds(probing.PAIR_MIN_CALL_S)
            result.pair_skipped = (
                f"its calls are shorter than {short}, too short for threads to gain "
                "anything on them"
                if t is not None and t < probing.PAIR_MIN_CALL_S
                else "there were no samples left for the two-thread measurement"
            )
            probing.measure_sizes(fn, samples, result)
            return result
        result.pair_skipped = None
        # On a pool worker, as usual: serial calls and two threads at once.
        more = run_probe(self.backend_for(fn), self.opts, fn, samples[settled:], budget)
        return _merged(result, more, settled)

    def close(self, *, kill: bool = False) -> None:
        if self.owned and self.backend is not None:
            self.backend.shutdown(wait=not kill, kill=kill)
            self.backend = None


def _merged(
    first: probing.ProbeResult, more: probing.ProbeResult, offset: int
) -> probing.ProbeResult:
    """``first`` (samples ``0..offset-1``) and ``more`` (the samples after) as one probe."""
    for k, outcome in more.outcomes.items():
        first.outcomes[offset + k] = outcome
    if not first.serial_calls:
        first.first_wall = more.first_wall
    for name in (
        "serial_calls",
        "serial_wall",
        "serial_cpu",
        "serial_process_cpu",
        "serial_runqueue",
        "failures",
        "crashes",
        "seconds",
    ):
        setattr(first, name, getattr(first, name) + getattr(more, name))
    for name in (
        "pair_calls",
        "pair_wall",
        "pair_cpu",
        "pair_windows",
        "overlap",
        "pair_skipped",
        "arg_bytes",
        "shm_bytes",
        "result_bytes",
        "fn_bytes",
        "unpicklable",
    ):
        setattr(first, name, getattr(more, name))
    return first


def probe_backend(
    fn: Callable[[Any], Any], opts: Options, total: int | None, *, small: bool = False
) -> tuple[str, Options]:
    """Where to probe ``fn``: the process pool the job would use, sized as it
    would be (one worker when ``small``); threads when ``fn`` cannot be pickled."""
    try:
        _serialize.dump_function(fn)
    except SerializationError:
        return "thread", opts.with_(backend="thread", workers=2)
    workers = 1 if small else opts.workers or usable_cpus()
    if total is not None:
        workers = max(1, min(workers, total))
    return "process", opts.with_(backend="process", workers=workers)


def looks_tiny(fn: Callable[[Any], Any]) -> bool:
    """Whether the bytecode shows no loop, I/O or C call that releases the GIL.

    Such a function (``x * x``) is most likely too quick for any pool, so it is
    probed on one worker: forking the others (~1.5 ms each) would cost a tiny
    job more than its work. If it is slow after all and the plan is processes,
    the pool for the job is made afresh (the probe's results are kept).
    """
    from .planner import _bytecode

    try:
        return not _bytecode.analyze(fn).findings
    except Exception:  # reading bytecode must never stop a job
        return False


def plan(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    opts: Options,
    *,
    total: int | None,
    address: str | None,
    backend: Backend | None = None,
    budget: float = AUTO_BUDGET,
) -> tuple[Plan, Backend | None]:
    """Probe ``fn`` on ``samples`` (on ``backend``, or on a pool made for it) and plan.

    Returns the plan and, when the plan is to run on processes, the pool that
    ran the probe, sized for the job (``None`` otherwise: a pool made here is
    then shut down). Ctrl-C or an error while probing stops the workers at once.
    """
    runner = ProbeRunner(opts, total, backend)
    try:
        result = _plan(
            fn,
            samples,
            budget=budget,
            total=total,
            address=address,
            workers=opts.workers,
            probe=runner,
            cluster=cluster_size,
        )
    except BaseException:
        runner.close(kill=True)
        raise
    isolate(
        result,
        runner.forked or (runner.backend is not None and runner.backend.name == "process"),
    )
    set_first_chunk(result, total)
    keep = runner.backend
    if (
        keep is not None
        and result.backend == "process"
        and keep.name == "process"
        and keep.workers == result.workers
    ):
        return result, keep
    runner.close()
    return result, None


def advise(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    *,
    budget: float = 1.0,
    total: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    timeout: float | None = None,
) -> Plan:
    """Measure ``fn`` on ``samples`` in worker processes and say how to run it, and why.

    Nothing runs in the calling process: a sample that crashes its worker, or
    runs past ``timeout`` seconds, is reported in the plan (``plan.outcomes``
    holds its ``WorkerDied`` or ``TaskTimeout``) and the caller goes on.
    Without ``timeout`` a sample may run ``max(10, 10 * budget)`` seconds, so
    that advise always returns.
    ``total`` is the number of items of the whole job when known; ``address``
    a Dask scheduler to consider; ``workers`` a count to plan for.
    """
    if budget <= 0:
        raise ValueError(f"budget={budget!r} must be a positive number of seconds")
    if not callable(fn):
        raise ConfigurationError(f"fn={fn!r} is not callable")
    samples = samples if isinstance(samples, Sequence) else list(samples)
    if timeout is None:
        timeout = max(ADVISE_TIMEOUT_S, ADVISE_TIMEOUT_BUDGETS * budget)
    opts = Options(workers=workers, timeout=timeout)
    result, backend = plan(
        fn,
        samples,
        opts,
        total=total,
        address=address,
        budget=budget,
    )
    if backend is not None:
        backend.shutdown(wait=False)
    return result


def isolate(result: Plan, probed_in_process: bool) -> None:
    """Say plainly when the remaining calls run in this process.

    (What crashed a worker never runs here: the policy keeps such a job on
    processes, see ``planner._model``.)"""
    ran = len(result.outcomes)
    where = {
        "serial": "run in this process, one after another",
        "thread": "run on threads in this process",
    }.get(result.backend)
    if where is None:
        return
    if not probed_in_process and result.profile.calls and ran:
        # The function cannot be pickled: the probe ran on threads here too.
        result.reasons.append(
            f"The calls {where}: the function cannot be sent to a worker process, so "
            f"the {ran} probe calls also ran here, on threads, where timeout= still "
            "bounds each one."
        )
        return
    result.reasons.append(
        f"The remaining calls {where}"
        + (
            f"; the {ran} probe calls ran in a worker process first, and none crashed it"
            if ran
            else ""
        )
        + ". To keep every call in a worker process, pass backend='process'."
    )


def set_first_chunk(result: Plan, total: int | None) -> None:
    """``Plan.chunksize``: the chunk size the engine starts with, from the probe's timing."""
    from . import _chunking
    from .backends import chunk_target

    t = result.profile.task_seconds
    if result.backend == "serial" or t is None:
        result.chunksize = (
            1 if t is None else _chunking.first_size(chunk_target("serial"), 1, total, t)
        )
        return
    target = chunk_target(result.backend)
    size = _chunking.first_size(target, result.workers, total, t)
    result.chunksize = size
    result.reasons.append(
        f"Chunks start at {size:,} item{'s' if size != 1 else ''} "
        f"({probing.format_seconds(size * t)} of work each at {probing.format_seconds(t)} "
        "per call) and adapt as the job runs, from the time the workers measure."
    )


# -- the probe on a backend ------------------------------------------------------------
def run_probe(
    backend: Backend,
    opts: Options,
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    budget: float,
) -> probing.ProbeResult:
    """The planner's probe (see ``planner._probe``) with every call on ``backend``."""
    result = probing.ProbeResult()
    started = time.perf_counter()
    n = len(samples)
    split = n - n // 2 if n >= probing.PAIR_RESERVE + 2 else n
    task_opts = opts.with_(retries=0, chunksize=None, progress=False)
    pair_job = None
    if split < n:
        pair_cap = probing.PAIR_SHARE * budget
        pair_job = StreamJob(
            probing.PairProbe(fn, pair_cap),
            task_opts.with_(timeout=None if opts.timeout is None else opts.timeout + pair_cap),
        )
        backend.submit(pair_job, 0, [list(samples[split:])])
    else:
        result.pair_skipped = "there were no samples left for the two-thread measurement"
    serial_job = StreamJob(_Timed(fn), task_opts)
    try:
        _serial_phase(backend, serial_job, samples, split, result, probing.SERIAL_SHARE * budget)
        if pair_job is not None:
            _merge_pair(result, _wait_for(backend, pair_job, 1), split)
    except BaseException:
        serial_job.cancelled = True
        if pair_job is not None:
            pair_job.cancelled = True
        raise
    probing.measure_sizes(fn, samples, result)
    result.failures = sum(1 for ok, _ in result.outcomes.values() if not ok)
    result.seconds = time.perf_counter() - started
    return result


class _Timed(probing.Timed):
    """``Timed``, whose call fails as the task's own would when its result cannot
    be pickled: the worker would otherwise name the wrapper (``Measured``)."""

    __slots__ = ()

    def __call__(self, item: Any) -> probing.Measured:
        measured = super().__call__(item)
        value = measured.value
        try:
            _pickles(value)
        except Exception as exc:
            raise SerializationError(
                f"result of type {type(value).__name__} ({_serialize.describe(value)}) "
                f"cannot be pickled back to the parent: {type(exc).__name__}: {exc}",
                what="result",
            ) from None
        return measured


def _pickles(value: Any) -> None:
    """Raise what pickling ``value`` for the trip home raises (its large buffers
    are not copied: they travel out of band and cannot fail)."""
    try:
        pickle.dumps(value, 5, buffer_callback=_out_of_band)
    except Exception:
        import cloudpickle

        cloudpickle.dumps(value, 5, buffer_callback=_out_of_band)


def _out_of_band(buffer: pickle.PickleBuffer) -> bool:
    return False


def _serial_phase(
    backend: Backend,
    job: StreamJob,
    samples: Sequence[Any],
    limit: int,
    result: probing.ProbeResult,
    cap: float,
) -> None:
    first, batch, failed = 0, 1, 0
    while first < limit:
        last = min(limit, first + batch)
        backend.submit(job, first, list(samples[first:last]))
        for ok, start, payload in _wait_for(backend, job, last - first):
            if ok:
                for k, measured in enumerate(payload):
                    probing.add_measured(result, start + k, measured)
            else:
                result.outcomes[start] = (False, payload)
                failed += 1
                result.crashes += isinstance(payload, WorkerDied)
        if probing.serial_done(result, cap):
            return
        if failed >= MAX_PROBE_FAILURES and failed >= result.serial_calls:
            return
        if first > 0:
            # 1, 1, then enough for the rest of the phase in one round trip
            # (at least double): the first call alone may be a warm-up, and
            # every round trip here is time the job waits.
            t = result.task_seconds
            batch *= 2
            if t:
                batch = max(batch, math.ceil((probing.STABLE_SERIAL_S - result.serial_wall) / t))
        first = last


def _wait_for(backend: Backend, job: StreamJob, count: int) -> list[tuple[bool, int, Any]]:
    """The next events of ``job`` until ``count`` items have an outcome."""
    events = []
    while count > 0:
        try:
            ev = job.outcomes.get(timeout=HEALTH_CHECK_S)
        except queue.Empty:
            backend.check()
            continue
        events.append(ev)
        count -= len(ev[2]) if ev[0] else 1
    return events


def _merge_pair(
    result: probing.ProbeResult, events: list[tuple[bool, int, Any]], offset: int
) -> None:
    ok, _index, payload = events[0]
    if not ok:
        # Several items ran in that one task: none can be blamed, so all of
        # them run again as ordinary tasks, where a culprit fails alone.
        result.pair_skipped = (
            f"the two-thread measurement stopped ({type(payload).__name__}); its samples "
            "run again as ordinary tasks"
        )
        result.crashes += isinstance(payload, WorkerDied)
        return
    pair: probing.ProbeResult = payload[0]
    for k, (done, value) in pair.outcomes.items():
        if not done:
            exc, tb = value
            value = _serialize.with_remote_traceback(exc, tb)
        result.outcomes[offset + k] = (done, value)
    result.pair_calls = pair.pair_calls
    result.pair_wall = pair.pair_wall
    result.pair_cpu = pair.pair_cpu
    result.pair_windows = pair.pair_windows
    result.overlap = pair.overlap
    result.pair_skipped = pair.pair_skipped


# -- the Dask cluster the planner may consider -----------------------------------------
_cluster_lock = threading.Lock()
_clusters: dict[str, tuple[int | None, int | None, str | None]] = {}


def cluster_size(address: str) -> tuple[int | None, int | None, str | None]:
    """``(threads, workers, error)`` of the Dask cluster at ``address``, asked once."""
    with _cluster_lock:
        if address in _clusters:
            return _clusters[address]
    try:
        from .backends._dask import connect
    except ImportError:
        found: tuple[int | None, int | None, str | None] = (
            None,
            None,
            "dask.distributed is not installed (pip install 'gilfree[dask]')",
        )
    else:
        try:
            with connect(address, timeout=5) as client:
                per_worker = client.nthreads()
            found = (
                (sum(per_worker.values()), len(per_worker), None)
                if per_worker
                else (None, None, "it has no workers")
            )
        except Exception as exc:  # connection refused, timeout, version mismatch
            found = (None, None, f"connecting failed ({type(exc).__name__}: {exc})")
    with _cluster_lock:
        _clusters[address] = found
    return found


def forget_clusters() -> None:
    """Ask clusters again next time (tests; after a cluster changed)."""
    with _cluster_lock:
        _clusters.clear()

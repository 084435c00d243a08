"""backend="auto": probe a function on pool workers, plan, and hand the workers on.

The planner (``gilfree.planner``) decides; this module runs its probe where a
call that crashes, hangs or raises costs the caller nothing -- on the process
pool the job will then use::

    samples ─┬─ first half:  Timed(fn), one pool task per call, in chunks of
             │               1, 1, 2, 4, ... items                       ──► worker A
             └─ second half: PairProbe(fn), one task running two threads  ──► worker B
    measurements + outcomes ──► planner.advise(probe=...) ──► Plan
    Plan.backend == "process": the same pool runs the rest of the job;
    Plan.backend == "thread": its calls run on threads inside that pool's
    workers (``backends._pooled_threads``), unless sending them costs too much.

With large arguments (sending every sample would cost more than a tenth of
the budget: a 2 MB object graph takes ~40 ms to pickle) the probe sends
only 1 call alone and 2 for the two threads, and the plan says so; see
``_probe_pool``.

Every serial-phase call is an ordinary task of ``backend="process"``: a crash is
``WorkerDied`` for that item, ``timeout=`` gives ``TaskTimeout`` on time, and
``retries=`` apply (the engine runs a failed probe call again). The two-thread
phase is one task for several items, so a crash or hang inside it cannot be
pinned on one item: its items then run again each as a task of its own
(``Plan.suspects``), where the culprit fails alone -- a hung item there is stopped after at most
``timeout + PAIR_SHARE * budget`` and then ``timeout`` again. Both phases run at
once on two workers, and their results are kept, so planning costs a job little
more than the round trips it adds.

A function that cannot be pickled cannot reach a process; it is probed on the
thread backend instead, where ``timeout=`` still bounds each call (the plan
then says processes are out).

A function whose bytecode looks tiny (``looks_tiny``), in a single-threaded
caller, is probed in one bare forked child instead (``_probe_fork``): for a
job of ~10 ms, making and joining a pool cost more than the job. A call there
that crashes or overruns is settled as on the pool, and the rest of the
samples then go to the pool; so do they when the calls turn out to be long.
Large arguments (``_probe_fork.looks_large``) are probed in such a child too,
both phases, since it inherits them where the pool would pickle each sample;
the caller meanwhile pickles the first one, for a bounded time, to price
processes.

A function that can only compute (``planner._inert``: arithmetic on its
argument, the samples small numbers) is probed here, in the caller
(``_probe_inline``): no call of it can crash or hang, and a fork of a caller
holding millions of items cost more than such a job. The plan says so.

The probe on a backend is ``_probe_pool.run_probe``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _probe_fork, _probe_inline, _serialize
from ._auto_reasons import isolate, set_first_chunk
from ._clusters import cluster_size
from ._options import Options, usable_cpus
from ._probe_pool import GIL_HELD, holds_the_gil, run_probe
from .backends import Backend, create
from .errors import ConfigurationError, SerializationError, reindexed
from .planner import Plan
from .planner import _probe as probing
from .planner._advise import advise as _plan
from .planner._inert import inert

if TYPE_CHECKING:  # imported when used: a tiny job never imports the pool
    from .backends._pooled_threads import PooledThreads

#: Seconds the planner may spend probing before a map starts (its calls' results are kept).
AUTO_BUDGET = 0.5
#: gilfree.advise without timeout=: a sample may run this long, or this many
#: budgets, before it is stopped (a plan must come back; a map has no such bound).
ADVISE_TIMEOUT_S = 10.0
ADVISE_TIMEOUT_BUDGETS = 10
#: An inert call (``planner._inert``) ends well within this; a ``timeout=``
#: shorter than it sends the probe to a process, where it can be enforced.
INERT_CALL_S = 0.01
#: Samples a reused plan pickles to size this job's arguments.
FRESH_SAMPLES = 3


class ProbeRunner:
    """Runs the planner's probe on a backend made on first use (or given)."""

    def __init__(self, opts: Options, total: int | None, backend: Backend | None = None) -> None:
        self.opts = opts
        self.total = total
        self.backend = backend
        self.owned = backend is None
        self.forked = False  # some probe calls ran in a bare forked child
        self.inline = False  # the probe's calls ran here: they can only compute

    def backend_for(self, fn: Callable[[Any], Any]) -> Backend:
        if self.backend is None:
            small = looks_tiny(fn)
            self.backend = create(*probe_backend(fn, self.opts, self.total, small=small))
        return self.backend

    def __call__(
        self, fn: Callable[[Any], Any], samples: Sequence[Any], budget: float
    ) -> probing.ProbeResult:
        if self.backend is None and self._runs_here(fn, samples):
            # Such calls take microseconds (a slower reading is the machine's
            # doing): nothing is left for a pool, and no two-thread phase.
            self.inline = True
            result = _probe_inline.probe(fn, samples, budget)
            result.pair_skipped = (
                "its calls are arithmetic on small numbers, too little work for threads "
                "to gain anything on them"
            )
            probing.measure_sizes(fn, samples, result)
            return result
        if self.backend is None and _probe_fork.available(self.opts.start_method):
            if looks_tiny(fn):
                return self._fork_first(fn, samples, budget)
            if _probe_fork.looks_large(samples):
                return self._fork_whole(fn, samples, budget)
        return run_probe(self.backend_for(fn), self.opts, fn, samples, budget)

    def _runs_here(self, fn: Callable[[Any], Any], samples: Sequence[Any]) -> bool:
        """Whether the probe's calls may run in this process: they can only compute
        (``planner._inert``), and no ``timeout=`` shorter than such a call asks for
        them to be stoppable."""
        timeout = self.opts.timeout
        return (timeout is None or timeout >= INERT_CALL_S) and inert(fn, samples)

    def _fork_first(
        self, fn: Callable[[Any], Any], samples: Sequence[Any], budget: float
    ) -> probing.ProbeResult:
        """The serial phase in a bare forked child (no pool); the two-thread
        phase on the pool only when the calls turn out too long to skip it."""
        self.forked = True
        result, settled, faulted = _probe_fork.probe(fn, samples, budget, self.opts.timeout)
        t = result.task_seconds
        rest = len(samples) - settled
        # A fault stopped the child (a crash, a call past timeout=, or a stop
        # between calls), or the calls take long enough for two threads to be
        # worth timing: the rest of the samples are probed on the pool.
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

    def _fork_whole(
        self, fn: Callable[[Any], Any], samples: Sequence[Any], budget: float
    ) -> probing.ProbeResult:
        """Large arguments: both phases in a bare forked child, which inherits
        the samples (the pool would pickle each one it sends). Meanwhile the
        first argument is pickled here, for up to ``PICKLE_MEANWHILE_S`` (then
        up to a call's time), to price processes."""
        self.forked = True
        held = holds_the_gil(fn)
        priced: list[tuple[float, int, list[int], bool] | None] = []

        def price() -> None:
            priced.append(_probe_fork.timed_pickle(samples[0], _probe_fork.PICKLE_MEANWHILE_S))

        result, settled, faulted = _probe_fork.probe(
            fn, samples, budget, self.opts.timeout, whole=True, pair=not held, meanwhile=price
        )
        if held:
            result.pair_skipped = GIL_HELD
        if faulted and settled < len(samples):
            # What stopped the child is settled; the rest go to the pool as usual.
            result.pair_skipped = None
            more = run_probe(self.backend_for(fn), self.opts, fn, samples[settled:], budget)
            return _merged(result, more, settled)
        known: dict[int, tuple[int, list[int]]] = {}
        timed = priced[0] if priced else None
        limit = max(result.task_seconds or 0.0, _probe_fork.PICKLE_FLOOR_S)
        if timed is not None and not timed[3] and timed[0] < limit:
            # Stopped before a call's time: processes might still win; go on to it.
            timed = _probe_fork.timed_pickle(samples[0], limit)
        if timed is not None:
            seconds, inband, oob, whole = timed
            result.arg_pickle_s, result.arg_pickle_partial = seconds, not whole
            known[0] = (inband, oob)
        probing.measure_sizes(fn, samples, result, count=1, known=known)
        return result

    def close(self, *, kill: bool = False) -> None:
        if self.owned and self.backend is not None:
            self.backend.shutdown(wait=not kill, kill=kill)
            self.backend = None


def _merged(
    first: probing.ProbeResult, more: probing.ProbeResult, offset: int
) -> probing.ProbeResult:
    """``first`` (samples ``0..offset-1``) and ``more`` (the samples after) as one probe."""
    for k, (ok, value) in more.outcomes.items():
        first.outcomes[offset + k] = (ok, value if ok else reindexed(value, k, offset + k))
    first.suspects += [offset + k for k in more.suspects]
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
        "sent_fewer",
        "arg_pickle_s",
        "arg_pickle_partial",
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
    run: bool = True,
    in_caller: bool = False,
) -> tuple[Plan, Backend | None]:
    """Probe ``fn`` on ``samples`` (on ``backend``, or on a pool made for it) and plan.

    Returns the plan and, when the plan is to run on processes, the pool that
    ran the probe, sized for the job; for a plan for threads, that pool (or
    a new one) wrapped to run the calls on threads in its workers, unless
    ``in_caller`` (an Executor's threads run here) or not ``run`` (advise);
    else ``None``: a pool made here is then shut down. Ctrl-C or an error
    while probing stops the workers at once.
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
    keep = runner.backend
    pooled, shape = (None, None)
    if not in_caller:
        pooled, shape = _threads_in_workers(fn, samples, result, opts, total, keep, run)
    isolate(
        result,
        runner.forked or (keep is not None and keep.name == "process"),
        inline=runner.inline,
        pooled=shape,
    )
    set_first_chunk(result, total, shape)
    if pooled is not None:
        if pooled.pool is not keep:
            runner.close()
        return result, pooled
    if (
        keep is not None
        and result.backend == "process"
        and keep.name == "process"
        and keep.workers == result.workers
    ):
        return result, keep
    runner.close()
    return result, None


def _threads_in_workers(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    result: Plan,
    opts: Options,
    total: int | None,
    keep: Backend | None,
    run: bool,
) -> tuple[PooledThreads | None, tuple[int, int] | None]:
    """Where a plan for threads runs: on threads in worker processes (the
    probe's pool or a new one; see ``backends._pooled_threads``) unless its
    calls cannot be sent there cheaply. Returns that backend (when ``run``)
    and its shape: processes, threads in each."""
    back = result.from_threads
    if result.backend != "thread" and back is None:
        return None, None
    from .backends._pooled_threads import PooledThreads, per_worker, sendable

    if not sendable(result, _fresh_arg_bytes(samples) if result.cached else None):
        return None, None
    try:  # as a worker will: a plan reused from an earlier job has no outcome to tell
        _serialize.loads(_serialize.dump_function(fn))
    except Exception:
        return None, None
    if keep is None or keep.name != "process":
        name, pool_opts = probe_backend(fn, opts.with_(workers=None), total)
        if name != "process":
            return None, None
    if result.backend != "thread" and back is not None:
        # A probe call crashed or hung: threads in workers confine it as well.
        result.backend, result.workers = "thread", back[0]
        result.reasons.remove(back[1])
        result.reasons.append(
            "Some probe calls crashed their worker or ran past timeout=; the calls run "
            "on threads inside worker processes all the same, where such a call costs "
            "only its own item (and the worker holding it is replaced)."
        )
    if keep is None or keep.name != "process":
        if not run:
            n = pool_opts.workers or 1
            return None, (n, per_worker(result.workers, n))
        keep = create(name, pool_opts)
    pooled = PooledThreads(keep, result.workers)
    return (pooled if run else None), pooled.shape


def _fresh_arg_bytes(samples: Sequence[Any]) -> float | None:
    """Mean pickled size of a few of this job's samples: a plan reused from an
    earlier job holds that job's sizes (None: one cannot be pickled)."""
    from .planner._probe_sizes import pickled_size

    sizes = []
    for item in samples[:FRESH_SAMPLES]:
        try:
            size, buffers = pickled_size(item)
        except Exception:
            return None
        sizes.append(size + sum(buffers))
    return sum(sizes) / len(sizes) if sizes else None


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

    Nothing that could crash or hang runs in the calling process: a sample that
    crashes its worker, or runs past ``timeout`` seconds, is reported in the plan
    (``plan.outcomes`` holds its ``WorkerDied`` or ``TaskTimeout``) and the caller
    goes on. (Only a function whose bytecode is arithmetic on small-number
    samples is timed here; the plan says so.)
    Without ``timeout`` a sample may run ``max(10, 10 * budget)`` seconds, so
    that advise always returns.
    ``total`` is the number of items of the whole job when known; ``address``
    a Dask scheduler to consider; ``workers`` a count to plan for.
    """
    if budget <= 0:
        raise ConfigurationError(f"budget={budget!r} must be a positive number of seconds")
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
        run=False,
    )
    if backend is not None:
        backend.shutdown(wait=False)
    return result

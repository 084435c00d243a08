"""One map call: options -> (auto: probe and plan) -> backend -> engine.

Shared by ``map``/``imap`` (``_api``) and ``Executor.map`` (``_executor``):
the public signatures' option types and docs, the auto planning of a map
(the probe's outcomes become the first events), and turning events into values.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import textwrap
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

from ._engine import Direct, Event, Rerun, Run, Skipping, direct_ok, length_hint
from ._options import Options, check_applicable, option_docs
from ._progress import Bar
from .backends import Backend, Job, StreamJob, create
from .errors import ConfigurationError, SerializationError, TaskTimeout, reindexed

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


def _values(events: Iterator[Event], errors: str) -> Generator[Any, None, None]:
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


# -- one map call ------------------------------------------------------------
class Resolved(NamedTuple):
    """A map call with its backend decided (``backend="auto"``: probed and planned)."""

    opts: Options
    iterable: Iterable[Any]  # the input still to run
    total: int | None
    prefilled: list[Event]  # the probe's outcomes
    resubmit: list[Rerun]  # probed items to run again (retries)
    plan: Any
    backend: Backend | None  # the pool that ran the probe, when the job goes on there


def _resolve(fn: Callable[[Any], Any], iterable: Iterable[Any], opts: Options) -> Resolved:
    _check_callable(fn)
    total = length_hint(iterable)
    if opts.backend != "auto":
        check_applicable(opts, opts.backend)
    opts, iterable, prefilled, resubmit, plan, backend = _resolve_auto(fn, iterable, opts, total)
    if plan is not None:
        check_applicable(opts, opts.backend, chosen_by_auto=True)
    return Resolved(opts, iterable, total, prefilled, resubmit, plan, backend)


def _direct(fn: Callable[[Any], Any], resolved: Resolved) -> Direct | None:
    """The engine-less serial loop for ``map``, where it gives the same outcomes:
    serial, no timeout (which needs a helper thread), no progress bar, no probed
    item to run again, and an input whose iteration runs no user code."""
    opts = resolved.opts
    if (
        opts.backend != "serial"
        or opts.timeout is not None
        or opts.progress
        or resolved.resubmit
        or resolved.backend is not None
        or not direct_ok(resolved.iterable)
    ):
        return None
    return Direct(fn, resolved.iterable, retries=opts.retries, prefilled=resolved.prefilled)


@contextlib.contextmanager
def _session(
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    opts: Options,
    *,
    ordered: bool,
    resolved: Resolved | None = None,
) -> Iterator[Run]:
    if resolved is None:
        resolved = _resolve(fn, iterable, opts)
    opts, iterable, total, prefilled, resubmit, plan, backend = resolved
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
            reap_probes()
            if bar is not None:
                bar.close()


def reap_probes() -> None:
    """Collect auto's finished probe children (never blocks): by the end of a
    job the forked probe has long exited, and it was left a zombie until the
    next probe."""
    probe_fork = sys.modules.get("gilfree._probe_fork")
    if probe_fork is not None:
        probe_fork.reap()


def _check_callable(fn: object) -> None:
    if not callable(fn):
        raise ConfigurationError(f"fn={fn!r} is not callable")


def dask_address(opts: Options) -> str | None:
    return opts.address or os.environ.get("GILFREE_DASK_ADDRESS") or None


def _resolve_auto(
    fn: Callable[[Any], Any], iterable: Iterable[Any], opts: Options, total: int | None
) -> tuple[Options, Iterable[Any], list[Event], list[Rerun], Any, Backend | None]:
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
    # A plan for threads runs here, or on threads in the probe's workers.
    unsettled = probe_only(plan, here=backend is None or backend.name != "thread")
    prefilled, resubmit, ran = _probe_events(plan, indices, samples, opts.retries, unsettled)
    return _apply_plan(opts, plan), Skipping(rest, ran), prefilled, resubmit, plan, backend


def probe_only(
    plan: Any, deadline_s: float | None = None, *, here: bool = True
) -> Callable[[BaseException], bool]:
    """Which probe errors the plan's backend would not meet, so the call runs again:
    an argument the probe could not send to its process, or a result it could
    not pickle back, when the plan runs calls in this process (nothing is
    pickled there: ``gilfree.map(ident, [1, lock])`` failed on its first call
    and returned the lock on its second, planned); and, given ``deadline_s``
    (an ``Executor.map``'s timeout, tighter than the task's own), a
    ``TaskTimeout`` from that bound. Not ``here``: the plan's calls run in
    worker processes whatever its backend (a plan for threads, in a map).
    A function that did not unpickle in the probe's worker (a ctypes global)
    runs here too."""
    here = here and plan.backend in ("serial", "thread")
    sent = ("argument", "result", "function")

    def unsettled(exc: BaseException) -> bool:
        if deadline_s is not None and isinstance(exc, TaskTimeout):
            return True
        return here and isinstance(exc, SerializationError) and exc.what in sent

    return unsettled


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
    plan: Any,
    indices: Sequence[int],
    samples: Sequence[Any],
    retries: int,
    unsettled: Callable[[BaseException], bool] | None = None,
) -> tuple[list[Event], list[Rerun], frozenset[int]]:
    """The probe's calls were real: their outcomes become the first events.

    ``plan.outcomes[k]`` is the outcome of ``samples[k]``, input index
    ``indices[k]``. A failed one is run again by the backend when retries are
    allowed (the probe was its first attempt). ``plan.suspects`` (samples a
    probe task took down with it, blaming none) run again each alone, with no
    attempt counted (``Rerun`` with no error), as do samples whose error is
    ``unsettled`` (the probe's doing, not the task's: see ``probe_only``).
    Returns the events, the items to run again, and the input indices the
    probe settled or hands back.
    """
    prefilled: list[Event] = []
    resubmit: list[Rerun] = []
    for k, (ok, value) in sorted(plan.outcomes.items()):
        index = indices[k]
        if not ok:  # the probe numbered its samples; the job numbers its inputs
            value = reindexed(value, k, index)
        if ok:
            prefilled.append((True, index, [value]))
        elif unsettled is not None and unsettled(value):
            resubmit.append((index, samples[k], None))
        elif retries > 0:
            resubmit.append((index, samples[k], value))
        else:
            prefilled.append((False, index, value))
    suspects = [k for k in plan.suspects if k not in plan.outcomes]
    resubmit.extend((indices[k], samples[k], None) for k in suspects)
    return prefilled, resubmit, frozenset(indices[k] for k in [*plan.outcomes, *suspects])

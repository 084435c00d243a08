"""What ``backend="auto"`` says about where a plan's calls run and how they
are cut into chunks: the last reasons of its plan."""

from __future__ import annotations

from .planner import Plan
from .planner import _probe as probing
from .planner._inert import WHY as INERT_WHY


def isolate(
    result: Plan,
    probed_in_process: bool,
    *,
    inline: bool = False,
    pooled: tuple[int, int] | None = None,
) -> None:
    """Say plainly where the remaining calls run, and when that is this process.

    (What crashed a worker never runs here: the policy keeps such a job on
    processes, see ``planner._model``.)"""
    ran = len(result.outcomes)
    if pooled is not None:
        result.reasons.append(
            f"The calls run on threads inside {pooled[0]} worker processes "
            f"({pooled[1]} thread{'s' if pooled[1] != 1 else ''} each), not in this "
            "process: a call that "
            "crashes is WorkerDied for that call alone, and one past timeout= is a "
            "TaskTimeout (its worker is replaced). To run them on threads "
            "in this process instead, pass backend='thread'."
        )
        return
    where = {
        "serial": "run in this process, one after another",
        "thread": "run on threads in this process",
    }.get(result.backend)
    if inline and ran:
        result.reasons.append(f"The {ran} probe calls ran in this process: {INERT_WHY}.")
        if where is not None:
            result.reasons.append(
                f"The remaining calls {where} as well. To keep every call in a worker "
                "process, pass backend='process'."
            )
        return
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


def set_first_chunk(result: Plan, total: int | None, pooled: tuple[int, int] | None = None) -> None:
    """``Plan.chunksize``: the chunk size the engine starts with, from the probe's timing."""
    from . import _chunking
    from .backends import chunk_target

    t = result.profile.task_seconds
    if pooled is not None and t is not None:
        from .backends._pooled_threads import first_batch

        size = result.chunksize = first_batch(pooled, total, t)
        result.reasons.append(
            f"Each worker process takes {size:,} item{'s' if size != 1 else ''} at a time "
            f"and runs them on its {pooled[1]} thread{'s' if pooled[1] != 1 else ''}, "
            "each taking the next item "
            "as it finishes one; batches adapt as the job runs."
        )
        return
    # The engine is seeded with the probe's calls (_session._seed_timing): its
    # first chunk is sized from that many measured items, and so is this one.
    calls = result.profile.calls
    if result.backend == "serial" or t is None:
        result.chunksize = (
            1
            if t is None
            else _chunking.first_size(chunk_target("serial"), 1, total, t, measured=calls)
        )
        return
    target = chunk_target(result.backend)
    size = _chunking.first_size(target, result.workers, total, t, measured=calls)
    result.chunksize = size
    result.reasons.append(
        f"Chunks start at {size:,} item{'s' if size != 1 else ''} "
        f"({probing.format_seconds(size * t)} of work each at {probing.format_seconds(t)} "
        "per call) and adapt as the job runs, from the time the workers measure."
    )

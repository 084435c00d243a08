"""The plan's reasons: the sentences ``explain()`` prints, from the same
features and predictions the policy (``_model``) used.

Every sentence that compares two numbers goes through ``compare``, so its
words cannot contradict its numbers.
"""

from __future__ import annotations

from ._bytecode import Finding
from ._costs import POOL_FIXED_S, POOL_ROUNDTRIP_FACTOR, THREAD_CHUNK_S
from ._features import Features
from ._plan import format_bytes
from ._probe import format_seconds
from ._reading import (
    COMPUTES_ABOVE,
    MAX_THREADS,
    NO_SCALING_BELOW,
    ORDER,
    SCALES_ABOVE,
    WAITS_BELOW,
    WORKERS_MARGIN,
    _bytecode_overrules,
    waiting_io,
)


def _gil_sentence(feat: Features) -> str | None:
    if not feat.gil_enabled:
        decides = (
            "so the measured thread scaling decides between threads and processes"
            if feat.pair_speedup is not None
            else "with no pickling or process start-up"
        )
        return (
            "This interpreter runs without a GIL (free-threaded build): threads run "
            f"Python code in parallel, {decides}."
        )
    if feat.free_threaded_build:
        return (
            "This is a free-threaded build, but the GIL is enabled (a C extension turned "
            "it back on, or PYTHON_GIL=1), so threads take turns on Python code."
        )
    return None


def _timing_sentence(t: float, f: float) -> str:
    head = f"Each call took {format_seconds(t)}, {f:.0%} of it on the CPU"
    if f < WAITS_BELOW:
        return head + (
            ": it mostly waits (for I/O or a timer), and a waiting thread lets others run."
        )
    if f > COMPUTES_ABOVE:
        return head + ": it computes rather than waits."
    return head + ": it both computes and waits."


def _scaling_sentence(feat: Features) -> str | None:
    s = feat.pair_speedup
    if s is None:
        if feat.pair_skipped:
            return f"Thread scaling was not measured: {feat.pair_skipped}."
        return None
    rate = f"2 threads ran at {s:.2f}x the rate of one"
    if not feat.gil_enabled:
        if s < NO_SCALING_BELOW:
            return (
                f"{rate}: even without a GIL the calls do not run in parallel (a lock, or "
                "contention on shared objects), so threads cannot overlap them."
            )
        if s > SCALES_ABOVE:
            return f"{rate}: with no GIL, threads run the calls in parallel."
        return f"{rate}: threads overlap part of the work."
    if s < NO_SCALING_BELOW:
        return (
            f"{rate}: the work holds the GIL (Python bytecode runs one thread at a time), "
            "so threads cannot overlap it."
        )
    if s > SCALES_ABOVE:
        return f"{rate}: the calls let go of the GIL, so threads overlap them."
    return f"{rate}: threads overlap part of the work."


def _busy_sentence(feat: Features) -> str | None:
    verdict = _bytecode_overrules(feat)
    if verdict is None:
        return None
    head = (
        f"2 threads ran at {feat.pair_speedup:.2f}x the rate of one, but the machine was busy "
        f"(the probe waited {feat.busy_share:.0%} of its time for a CPU other programs held), "
        "so that reading says little"
    )
    if verdict == "releases" and not feat.gil_enabled:
        found = feat.kinds("releases_gil") or feat.kinds("io") or feat.kinds("python_loop")
        return (
            f"{head}; the bytecode shows {_first(found)}, and with no GIL Python code runs "
            "in parallel on threads, so the bytecode is trusted here."
        )
    if verdict == "releases":
        hints = feat.kinds("releases_gil") or waiting_io(feat)
        return (
            f"{head}; the bytecode shows it letting go of the GIL in {_first(hints)}, "
            "so the bytecode is trusted here."
        )
    loops = feat.kinds("python_loop")
    io = feat.kinds("io")
    if io and feat.cpu_fraction is not None:
        return (
            f"{head}; the bytecode shows pure-Python work ({_first(loops)}), which holds the "
            f"GIL, and {_first(io)}, where calls {feat.cpu_fraction:.0%} on the CPU cannot "
            "spend their time, so the bytecode is trusted here."
        )
    return (
        f"{head}; the bytecode shows only pure-Python work ({_first(loops)}), which holds "
        "the GIL, so the bytecode is trusted here."
    )


def _first(findings: list[Finding]) -> str:
    f = findings[0]
    more = f" and {len(findings) - 1} more" if len(findings) > 1 else ""
    return f"{f.what} at {f.where()}{more}"


def _disagreements(feat: Features, f: float) -> list[str]:
    """Where the bytecode and the measurement disagree, say so: measurement wins."""
    out: list[str] = []
    io = feat.kinds("io")
    rel = feat.kinds("releases_gil")
    loops = feat.kinds("python_loop")
    s = feat.pair_speedup
    if io and f > COMPUTES_ABOVE and not rel:
        out.append(
            f"The bytecode shows I/O ({_first(io)}), but the measurement found {f:.0%} of "
            "the time on the CPU; the measurement wins."
        )
    elif io and f < WAITS_BELOW:
        out.append(f"The bytecode agrees: it waits in {_first(io)}.")
    if rel and s is not None and s < NO_SCALING_BELOW:
        out.append(
            f"The bytecode shows {_first(rel)}, which can release the GIL on large inputs, "
            f"but 2 threads ran at only {s:.2f}x the rate of one (perhaps the inputs are "
            "small); the measurement wins."
        )
    elif rel and s is not None and s > SCALES_ABOVE:
        out.append(f"The bytecode agrees: it lets go of the GIL in {_first(rel)}.")
    if loops and not io and not rel and s is not None and s > SCALES_ABOVE:
        out.append(
            f"The bytecode shows only pure-Python loops ({_first(loops)}), but 2 threads ran "
            f"{s:.2f}x as fast as one; the measurement wins."
        )
    elif loops and not io and not rel and s is not None and s < NO_SCALING_BELOW:
        out.append(f"The bytecode agrees: it runs pure-Python work in {_first(loops)}.")
    return out


def _choice_sentences(
    feat: Features,
    backend: str,
    workers: int,
    predicted: dict[str, float],
    n: int,
    t: float,
    f: float,
    g: float,
    cpus: int,
) -> list[str]:
    m = feat.machine
    out = []
    items = f"{n:,} items" + ("" if feat.total is not None else " (assumed; the total is unknown)")
    shown = ", ".join(f"{b} {format_seconds(predicted[b])}" for b in ORDER if b in predicted)
    out.append(f"Predicted time for {items}: {shown}.")
    best = min(predicted, key=lambda b: predicted[b])
    if backend != best:
        out.append(
            f"{best} is predicted only {predicted[backend] / predicted[best]:.2f}x faster "
            f"than {backend}, within the model's error, so the simpler {backend} is used."
        )
    if backend == "serial":
        rt = m.roundtrip_s * POOL_ROUNDTRIP_FACTOR
        if t < rt * 10 or t < THREAD_CHUNK_S:
            out.append(
                f"A call takes only {format_seconds(t)}; handing a batch of calls to a "
                f"thread costs about {format_seconds(THREAD_CHUNK_S)} and to a process about "
                f"{format_seconds(rt)} plus pickling"
                + (
                    ", and the GIL lets only one thread run them anyway"
                    if feat.gil_enabled
                    else ", more than the calls themselves"
                )
                + ": a plain loop is fastest."
            )
        elif n * t < POOL_FIXED_S + m.spawn_s * cpus + m.ready_s:
            start = POOL_FIXED_S + m.spawn_s * cpus + m.ready_s
            out.append(
                f"The whole job ({format_seconds(n * t)}) is shorter than starting worker "
                f"processes ({format_seconds(start)}): a plain loop is fastest."
            )
        else:
            rivals = [b for b in ("thread", "process") if b in predicted]
            if rivals:
                best_rival = min(rivals, key=lambda b: predicted[b])
                out.append(
                    f"The best alternative, {best_rival}, is predicted at "
                    f"{predicted[best_rival] / predicted['serial']:.2f}x the time of a plain loop."
                )
    elif backend == "thread":
        if f < WAITS_BELOW or (g < 0.2 and f < COMPUTES_ABOVE):
            out.append(
                f"{workers} threads: the calls spend {1 - f:.0%} of their time waiting, so "
                "many threads overlap many waits"
                + (
                    f" (capped at {MAX_THREADS})."
                    if workers == MAX_THREADS
                    else f" (more than {workers} gain under {WORKERS_MARGIN:.0%} by the model)."
                )
            )
        elif not feat.gil_enabled:
            out.append(
                f"{workers} threads, about one per CPU ({cpus}): with no GIL they run the "
                "calls on as many cores at once, and each call needs a core, so more threads "
                "would only queue."
            )
        else:
            out.append(
                f"{workers} threads, about one per CPU ({cpus}): the calls run C code that "
                "releases the GIL but needs a core, so more threads would only queue."
            )
        if "process" in predicted:
            moved = feat.arg_bytes + feat.result_bytes + feat.shm_bytes
            if moved >= 64 << 10:
                out.append(
                    f"Threads share memory, while processes would move "
                    f"{format_bytes(moved)} per call between processes."
                )
    elif backend == "process":
        start, rt = m.spawn_s + m.ready_s, m.roundtrip_s
        per = (
            f"{compare(rt, t)} {format_seconds(t)} per call"
            if rt <= t
            else f"{compare(rt, t)} {format_seconds(t)} per call, so calls travel in "
            "chunks that share each round trip"
        )
        out.append(
            f"{workers} worker process{'es' if workers != 1 else ''}"
            f"{', one per usable CPU' if workers == cpus else ''}: "
            + ("each process has its own GIL, so " if feat.gil_enabled else "")
            + f"pure-Python work runs on {min(workers, cpus)} "
            f"core{'s' if min(workers, cpus) != 1 else ''} at once. Starting one costs "
            f"{format_seconds(start)} here, {compare(start, n * t)} the "
            f"{format_seconds(n * t)} of work, and a round trip {format_seconds(rt)}, {per}."
        )
    elif backend == "dask":
        threads = feat.dask_threads or 0
        out.append(
            f"The Dask cluster at {feat.address} has {threads} threads in "
            f"{feat.dask_workers} workers, {compare(threads, cpus, unit='')} the {cpus} "
            "CPUs here."
        )
    return out


#: How two costs compare, in words, from the ratio a / b: ``compare`` picks the
#: first row whose bound the ratio is under. Every sentence that compares two
#: numbers goes through it, so its words cannot contradict its numbers.
COMPARISONS = (
    (0.1, "small next to"),
    (1 / 1.5, "less than"),
    (1.5, "about the same as"),
    (10.0, "more than"),
    (float("inf"), "large next to"),
)


def compare(a: float, b: float, *, unit: str = "time") -> str:
    """``a`` compared with ``b`` in words ("small next to", ...)."""
    if b <= 0:
        return "more than" if a > 0 else "about the same as"
    ratio = a / b
    if unit != "time":  # counts: no "small next to" for 3 against 64
        return "fewer than" if a < b else ("as many as" if a == b else "more than")
    for bound, words in COMPARISONS:
        if ratio < bound:
            return words
    return COMPARISONS[-1][1]

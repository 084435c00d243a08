"""The policy: a pure function from measured features to a Plan.

``choose(features)`` predicts the time of the whole job on each backend and
picks the cheapest. Nothing here measures, sleeps or reads a clock, so the
policy is tested with tables of features (``tests/test_planner_model.py``).

The model, per backend, for ``N`` items of ``T`` seconds each, a CPU fraction
``f`` (thread CPU time / wall time), ``c`` usable CPUs:

* **serial**: ``N*T``.
* **thread** with ``k`` threads: the GIL lets one thread run Python at a time,
  so if a fraction ``g`` of each call holds the GIL, throughput is bounded by
  ``1/g``; the CPU part needs a core, so it is also bounded by ``c/f``::

      speedup(k) = 1 / max(1/k, g, f/c)
      time = N*T/speedup(k) + chunks*THREAD_CHUNK_S + N*THREAD_ITEM_S + k*THREAD_START_S

  ``g`` comes from the two-thread measurement ``s``: with ``s < 1.8`` the GIL
  is the bottleneck and ``g = 1/s``; with ``s >= 1.8`` two threads cannot tell
  ``g <= 0.5`` apart, so the bytecode narrows it (see ``gil_share``).
  The predictions and their cost constants are in ``_costs``.
* **process** with ``w`` workers: compute ``N*T / min(w, c/f)``, plus starting
  the workers, a round trip per chunk (chunks as the engine's adaptive chunker
  makes them), and pickling/moving the bytes. The parent pickles and unpickles
  every argument and result itself, so that part is serial::

      time = start(w) + max(compute + chunk round trips / w, parent's serial share)

* **dask** (only with an address): like processes over the cluster's threads,
  with a per-chunk scheduler overhead and a connection cost.

A simpler backend (serial < thread < process < dask) is kept unless a more
complex one is predicted at least ``SIMPLER_MARGIN`` faster: the model's
error is larger than a few percent and simpler backends fail in fewer ways.
"""

from __future__ import annotations

from collections.abc import Callable

from ._bytecode import Finding
from ._costs import (
    POOL_FIXED_S,
    POOL_ROUNDTRIP_FACTOR,
    THREAD_CHUNK_S,
    predict_dask,
    predict_process,
    predict_serial,
    predict_thread,
)
from ._features import Features
from ._plan import Plan, Profile, format_bytes
from ._probe import format_seconds

# Items assumed when the caller does not know how many there will be.
DEFAULT_TOTAL = 1000
# Threads are never more than this: past it the gain for waiting calls is small
# and each thread costs memory and a connection to whatever it waits on.
MAX_THREADS = 64
# Keep a simpler backend unless a more complex one is this much faster.
SIMPLER_MARGIN = 0.05
# Among thread counts, take the smallest within this of the best prediction.
WORKERS_MARGIN = 0.02
# Thresholds used to describe a measurement in words.
WAITS_BELOW = 0.3  # CPU fraction below which a call "mostly waits"
COMPUTES_ABOVE = 0.7
SCALES_ABOVE = 1.5  # 2-thread scaling above which threads "overlap"
NO_SCALING_BELOW = 1.3
PAIR_TELLS_BELOW = 1.8  # below this, g = 1/s; above, 2 threads cannot tell
PAIR_NOISE = 1.1  # 2-thread scaling below this is read as none at all
# When the probe's threads waited this share of their time for a CPU held by
# other processes, 2 threads could not show scaling; a GIL-releasing call the
# bytecode shows is then trusted over the low reading.
BUSY_SHARE = 0.25
ORDER = ("serial", "thread", "process", "dask")
# Calls under SHORT_CALL_S timed over fewer than SHORT_CALL_MIN_CALLS calls read
# slow: the interpreter specialises a function over its first calls and caches
# are cold. Probes of `x * x` read ~500 ns over 4 calls and ~125 ns over 60
# (2-CPU VM), so such readings are divided by SHORT_CALL_WARM_UP; erring this
# way costs little (a plain loop), the other way a pool 10x slower than a loop.
SHORT_CALL_S = 5e-6
SHORT_CALL_MIN_CALLS = 16
SHORT_CALL_WARM_UP = 4.0


def gil_share(feat: Features) -> float:
    """Fraction ``g`` of a call's wall time spent holding the GIL (0..1)."""
    f = feat.cpu_fraction if feat.cpu_fraction is not None else 1.0
    hinted = bool(feat.kinds("releases_gil") or feat.kinds("io"))
    s = feat.pair_speedup
    if s is None:
        return f * (0.2 if hinted or not feat.gil_enabled else 1.0)
    s = min(2.0, max(1.0, s))
    overruled = _bytecode_overrules(feat)
    if overruled == "releases":
        return min(f, 0.5) * 0.2  # see _busy_sentence
    if overruled == "holds":
        return f
    if s < PAIR_NOISE:
        return f
    if s < PAIR_TELLS_BELOW:
        return min(f, 1.0 / s)
    if not feat.gil_enabled:
        # No GIL: two threads ran fully in parallel, and nothing in the
        # interpreter serialises more of them; cores are the bound (f / c).
        return 0.0
    # Two threads overlapped: g <= 0.5. The bytecode says whether the calls
    # release the GIL for most of their time (then g is small) or not.
    return min(f, 0.5) * (0.2 if hinted else 1.0)


def _thread_candidates(n: int, cpus: int, limit: int) -> list[int]:
    ks = set(range(1, cpus + 1)) | {2**i for i in range(1, 8)} | {min(limit, n)}
    return sorted(k for k in ks if 1 <= k <= min(limit, n))


def choose(feat: Features) -> Plan:
    """The plan for these features. Pure: same features, same plan.

    Serial and threads run calls in the caller's process: a probe call that
    killed its worker would kill the caller there, so such a job stays on
    processes whatever the timings say (unless the function cannot reach one).
    """
    plan = _choose(feat)
    if feat.crashes and plan.backend in ("serial", "thread") and not feat.unpicklable:
        n = max(1, feat.total if feat.total is not None else DEFAULT_TOTAL)
        w = min(n, feat.workers or max(1, feat.machine.cpus))
        many = feat.crashes != 1
        plan.reasons.append(
            f"{feat.crashes} probe call{'s' if many else ''} crashed the worker "
            f"process running {'them' if many else 'it'}, so the job stays on "
            f"{w} worker process{'es' if w != 1 else ''}, where a crash fails only its own "
            f"item, instead of {plan.backend} in this process as the timings alone would "
            "have it."
        )
        plan.backend, plan.workers = "process", w
    return plan


def _choose(feat: Features) -> Plan:
    n = feat.total if feat.total is not None else DEFAULT_TOTAL
    n = max(1, n)
    m = feat.machine
    cpus = max(1, m.cpus)
    reasons: list[str] = []
    profile = _profile(feat)

    def plan(backend: str, workers: int, predicted: dict[str, float]) -> Plan:
        notes = list(feat.notes)
        return Plan(
            backend=backend,
            workers=workers,
            chunksize=None,
            reasons=reasons,
            profile=profile,
            findings=list(feat.findings),
            predicted=predicted,
            function=feat.function,
            total=n,
            total_known=feat.total is not None,
            notes=notes,
        )

    t = feat.task_seconds
    if t is None:
        return _from_bytecode_only(feat, n, cpus, reasons, plan)
    if feat.calls and feat.failures == feat.calls:
        reasons.append(
            f"All {feat.calls} probe calls raised {feat.failure_type or 'an exception'}, "
            "so there is nothing to speed up: running in this thread reports the error "
            "soonest and starts no workers."
        )
        return plan("serial", 1, {"serial": predict_serial(n, t)})

    f = feat.cpu_fraction if feat.cpu_fraction is not None else 1.0
    g = gil_share(feat)
    gil = _gil_sentence(feat)
    if gil:
        reasons.append(gil)
    reasons.append(_timing_sentence(t, f))
    if t < SHORT_CALL_S and feat.calls < SHORT_CALL_MIN_CALLS:
        t = t / SHORT_CALL_WARM_UP
        reasons.append(
            f"Over only {feat.calls} calls, a call this short reads slow (the interpreter "
            f"warms up on the first ones), so the model counts it as {SHORT_CALL_WARM_UP:.0f}x "
            "faster."
        )
    busy = _busy_sentence(feat)
    if busy:
        reasons.append(busy)
    else:
        scaling = _scaling_sentence(feat)
        if scaling:
            reasons.append(scaling)
        reasons.extend(_disagreements(feat, f))

    predicted: dict[str, float] = {"serial": predict_serial(n, t)}

    # Threads: try counts from 1 to MAX_THREADS; keep the smallest count
    # within WORKERS_MARGIN of the best.
    if feat.workers is not None:
        k_best = min(feat.workers, n)
        predicted["thread"] = predict_thread(n, t, k_best, g, f, cpus)
    else:
        times = {
            k: predict_thread(n, t, k, g, f, cpus) for k in _thread_candidates(n, cpus, MAX_THREADS)
        }
        best = min(times.values())
        k_best = min(k for k, v in times.items() if v <= best * (1 + WORKERS_MARGIN))
        predicted["thread"] = times[k_best]
    if k_best == 1:
        # Threads gain nothing: show what a pool of one per CPU would cost
        # rather than "1 thread", which is a serial loop with extra steps.
        k_best = min(n, cpus, feat.workers or cpus)
        predicted["thread"] = predict_thread(n, t, k_best, g, f, cpus)

    w = min(n, feat.workers or cpus)
    if feat.unpicklable:
        reasons.append(f"Processes are out: {feat.unpicklable}.")
    else:
        predicted["process"] = predict_process(feat, n, t, w)

    if feat.address is not None:
        if feat.unpicklable:
            pass
        elif feat.dask_threads:
            predicted["dask"] = predict_dask(feat, n, t, g)
        else:
            reasons.append(
                f"The Dask cluster at {feat.address} was not used: "
                f"{feat.dask_error or 'its size is unknown'}."
            )

    backend = _pick(predicted)
    workers = {"serial": 1, "thread": k_best, "process": w, "dask": feat.dask_threads or 1}[backend]
    reasons.extend(_choice_sentences(feat, backend, workers, predicted, n, t, f, g, cpus))
    return plan(backend, workers, predicted)


def _pick(predicted: dict[str, float]) -> str:
    ranked = [b for b in ORDER if b in predicted]
    best = min(ranked, key=lambda b: predicted[b])
    for b in ranked:  # the simplest one close enough to the best
        if predicted[b] <= predicted[best] * (1 + SIMPLER_MARGIN):
            return b
    return best


def _profile(feat: Features) -> Profile:
    m = feat.machine
    return Profile(
        calls=feat.calls,
        task_seconds=feat.task_seconds,
        cpu_fraction=feat.cpu_fraction,
        thread_scaling=feat.pair_speedup,
        arg_bytes=feat.arg_bytes if feat.task_seconds is not None else None,
        shm_bytes=feat.shm_bytes,
        result_bytes=feat.result_bytes if feat.task_seconds is not None else None,
        internal_parallelism=feat.internal_parallelism,
        busy_share=feat.busy_share,
        failures=feat.failures,
        probe_seconds=feat.probe_seconds,
        process_start_s=m.spawn_s + m.ready_s,
        process_roundtrip_s=m.roundtrip_s,
        process_byte_s=m.byte_s,
        cpus=m.cpus,
        gil_enabled=feat.gil_enabled,
    )


def _gil_sentence(feat: Features) -> str | None:
    if not feat.gil_enabled:
        return (
            "This interpreter runs without a GIL (free-threaded build): threads run "
            "Python code in parallel, so the measured thread scaling decides between "
            "threads and processes."
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


def _bytecode_overrules(feat: Features) -> str | None:
    """On a busy machine the 2-thread reading is unreliable both ways: other
    programs holding the CPUs hide real scaling, and their comings and goings
    can fake some. Only then, and only when the bytecode is unambiguous, the
    bytecode decides: "releases" (a GIL-releasing or I/O call, reading under
    PAIR_TELLS_BELOW) or "holds" (pure-Python loops only, reading above
    NO_SCALING_BELOW)."""
    s = feat.pair_speedup
    if s is None or feat.busy_share < BUSY_SHARE:
        return None
    hints = feat.kinds("releases_gil") or feat.kinds("io")
    if not feat.gil_enabled:
        # Without a GIL pure-Python loops scale on threads too.
        if (hints or feat.kinds("python_loop")) and s < PAIR_TELLS_BELOW:
            return "releases"
        return None
    if hints and s < PAIR_TELLS_BELOW:
        return "releases"
    if not hints and feat.kinds("python_loop") and s >= NO_SCALING_BELOW:
        return "holds"
    return None


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
        hints = feat.kinds("releases_gil") or feat.kinds("io")
        return (
            f"{head}; the bytecode shows it letting go of the GIL in {_first(hints)}, "
            "so the bytecode is trusted here."
        )
    loops = feat.kinds("python_loop")
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
            best_rival = min(rivals, key=lambda b: predicted[b]) if rivals else None
            if best_rival is not None:
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


def _from_bytecode_only(
    feat: Features,
    n: int,
    cpus: int,
    reasons: list[str],
    plan: Callable[[str, int, dict[str, float]], Plan],
) -> Plan:
    """No call could be measured: fall back on what the bytecode shows."""
    io = feat.kinds("io")
    rel = feat.kinds("releases_gil")
    loops = feat.kinds("python_loop")
    head = "No call was measured (0 samples), so this plan rests on the bytecode alone"
    if io:
        k = min(n, feat.workers or 32)
        reasons.append(f"{head}: it shows I/O ({_first(io)}), and {k} threads overlap the waits.")
        return plan("thread", k, {})
    if rel:
        k = min(n, feat.workers or cpus)
        reasons.append(
            f"{head}: it shows C code that releases the GIL ({_first(rel)}), so {k} threads, "
            "one per CPU."
        )
        return plan("thread", k, {})
    if loops and not feat.unpicklable:
        w = min(n, feat.workers or cpus)
        reasons.append(
            f"{head}: it shows pure-Python loops ({_first(loops)}), so {w} processes, one per CPU."
        )
        return plan("process", w, {})
    reasons.append(f"{head}: it shows 0 loops, I/O or GIL-releasing calls, so a plain loop.")
    return plan("serial", 1, {})

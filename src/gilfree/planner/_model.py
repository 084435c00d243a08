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

The thresholds and ``g`` are in ``_reading``; the sentences of ``explain()``
in ``_reasons``.
"""

from __future__ import annotations

from collections.abc import Callable

from ._costs import predict_dask, predict_process, predict_serial, predict_thread
from ._features import Features
from ._plan import Plan, Profile, format_bytes
from ._probe import format_seconds

# The thresholds and g live in _reading, the sentences in _reasons; the names
# stay importable from here (tests and callers import them from _model).
from ._reading import (
    BUSY_SHARE,
    COMPUTES_ABOVE,
    DEFAULT_TOTAL,
    MAX_THREADS,
    NO_SCALING_BELOW,
    NOGIL_BUSY_SHARE,
    OBJECT_PICKLE_BYTE_S,
    ORDER,
    PAIR_NOISE,
    PAIR_TELLS_BELOW,
    SCALES_ABOVE,
    SHORT_CALL_MIN_CALLS,
    SHORT_CALL_S,
    SHORT_CALL_WARM_UP,
    SIMPLER_MARGIN,
    WAITS_BELOW,
    WORKERS_MARGIN,
    gil_share,
)
from ._reasons import (
    COMPARISONS,
    _busy_sentence,
    _choice_sentences,
    _disagreements,
    _first,
    _gil_sentence,
    _scaling_sentence,
    _timing_sentence,
    compare,
)

__all__ = [
    "BUSY_SHARE",
    "COMPARISONS",
    "COMPUTES_ABOVE",
    "DEFAULT_TOTAL",
    "MAX_THREADS",
    "NOGIL_BUSY_SHARE",
    "NO_SCALING_BELOW",
    "OBJECT_PICKLE_BYTE_S",
    "ORDER",
    "PAIR_NOISE",
    "PAIR_TELLS_BELOW",
    "SCALES_ABOVE",
    "SHORT_CALL_MIN_CALLS",
    "SHORT_CALL_S",
    "SHORT_CALL_WARM_UP",
    "SIMPLER_MARGIN",
    "WAITS_BELOW",
    "WORKERS_MARGIN",
    "choose",
    "compare",
    "gil_share",
]


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
    faults = feat.crashes + feat.hangs
    if faults and plan.backend in ("serial", "thread") and not feat.unpicklable:
        n = max(1, feat.total if feat.total is not None else DEFAULT_TOTAL)
        w = min(n, feat.workers or max(1, feat.machine.cpus))
        what = []
        if feat.crashes:
            what.append(f"{feat.crashes} crashed the worker process running it")
        if feat.hangs:
            what.append(f"{feat.hangs} ran past timeout= and had its worker stopped")
        why = (
            f"Of the probe calls, {' and '.join(what)}, so the job stays on "
            f"{w} worker process{'es' if w != 1 else ''}, one call at a time each, where a "
            "crash or a hung call costs only its own item, instead of "
            f"{'threads' if plan.backend == 'thread' else 'a loop in this process'} "
            "as the timings alone would have it."
        )
        plan.reasons.append(why)
        if plan.backend == "thread":
            plan.from_threads = (plan.workers, why)
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
    if feat.sent_fewer:
        reasons.append(feat.sent_fewer)
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
        graphs = _object_pickling(feat, n)
        predicted["process"] = predict_process(feat, n, t, w) + graphs
        timed = feat.arg_pickle_s or 0.0
        if n * timed * (1 + 1 / w) >= 0.1 * predicted["process"]:
            if feat.arg_pickle_partial:
                reasons.append(
                    f"Processes are charged at least {format_seconds(timed)} a call to pickle "
                    "each argument in this process (pickling the first sample was stopped "
                    f"after {format_bytes(feat.arg_bytes)}, once it took longer than a call) "
                    "and about as long again to unpickle it in a worker; threads and a plain "
                    "loop use the objects as they are."
                )
            else:
                reasons.append(
                    f"Processes are charged {format_seconds(timed)} a call to pickle each "
                    f"{format_bytes(feat.arg_bytes)} argument in this process (timed on the "
                    "first sample) and about as long again to unpickle it in a worker; threads "
                    "and a plain loop use the objects as they are."
                )
        if graphs >= 0.1 * predicted["process"]:
            reasons.append(
                f"Processes are charged {format_seconds(graphs)} over {n} calls to pickle "
                f"{format_bytes(feat.arg_bytes + feat.result_bytes)} of arguments and results "
                f"a call as object graphs (about {OBJECT_PICKLE_BYTE_S * 1e9:.0f} ns a byte); "
                "threads share the objects."
            )

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


def _object_pickling(feat: Features, n: int) -> float:
    """Without a GIL, what processes pay to pickle in-band arguments and results
    as object graphs, beyond the bytes ``predict_process`` already counts.

    The probe measures pickled sizes, not pickling time, and the machine's byte
    cost is that of a flat buffer (~1 ns/B). A list of tuples or a dict pickles
    and unpickles at 19-47 ns/B (2 MB of each, 3.13t and 3.11, 2-CPU VM), 20x
    more: a 2 MB graph costs ~40 ms per call, more than many calls' work. With
    a GIL processes are the only way to run Python in parallel and this is left
    to the measured costs; without one, threads share the objects and pay
    nothing, so processes are charged the graph rate (``OBJECT_PICKLE_BYTE_S``,
    the low end), serially in the parent, which pickles every one.
    """
    if feat.gil_enabled:
        return 0.0
    # An argument whose pickling the probe timed is charged that time instead
    # (``_costs.predict_process``); results are not timed.
    moved = feat.result_bytes
    if feat.arg_pickle_s is None:
        moved += feat.arg_bytes
    return n * moved * OBJECT_PICKLE_BYTE_S


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
    if loops:
        w = min(n, feat.workers or cpus)
        if not feat.unpicklable:
            reasons.append(
                f"{head}: it shows pure-Python loops ({_first(loops)}), so {w} processes, "
                "one per CPU."
            )
            return plan("process", w, {})
        reasons.append(f"Processes are out: {feat.unpicklable}.")
        if not feat.gil_enabled:
            reasons.append(
                f"{head}: it shows pure-Python loops ({_first(loops)}), and without a GIL "
                f"{w} threads, one per CPU, run them at once."
            )
            return plan("thread", w, {})
        reasons.append(
            f"{head}: it shows pure-Python loops ({_first(loops)}), which hold the GIL, so "
            "threads gain nothing: a plain loop."
        )
        return plan("serial", 1, {})
    reasons.append(f"{head}: it shows no loop, I/O or GIL-releasing call, so a plain loop.")
    return plan("serial", 1, {})

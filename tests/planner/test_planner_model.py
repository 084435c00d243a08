"""The planner's policy, table-tested: features in, Plan out, no clock involved."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from gilfree.planner import Features, Finding, choose
from gilfree.planner._machine import MachineCosts
from gilfree.planner._model import (
    DEFAULT_TOTAL,
    MAX_THREADS,
    NOGIL_BUSY_SHARE,
    OBJECT_PICKLE_BYTE_S,
    gil_share,
)

TWO = MachineCosts(cpus=2, spawn_s=0.002, ready_s=0.003, roundtrip_s=50e-6, byte_s=1e-9)
EIGHT = dataclasses.replace(TWO, cpus=8)
MIB = 1 << 20


def _finding(kind: str, what: str, line: int = 10) -> Finding:
    return Finding(kind, what, line, "work", "work.py", f"{what} at line {line}.")


LOOP = (_finding("python_loop", "loop"),)
SLEEP = (_finding("io", "time.sleep"),)
SHA = (_finding("releases_gil", "hashlib.sha256"),)
NUMPY = (_finding("releases_gil", "np.sort (numpy.sort)"),)


def feat(**kw: object) -> Features:
    base: dict[str, object] = {"machine": TWO, "calls": 6, "arg_bytes": 20.0, "result_bytes": 20.0}
    base.update(kw)
    return Features(**base)  # type: ignore[arg-type]


# (name, features, backend, workers check)
CASES = [
    (
        "pure Python CPU -> processes",
        feat(task_seconds=0.01, cpu_fraction=0.99, pair_speedup=1.0, findings=LOOP),
        "process",
        lambda w: w == 2,
    ),
    (
        "pure Python CPU on 8 cores -> 8 processes",
        feat(machine=EIGHT, task_seconds=0.05, cpu_fraction=1.0, pair_speedup=0.97, findings=LOOP),
        "process",
        lambda w: w == 8,
    ),
    (
        "sleep -> many threads",
        feat(task_seconds=0.02, cpu_fraction=0.002, pair_speedup=1.98, findings=SLEEP),
        "thread",
        lambda w: w >= 32,
    ),
    (
        "sleep with 10 items -> 10 threads",
        feat(task_seconds=0.02, cpu_fraction=0.002, pair_speedup=1.98, findings=SLEEP, total=10),
        "thread",
        lambda w: w == 10,
    ),
    (
        "nothing measured, pure-Python loops -> processes",
        feat(task_seconds=None, calls=0, findings=LOOP),
        "process",
        lambda w: w == 2,
    ),
    (
        "nothing measured, arguments cannot be pickled, GIL -> serial",
        feat(task_seconds=None, calls=0, findings=LOOP, unpicklable="argument 0 cannot be pickled"),
        "serial",
        lambda w: w == 1,
    ),
    (
        "nothing measured, arguments cannot be pickled, no GIL -> threads",
        feat(
            task_seconds=None,
            calls=0,
            findings=LOOP,
            unpicklable="argument 0 cannot be pickled",
            gil_enabled=False,
        ),
        "thread",
        lambda w: w == 2,
    ),
    (
        "tiny x*x -> serial",
        feat(task_seconds=1e-7, cpu_fraction=1.0, pair_speedup=None, findings=()),
        "serial",
        lambda w: w == 1,
    ),
    (
        "tiny read slow over few calls (warm-up) -> serial",
        feat(task_seconds=1.5e-6, cpu_fraction=1.0, pair_speedup=1.0, calls=8, total=2_000_000),
        "serial",
        lambda w: w == 1,
    ),
    (
        "tiny with measured pair -> serial",
        feat(task_seconds=2e-6, cpu_fraction=1.0, pair_speedup=1.0, findings=()),
        "serial",
        lambda w: w == 1,
    ),
    (
        "hashlib on 8 MiB arguments -> threads, one per CPU",
        feat(
            task_seconds=0.02,
            cpu_fraction=1.0,
            pair_speedup=1.93,
            findings=SHA,
            arg_bytes=8.0 * MIB,
        ),
        "thread",
        lambda w: w == 2,
    ),
    (
        "numpy on 8 cores -> about one thread per core",
        feat(
            machine=EIGHT,
            task_seconds=0.005,
            cpu_fraction=1.0,
            pair_speedup=1.9,
            findings=NUMPY,
            arg_bytes=2.0 * MIB,
        ),
        "thread",
        lambda w: 6 <= w <= 8,
    ),
    (
        "large array argument through shared memory, GIL-bound -> processes",
        feat(
            task_seconds=0.05,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            shm_bytes=16.0 * MIB,
        ),
        "process",
        lambda w: w == 2,
    ),
    (
        "CPU-bound but huge results: moving them costs more than the work -> not processes",
        feat(
            task_seconds=0.001,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            result_bytes=32.0 * MIB,
        ),
        "serial",
        lambda w: w == 1,
    ),
    (
        "CPU-bound but only 3 short items -> serial",
        feat(task_seconds=0.001, cpu_fraction=1.0, pair_speedup=1.0, findings=LOOP, total=3),
        "serial",
        lambda w: w == 1,
    ),
    (
        "bytecode says sleep, measurement says CPU -> processes",
        feat(task_seconds=0.03, cpu_fraction=0.97, pair_speedup=1.02, findings=SLEEP + LOOP),
        "process",
        lambda w: w == 2,
    ),
    (
        "bytecode says hashlib, but 2 threads did not scale -> processes",
        feat(task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.02, findings=SHA + LOOP),
        "process",
        lambda w: w == 2,
    ),
    (
        "bytecode says pure loop, but threads scaled -> threads",
        feat(
            task_seconds=0.01,
            cpu_fraction=1.0,
            pair_speedup=1.95,
            findings=LOOP,
            arg_bytes=4.0 * MIB,
        ),
        "thread",
        lambda w: w == 2,
    ),
    (
        "unpicklable CPU-bound function -> not processes",
        feat(
            task_seconds=0.01,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            unpicklable="the function cannot be pickled (TypeError: no)",
        ),
        "serial",
        lambda w: w == 1,
    ),
    (
        "user asked for 3 workers on I/O -> 3 threads",
        feat(task_seconds=0.02, cpu_fraction=0.01, pair_speedup=1.99, findings=SLEEP, workers=3),
        "thread",
        lambda w: w == 3,
    ),
    (
        "every probe call failed -> serial",
        feat(
            task_seconds=0.01,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            failures=6,
            failure_type="KeyError",
        ),
        "serial",
        lambda w: w == 1,
    ),
    (
        "no address: a big cluster size is ignored",
        feat(
            task_seconds=0.5,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            dask_threads=64,
            dask_workers=16,
        ),
        "process",
        lambda w: w == 2,
    ),
    (
        "a big Dask cluster for slow CPU-bound calls -> dask",
        feat(
            task_seconds=0.5,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            address="tcp://127.0.0.1:8786",
            dask_threads=64,
            dask_workers=16,
        ),
        "dask",
        lambda w: w == 64,
    ),
    (
        "a Dask cluster for tiny calls -> serial",
        feat(
            task_seconds=1e-6,
            cpu_fraction=1.0,
            pair_speedup=None,
            address="tcp://127.0.0.1:8786",
            dask_threads=64,
            dask_workers=16,
        ),
        "serial",
        lambda w: w == 1,
    ),
    (
        "unreachable Dask cluster -> local",
        feat(
            task_seconds=0.5,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            address="tcp://127.0.0.1:1",
            dask_error="connecting failed (OSError: refused)",
        ),
        "process",
        lambda w: w == 2,
    ),
    (
        "nothing measured, bytecode shows sleep -> threads",
        feat(calls=0, findings=SLEEP),
        "thread",
        lambda w: w == 32,
    ),
    (
        "nothing measured, bytecode shows pure loop -> processes",
        feat(calls=0, findings=LOOP),
        "process",
        lambda w: w == 2,
    ),
    ("nothing measured, nothing found -> serial", feat(calls=0), "serial", lambda w: w == 1),
]


@pytest.mark.parametrize(
    ("features", "backend", "workers_ok"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_policy_table(features: Features, backend: str, workers_ok) -> None:
    plan = choose(features)
    assert plan.backend == backend, plan.explain()
    assert workers_ok(plan.workers), (plan.workers, plan.explain())
    assert plan.chunksize is None
    assert plan.outcomes == {}
    if plan.predicted:
        assert backend in plan.predicted
        # The choice is the fastest prediction or within the simplicity margin of it.
        assert plan.predicted[backend] <= 1.05 * min(plan.predicted.values()) + 1e-12


@pytest.mark.parametrize("features", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_every_reason_cites_a_number_or_a_finding(features: Features) -> None:
    plan = choose(features)
    assert plan.reasons
    for reason in plan.reasons:
        assert re.search(r"\d", reason) or "line" in reason or "pickled" in reason, reason
        assert reason[0].isupper() or reason[0].isdigit(), reason
        assert reason.endswith("."), reason


def test_policy_is_pure() -> None:
    f = CASES[0][1]
    assert choose(f).to_dict() == choose(f).to_dict()


def test_disagreement_says_the_measurement_wins() -> None:
    plan = choose(feat(task_seconds=0.03, cpu_fraction=0.97, pair_speedup=1.0, findings=SLEEP))
    text = " ".join(plan.reasons)
    assert "time.sleep at line 10" in text
    assert "measurement wins" in text
    plan = choose(feat(task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.0, findings=SHA))
    assert "measurement wins" in " ".join(plan.reasons)
    plan = choose(feat(task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.95, findings=LOOP))
    assert "measurement wins" in " ".join(plan.reasons)


def test_agreement_is_not_called_a_disagreement() -> None:
    plan = choose(feat(task_seconds=0.02, cpu_fraction=0.01, pair_speedup=1.99, findings=SLEEP))
    text = " ".join(plan.reasons)
    assert "measurement wins" not in text
    assert "agrees" in text


def test_gil_share_from_measurement_and_bytecode() -> None:
    assert gil_share(feat(cpu_fraction=1.0, pair_speedup=1.0)) == pytest.approx(1.0)
    assert gil_share(feat(cpu_fraction=0.01, pair_speedup=2.0)) <= 0.01
    assert gil_share(feat(cpu_fraction=1.0, pair_speedup=1.25)) == pytest.approx(0.8)
    # Two threads at 2x cannot tell g=0.05 from g=0.5; the bytecode narrows it.
    assert gil_share(feat(cpu_fraction=1.0, pair_speedup=1.95, findings=SHA)) < 0.2
    assert gil_share(feat(cpu_fraction=1.0, pair_speedup=1.95)) == pytest.approx(0.5)


def test_more_waiting_means_more_threads() -> None:
    counts = [
        choose(feat(task_seconds=0.02, cpu_fraction=f, pair_speedup=2.0, findings=SLEEP)).workers
        for f in (0.2, 0.05, 0.005)
    ]
    assert counts == sorted(counts)
    assert counts[-1] <= MAX_THREADS


def test_unknown_total_assumes_default() -> None:
    plan = choose(feat(task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.0))
    assert plan.total == DEFAULT_TOTAL and not plan.total_known
    assert "assumed" in " ".join(plan.reasons)
    plan = choose(feat(task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.0, total=50))
    assert plan.total == 50 and plan.total_known
    assert plan.predicted["serial"] == pytest.approx(0.5)


def test_plan_serialises_and_explains() -> None:
    plan = choose(feat(task_seconds=0.01, cpu_fraction=0.99, pair_speedup=1.0, findings=LOOP))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["backend"] == "process"
    assert data["findings"][0]["line"] == 10
    assert set(data["predicted_seconds"]) == {"serial", "thread", "process"}
    text = plan.explain()
    assert "process" in text and "<- chosen" in text
    assert "10 ms" in text  # the measured time per call
    assert "line 10" in text


def test_busy_machine_trusts_a_gil_releasing_call_over_a_low_reading() -> None:
    quiet = feat(
        task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.05, findings=SHA, arg_bytes=8.0 * MIB
    )
    busy = dataclasses.replace(quiet, busy_share=0.6)
    assert choose(quiet).backend == "serial"
    plan = choose(busy)
    assert plan.backend == "thread", plan.explain()
    assert "busy" in plan.reasons[1] and "60%" in plan.reasons[1]
    # Pure Python on a busy machine stays GIL-bound: no bytecode hint to trust.
    pure = feat(
        task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.05, findings=LOOP, busy_share=0.6
    )
    assert choose(pure).backend == "process"


def test_busy_machine_trusts_pure_python_bytecode_over_a_high_reading() -> None:
    quiet = feat(task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.6, findings=LOOP)
    assert gil_share(quiet) == pytest.approx(1 / 1.6)
    busy = dataclasses.replace(quiet, busy_share=0.5)
    assert gil_share(busy) == pytest.approx(1.0)
    plan = choose(busy)
    assert plan.backend == "process"
    assert "busy" in plan.reasons[1] and "pure-Python" in plan.reasons[1]


def test_busy_machine_does_not_trust_an_io_call_the_calls_never_wait_in() -> None:
    # A CPU-bound loop with a time.sleep on a branch never taken: measured 100%
    # on the CPU (a busy machine can only lower that), so the sleep is not
    # where the time goes. It was trusted, and the plan put the loop on
    # threads in the caller's process, where a later crash killed the caller.
    computing = feat(
        task_seconds=0.01,
        cpu_fraction=1.0,
        pair_speedup=1.05,
        findings=(*SLEEP, *LOOP),
        busy_share=0.6,
    )
    plan = choose(computing)
    assert plan.backend == "process", plan.explain()
    assert any("time.sleep" in r and "the measurement wins" in r for r in plan.reasons)
    # Read as scaling (the busy machine's noise), the loop's bytecode decides.
    faked = dataclasses.replace(computing, pair_speedup=1.5)
    assert choose(faked).backend == "process", choose(faked).explain()
    assert "where calls 100% on the CPU cannot spend their time" in choose(faked).reasons[1]
    # With no two-thread reading at all, the sleep is no hint either.
    unpaired = dataclasses.replace(computing, pair_speedup=None, busy_share=0.0)
    assert gil_share(unpaired) == pytest.approx(1.0)
    assert choose(unpaired).backend == "process", choose(unpaired).explain()
    # Calls that do wait (20% on the CPU) still have their sleep trusted.
    waiting = dataclasses.replace(computing, cpu_fraction=0.2)
    assert choose(waiting).backend == "thread", choose(waiting).explain()


# -- every comparison in explain() agrees with its own numbers ----------------------
from gilfree.planner._model import COMPARISONS, compare  # noqa: E402

_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_TIME = r"(\d[\d.]*) (ns|us|ms|s)\b"
_WORDS = "|".join(re.escape(w) for _b, w in COMPARISONS)
_COMPARED = re.compile(_TIME + r"(?: here)?, (" + _WORDS + r") (?:the )?" + _TIME)


def _seconds(num: str, unit: str) -> float:
    return float(num) * _UNITS[unit]


# Made-up profiles across the range where the words change: round trips from
# far below to far above the call time, start-up against small and large jobs.
PROFILES = [
    feat(
        machine=dataclasses.replace(TWO, roundtrip_s=rt, spawn_s=sp),
        task_seconds=t,
        cpu_fraction=1.0,
        pair_speedup=1.0,
        findings=LOOP,
        total=total,
    )
    for rt in (5e-6, 50e-6, 500e-6)
    for sp in (0.001, 0.05)
    for t in (2e-5, 1e-4, 1e-3, 0.03, 0.5)
    for total in (10, 1000, 100_000)
] + [
    feat(task_seconds=0.01, cpu_fraction=0.99, pair_speedup=1.0, findings=LOOP, crashes=1, total=5)
]


@pytest.mark.parametrize("features", PROFILES)
def test_explain_comparisons_agree_with_their_numbers(features: Features) -> None:
    text = choose(features).explain()
    for a_num, a_unit, words, b_num, b_unit in _COMPARED.findall(text):
        a, b = _seconds(a_num, a_unit), _seconds(b_num, b_unit)
        # The numbers are printed to 3 figures: judge on the printed values.
        assert compare(a, b) == words, (a, words, b, text)
        if words == "small next to":
            assert a <= b / 10
        if words == "large next to":
            assert a >= 10 * b


def test_the_profiles_cover_the_comparison_words() -> None:
    # The test above must see comparisons to check, of most kinds.
    seen = {m[2] for f in PROFILES for m in _COMPARED.findall(choose(f).explain())}
    assert {"small next to", "less than", "more than", "large next to"} <= seen


@pytest.mark.parametrize(
    ("a", "b", "words"),
    [
        (1, 100, "small next to"),
        (1, 10, "less than"),
        (1, 1, "about the same as"),
        (1.4, 1, "about the same as"),
        (5, 1, "more than"),
        (100, 1, "large next to"),
        (18.3e-6, 13.7e-6, "about the same as"),
    ],
)
def test_compare_words(a: float, b: float, words: str) -> None:
    assert compare(a, b) == words


def test_a_crash_in_the_probe_keeps_a_fast_function_off_this_process() -> None:
    tiny = feat(task_seconds=1e-7, cpu_fraction=1.0, pair_speedup=None, crashes=2)
    plan = choose(tiny)
    assert plan.backend == "process" and plan.workers == 2
    assert "crashed the worker" in plan.explain()
    unsendable = dataclasses.replace(tiny, unpicklable="the function cannot be pickled")
    assert choose(unsendable).backend == "serial"


def test_a_hung_probe_call_keeps_a_fast_function_off_this_process() -> None:
    # A call stopped at timeout= on a worker could only be abandoned on a thread
    # here; the plan said "none crashed it" and ran the rest inline.
    hung = feat(task_seconds=1e-7, cpu_fraction=1.0, pair_speedup=None, hangs=1)
    plan = choose(hung)
    assert plan.backend == "process", plan.explain()
    assert "ran past timeout=" in plan.explain() and "crashed" not in plan.explain()
    both = dataclasses.replace(hung, crashes=1)
    assert "crashed the worker" in choose(both).explain()
    assert "ran past timeout=" in choose(both).explain()


# -- a free-threaded interpreter: the measured thread scaling decides -----------------
NOGIL = {"gil_enabled": False, "free_threaded_build": True}

FREE_THREADED_CASES = [
    (
        "pure Python CPU, 2 threads at 1.99x -> threads",
        feat(
            task_seconds=0.02, cpu_fraction=1.0, pair_speedup=1.99, findings=LOOP, total=48, **NOGIL
        ),
        "thread",
        lambda w: w == 2,
    ),
    (
        "pure Python CPU on 8 cores -> about one thread per core",
        feat(
            machine=EIGHT,
            task_seconds=0.05,
            cpu_fraction=1.0,
            pair_speedup=1.97,
            findings=LOOP,
            **NOGIL,
        ),
        "thread",
        lambda w: 8 <= w <= 16,
    ),
    (
        "large object-graph arguments: threads share them, processes would pickle them",
        feat(
            task_seconds=0.03,
            cpu_fraction=1.0,
            pair_speedup=1.9,
            findings=LOOP,
            arg_bytes=4.0 * MIB,
            total=16,
            **NOGIL,
        ),
        "thread",
        lambda w: w >= 2,
    ),
    (
        "busy machine read 1.3x, the bytecode shows pure-Python loops -> threads all the same",
        feat(
            task_seconds=0.02,
            cpu_fraction=1.0,
            pair_speedup=1.3,
            findings=LOOP,
            busy_share=0.5,
            total=48,
            **NOGIL,
        ),
        "thread",
        lambda w: w >= 2,
    ),
    (
        "no scaling even without a GIL (a lock) -> processes",
        feat(
            task_seconds=0.02, cpu_fraction=1.0, pair_speedup=1.0, findings=LOOP, total=48, **NOGIL
        ),
        "process",
        lambda w: w == 2,
    ),
    (
        "busy machine (17% of the probe waiting) read 1.00x for pure-Python loops -> threads",
        feat(
            task_seconds=0.02,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            busy_share=0.17,
            total=100,
            **NOGIL,
        ),
        "thread",
        lambda w: w == 2,
    ),
    (
        "2 MiB object graph per call, no scaling, idle machine -> not processes (pickling)",
        feat(
            task_seconds=0.012,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            arg_bytes=2.0 * MIB,
            total=16,
            **NOGIL,
        ),
        "serial",
        lambda w: w == 1,
    ),
    (
        "2 MiB object graph per call but 1 s of work, no scaling -> processes",
        feat(
            task_seconds=1.0,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            arg_bytes=2.0 * MIB,
            total=16,
            **NOGIL,
        ),
        "process",
        lambda w: w == 2,
    ),
    (
        "free-threaded build with the GIL turned back on -> processes",
        feat(
            task_seconds=0.02,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            total=48,
            free_threaded_build=True,
        ),
        "process",
        lambda w: w == 2,
    ),
]


@pytest.mark.parametrize(
    ("features", "backend", "workers_ok"),
    [c[1:] for c in FREE_THREADED_CASES],
    ids=[c[0] for c in FREE_THREADED_CASES],
)
def test_free_threaded_policy_table(features: Features, backend: str, workers_ok) -> None:
    plan = choose(features)
    assert plan.backend == backend, plan.explain()
    assert workers_ok(plan.workers), (plan.workers, plan.explain())
    text = plan.explain()
    assert plan.profile.gil_enabled is features.gil_enabled
    if features.gil_enabled:
        assert "GIL              enabled" in text
        assert "GIL is enabled" in text  # a free-threaded build with the GIL back on
    else:
        assert "disabled (free-threaded interpreter)" in text
        assert "runs without a GIL" in text
        assert "holds the GIL" not in text and "own GIL" not in text
        assert "releases the GIL but needs a core" not in text


def test_object_graph_pickling_is_charged_only_without_a_gil() -> None:
    """With a GIL, processes are the only parallel Python and their measured
    costs stand; without one, threads share the objects, so processes pay the
    object-graph pickling rate, and the plan says so."""
    graph = {
        "task_seconds": 0.012,
        "cpu_fraction": 1.0,
        "pair_speedup": 1.0,
        "findings": LOOP,
        "arg_bytes": 2.0 * MIB,
        "total": 16,
    }
    with_gil = choose(feat(**graph))
    without = choose(feat(**graph, **NOGIL))
    extra = 16 * (2.0 * MIB + 20.0) * OBJECT_PICKLE_BYTE_S  # arguments and results
    assert without.predicted["process"] == pytest.approx(with_gil.predicted["process"] + extra)
    assert without.predicted["thread"] == pytest.approx(with_gil.predicted["thread"])
    assert "as object graphs" in without.explain()
    assert "as object graphs" not in with_gil.explain()


@pytest.mark.parametrize(
    ("busy", "backend"), [(0.0, "process"), (NOGIL_BUSY_SHARE - 0.01, "process"), (0.17, "thread")]
)
def test_without_a_gil_a_low_reading_on_a_busy_machine_is_not_trusted(
    busy: float, backend: str
) -> None:
    """No GIL: a low 2-thread reading while other programs held the CPUs is
    starvation, which would starve worker processes alike; only on an idle
    machine does it show contention that processes avoid."""
    plan = choose(
        feat(
            task_seconds=0.02,
            cpu_fraction=1.0,
            pair_speedup=1.0,
            findings=LOOP,
            busy_share=busy,
            total=100,
            **NOGIL,
        )
    )
    assert plan.backend == backend, plan.explain()


# What the probe timed pickling one argument in the parent (issue 15): an
# object graph pickles 10-20x slower than the flat buffer the machine's byte
# cost is measured on, and the worker unpickles it again.
GRAPH_ON_GIL = {
    "task_seconds": 0.005,
    "cpu_fraction": 1.0,
    "pair_speedup": None,
    "pair_skipped": "the arguments are costly to send",
    "findings": LOOP,
    "arg_bytes": 2.0 * MIB,
    "total": 64,
}
ARG_PICKLE_CASES = [
    (
        "2 MiB argument, pickling not timed, GIL -> processes on the byte cost alone",
        feat(**GRAPH_ON_GIL),
        "process",
    ),
    (
        "2 MiB object graph timed at 30 ms to pickle, 5 ms of work, GIL -> a plain loop",
        feat(**GRAPH_ON_GIL, arg_pickle_s=0.03),
        "serial",
    ),
    (
        "2 MiB object graph timed at 30 ms to pickle but 1 s of work, GIL -> processes",
        feat(**{**GRAPH_ON_GIL, "task_seconds": 1.0}, arg_pickle_s=0.03),
        "process",
    ),
    (
        "2 MiB object graph timed at 40 ms, no GIL, pair not measured -> threads",
        feat(**{**GRAPH_ON_GIL, "task_seconds": 0.013}, arg_pickle_s=0.04, **NOGIL),
        "thread",
    ),
    (
        "starved pair (no reading), sha256 on 8 MiB, GIL -> threads from the bytecode",
        feat(
            task_seconds=0.01,
            cpu_fraction=1.0,
            pair_skipped="the second of the two threads never got to take a call",
            findings=SHA,
            arg_bytes=8.0 * MIB,
            total=600,
        ),
        "thread",
    ),
    (
        "starved pair (no reading), pure-Python loop, no GIL -> threads",
        feat(
            task_seconds=0.01,
            cpu_fraction=1.0,
            pair_skipped="the second of the two threads never got to take a call",
            findings=LOOP,
            total=400,
            **NOGIL,
        ),
        "thread",
    ),
    (
        "tiny calls, no GIL, pair skipped as too short -> a plain loop, not threads",
        feat(
            task_seconds=4e-7,
            cpu_fraction=1.0,
            pair_skipped="its calls are shorter than 20 us",
            calls=60,
            total=100_000,
            **NOGIL,
        ),
        "serial",
    ),
    (
        "starved pair (no reading), pure-Python loop, GIL -> processes",
        feat(
            task_seconds=0.01,
            cpu_fraction=1.0,
            pair_skipped="the second of the two threads never got to take a call",
            findings=LOOP,
            total=400,
        ),
        "process",
    ),
]


@pytest.mark.parametrize(
    ("features", "backend"),
    [c[1:] for c in ARG_PICKLE_CASES],
    ids=[c[0] for c in ARG_PICKLE_CASES],
)
def test_timed_argument_pickling_and_starved_pairs_table(features: Features, backend: str) -> None:
    plan = choose(features)
    assert plan.backend == backend, plan.explain()
    if features.pair_speedup is None:
        assert f"Thread scaling was not measured: {features.pair_skipped}." in plan.reasons


def test_timed_argument_pickling_is_charged_to_processes_in_the_parent_and_the_workers() -> None:
    untimed = choose(feat(**GRAPH_ON_GIL))
    timed = choose(feat(**GRAPH_ON_GIL, arg_pickle_s=0.03))
    # Pickled in the parent, one after another: the job takes at least 64 x 30 ms.
    assert timed.predicted["process"] >= 64 * 0.03 > 4 * untimed.predicted["process"]
    assert timed.predicted["serial"] == untimed.predicted["serial"]
    assert timed.predicted["thread"] == untimed.predicted["thread"]
    assert any("30 ms a call to pickle each 2 MiB argument" in r for r in timed.reasons)
    assert not any("a call to pickle each" in r for r in untimed.reasons)
    # Without a GIL the timed pickling replaces the assumed object-graph rate
    # for arguments (results are still charged at that rate): no double charge.
    nogil = choose(feat(**GRAPH_ON_GIL, arg_pickle_s=0.03, **NOGIL))
    extra = 64 * 20.0 * OBJECT_PICKLE_BYTE_S  # the results only
    assert nogil.predicted["process"] == pytest.approx(timed.predicted["process"] + extra)


def test_a_probe_that_sent_fewer_samples_says_so_in_the_reasons() -> None:
    why = "The probe sent its workers 3 of the 16 samples (1 call alone, then 2 on two threads)."
    plan = choose(feat(**GRAPH_ON_GIL, sent_fewer=why))
    assert why in plan.reasons
    assert why not in choose(feat(**GRAPH_ON_GIL)).reasons


def test_pickling_stopped_at_a_calls_time_is_a_floor_the_reasons_call_one() -> None:
    # The forked probe stops pickling the first argument once it took longer
    # than a call (processes cannot win then): what it timed is a floor, and
    # the bytes it wrote so far too.
    floor = choose(
        feat(
            **{**GRAPH_ON_GIL, "arg_bytes": 0.5 * MIB}, arg_pickle_s=0.006, arg_pickle_partial=True
        )
    )
    assert floor.backend == "serial", floor.explain()
    assert floor.predicted["process"] >= 64 * 0.006
    assert any(
        "charged at least 6 ms a call to pickle each argument" in r
        and "stopped after 512 KiB, once it took longer than a call" in r
        for r in floor.reasons
    ), floor.explain()
    whole = choose(feat(**GRAPH_ON_GIL, arg_pickle_s=0.006))
    assert not any("at least" in r for r in whole.reasons), whole.explain()


def test_a_python_loop_is_not_said_to_hold_a_gil_the_interpreter_runs_without() -> None:
    from gilfree.planner._bytecode import analyze

    def work(n: int) -> int:
        total = 0
        for i in range(n):
            total += i
        return total

    found = tuple(analyze(work).findings)
    assert [f.kind for f in found] == ["python_loop"]
    for gil in (True, False):
        features = feat(
            task_seconds=0.01, cpu_fraction=1.0, pair_speedup=1.0, findings=found, gil_enabled=gil
        )
        text = choose(features).explain()
        assert ("that holds the GIL" in text) is gil, text
        assert ("threads run at once here (no GIL)" in text) is not gil, text

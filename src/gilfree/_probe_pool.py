"""The planner's probe with every call on a backend: the process pool the job
will use (or threads, for a function that cannot be pickled).

``run_probe`` runs the serial phase as ordinary tasks through ``Timed`` (one
task per call, in chunks of 1, 1, then enough for the phase) while one
``PairProbe`` task runs the two-thread phase on a second worker at the same
time; see ``gilfree._auto`` for why, and ``planner._probe`` for what is measured.

Every sample a worker runs is pickled in the parent, piped and unpickled. For
large arguments (a 200,000-tuple list, an 8 MiB buffer) that costs as much as
the call, and the two-thread task used to carry half of the samples: a plan
for threads then cost as much as running the job on processes. So the parent
first sizes one argument, and when sending all the samples would take more
than ``SEND_SHARE`` of the budget, the probe sends only ``LEAN_SERIAL`` calls
and a pair of ``LEAN_PAIR`` (one call per thread), and the plan says so.
"""

from __future__ import annotations

import math
import pickle
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _serialize
from ._options import Options
from .backends import Backend, StreamJob
from .errors import SerializationError, WorkerDied
from .planner import _machine
from .planner import _probe as probing
from .planner._costs import PICKLE_FACTOR, SHM_BYTE_S
from .planner._features import gil_enabled
from .planner._plan import format_bytes
from .planner._probe_sizes import pickled_size
from .planner._reading import OBJECT_PICKLE_BYTE_S

#: Seconds between health checks of the probing backend while waiting for outcomes.
HEALTH_CHECK_S = 1.0
#: The serial phase stops once this many calls failed and no fewer failed than
#: succeeded: each crash costs a worker, and failures say nothing about time.
MAX_PROBE_FAILURES = 2
#: The probe sends fewer samples when sending them all (pickling in the parent,
#: the pipe, unpickling in the worker) would take more than this share of its
#: budget. The graph workload of benchmarks/bench_auto.py (16 calls of ~30 ms,
#: each on a 200,000-tuple list, ~2.6 MB pickled) spent ~0.5 s sending 8 samples
#: to the two-thread task on 3.13t, more than the whole job takes on threads.
SEND_SHARE = 0.1
#: What the probe sends then: serial calls, and calls for the two threads (one each).
LEAN_SERIAL = 1
LEAN_PAIR = 2


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
    known: dict[int, tuple[int, list[int]]] = {}
    sent: dict[int, Any] = {}  # what goes to the workers in place of samples[i]
    lean = False
    if backend.name == "process" and n > LEAN_SERIAL + LEAN_PAIR:
        lean = _lean(samples, budget, known, sent, result)
    if lean:
        split = LEAN_SERIAL
        stop = split if _holds_the_gil(fn, result) else split + LEAN_PAIR
        result.sent_fewer = _sent_fewer_sentence(stop, split, n, known[0], sent[-1], budget)
        for i in range(1, stop):
            sent[i] = _packed(samples[i])[0]
    else:
        split, stop = (n - n // 2 if n >= probing.PAIR_RESERVE + 2 else n), n
    task_opts = opts.with_(retries=0, chunksize=None, progress=False)
    pair_job = None
    serial_job = StreamJob(_Timed(fn), task_opts)

    def submit_pair() -> None:
        nonlocal pair_job
        if split >= stop:
            result.pair_skipped = (
                result.pair_skipped or "there were no samples left for the two-thread measurement"
            )
            return
        pair_cap = probing.PAIR_SHARE * budget
        pair_job = StreamJob(
            _PairProbe(fn, pair_cap, lean=lean, timeout=opts.timeout),
            task_opts.with_(timeout=None if opts.timeout is None else opts.timeout + pair_cap),
        )
        backend.submit(pair_job, 0, [[sent.get(i, samples[i]) for i in range(split, stop)]])

    try:
        if lean:
            _lean_serial_phase(backend, serial_job, sent, split, result, submit_pair)
        else:
            submit_pair()
            _serial_phase(
                backend, serial_job, samples, split, result, probing.SERIAL_SHARE * budget
            )
        if pair_job is not None:
            _merge_pair(result, _wait_for(backend, pair_job, 1), split, stop)
    except BaseException:
        serial_job.cancelled = True
        if pair_job is not None:
            pair_job.cancelled = True
        raise
    probing.measure_sizes(
        fn, samples, result, count=1 if lean else probing.SIZE_SAMPLES, known=known
    )
    result.failures = sum(1 for ok, _ in result.outcomes.values() if not ok)
    result.seconds = time.perf_counter() - started
    return result


def _lean(
    samples: Sequence[Any],
    budget: float,
    known: dict[int, tuple[int, list[int]]],
    sent: dict[int, Any],
    result: probing.ProbeResult,
) -> bool:
    """Whether sending every sample would cost more than ``SEND_SHARE`` of
    ``budget``, judged on the first. Its pickled sizes go in ``known[0]``
    (``measure_sizes`` needs them later), what to send for it in ``sent[0]``
    (the pickle just made, so a large object graph is pickled once), the
    estimated cost of sending one sample in ``sent[-1]``, and the time its
    pickling took in ``result.arg_pickle_s`` (the model charges processes that)."""
    t0 = time.perf_counter()
    try:
        sent[0], inband, oob = _packed(samples[0])
    except Exception:  # the pool reports it, for that item alone
        return False
    result.arg_pickle_s = pickle_s = time.perf_counter() - t0
    known[0] = (inband, oob)
    shm = sum(b for b in oob if b >= probing.SHM_THRESHOLD)
    flat = inband + sum(oob) - shm
    # Bytes through the pipe, pickled at the machine's measured rate; without a
    # GIL, at the rate of object graphs (the model charges processes the same,
    # see planner._model._object_pickling). Pickling the sample just now took
    # pickle_s, and the worker unpickles it: a measured floor.
    rate = _machine.machine_costs().byte_s * PICKLE_FACTOR
    if not gil_enabled():
        rate += OBJECT_PICKLE_BYTE_S
    sent[-1] = each = max(flat * rate + shm * SHM_BYTE_S, 2 * pickle_s)
    return len(samples) * each > SEND_SHARE * budget


def _sent_fewer_sentence(
    stop: int, split: int, n: int, sizes: tuple[int, list[int]], each: float, budget: float
) -> str:
    alone = f"{split} call{'s' if split != 1 else ''} alone"
    how = f"{alone}, then {stop - split} on two threads at once" if stop > split else alone
    return (
        f"The probe sent its workers {stop} of the {n} samples ({how}): an argument pickles "
        f"to {format_bytes(sizes[0] + sum(sizes[1]))}, about {probing.format_seconds(each)} "
        f"to send, and all {n} would have taken {probing.format_seconds(n * each)} of its "
        f"{probing.format_seconds(budget)} budget."
    )


class _Packed:
    """A sample the parent pickled already (to size it): the worker unpickles
    it before timing the call, and the pool sends the bytes as they are."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> Any:
        try:
            return _serialize.loads(self.data)
        except Exception as exc:
            raise SerializationError(
                f"a probe sample could not be unpickled in the worker: {type(exc).__name__}: {exc}",
                what="argument",
            ) from None


def _unpacked(item: Any) -> Any:
    return item.load() if isinstance(item, _Packed) else item


def _packed(obj: Any) -> tuple[Any, int, list[int]]:
    """``(what to send, in-band pickled size, out-of-band buffer sizes)``.

    Plain pickle, as the pool sends data, kept as a ``_Packed`` when it is whole
    and loads anywhere: no out-of-band buffers (NumPy arrays, which the pool
    sends through shared memory) and no reference into ``__main__`` (which a
    forkserver worker may not load; the pool resends those by value). Anything
    else goes as it is, and its sizes come from ``pickled_size``."""
    oob: list[int] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        oob.append(buf.raw().nbytes)
        return False

    try:
        data = pickle.dumps(obj, 5, buffer_callback=out_of_band)
    except Exception:
        inband, oob = pickled_size(obj)
        return obj, inband, oob
    if oob or b"__main__" in data:
        return obj, len(data), oob
    return _Packed(data), len(data), []


#: Why two threads are not timed when ``holds_the_gil``.
GIL_HELD = (
    "on this interpreter, which has a GIL, the bytecode shows only pure-Python loops, which hold it"
)


def holds_the_gil(fn: Callable[[Any], Any]) -> bool:
    """On a GIL build, whether the bytecode shows only pure-Python loops (no
    I/O, no call that releases the GIL): two threads would then read 1.0x, and
    with large arguments timing them costs samples (and their sending) for
    nothing the bytecode does not already say."""
    from .planner import _bytecode

    if not gil_enabled():
        return False
    try:
        findings = _bytecode.analyze(fn).findings
    except Exception:  # reading bytecode must never stop a job
        return False
    return bool(findings) and all(f.kind == "python_loop" for f in findings)


def _holds_the_gil(fn: Callable[[Any], Any], result: probing.ProbeResult) -> bool:
    """``holds_the_gil``; if so, ``result.pair_skipped`` says so."""
    if not holds_the_gil(fn):
        return False
    result.pair_skipped = "the arguments are costly to send, and " + GIL_HELD
    return True


def _lean_serial_phase(
    backend: Backend,
    job: StreamJob,
    sent: dict[int, Any],
    limit: int,
    result: probing.ProbeResult,
    submit_pair: Callable[[], None],
) -> None:
    """The serial phase for costly samples: each its own task, all sent at once
    (the first before the two-thread task, so a worker starts on it while the
    parent pickles the rest): their round trips overlap, and ``Timed`` times
    each call alone wherever it runs."""
    backend.submit(job, 0, [sent[0]])
    submit_pair()
    for i in range(1, limit):
        backend.submit(job, i, [sent[i]])
    events = _wait_for(backend, job, limit)
    # In sample order, so the first call counts as the first (a warm-up).
    for ok, start, payload in sorted(events, key=lambda ev: ev[1]):
        if ok:
            for k, measured in enumerate(payload):
                probing.add_measured(result, start + k, measured)
        else:
            result.outcomes[start] = (False, payload)
            result.crashes += isinstance(payload, WorkerDied)


class _Timed(probing.Timed):
    """``Timed``, whose call fails as the task's own would when its result cannot
    be pickled: the worker would otherwise name the wrapper (``Measured``)."""

    __slots__ = ()

    def __call__(self, item: Any) -> probing.Measured:
        measured = super().__call__(_unpacked(item))
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


class _PairProbe(probing.PairProbe):
    """``PairProbe`` on samples that may come packed (``_Packed``)."""

    __slots__ = ()

    def __call__(self, items: list[Any]) -> probing.ProbeResult:
        return super().__call__([_unpacked(item) for item in items])


def _pickles(value: Any) -> None:
    """Raise what pickling ``value`` for the trip home raises (its large buffers
    are not copied by plain pickle: they travel out of band and cannot fail)."""
    try:
        pickle.dumps(value, 5, buffer_callback=_out_of_band)
    except Exception:
        _serialize.dumps(value)  # what the worker falls back to


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
    result: probing.ProbeResult, events: list[tuple[bool, int, Any]], offset: int, stop: int
) -> None:
    ok, _index, payload = events[0]
    if not ok:
        # Several items ran in that one task: none can be blamed, so each of
        # them runs again as a task of its own, where a culprit fails alone.
        result.pair_skipped = (
            f"the two-thread measurement stopped ({type(payload).__name__}); its samples "
            "run again, each alone"
        )
        result.crashes += isinstance(payload, WorkerDied)
        result.suspects = list(range(offset, stop))
        return
    pair: probing.ProbeResult = payload[0]
    for k, (done, value) in pair.outcomes.items():
        if not done:
            exc, tb = value
            value = _serialize.with_remote_traceback(exc, tb)
        result.outcomes[offset + k] = (done, value)
    result.suspects.extend(offset + k for k in pair.suspects)  # calls past timeout=
    result.pair_calls = pair.pair_calls
    result.pair_wall = pair.pair_wall
    result.pair_cpu = pair.pair_cpu
    result.pair_windows = pair.pair_windows
    result.overlap = pair.overlap
    result.pair_skipped = pair.pair_skipped

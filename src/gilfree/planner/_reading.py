"""How the policy reads a measurement: its thresholds, and the GIL share ``g``.

Shared by the policy (``_model``) and its explanation (``_reasons``): a
threshold that decides a plan and the words that describe it are the same
constant. ``gil_share`` is the ``g`` of the thread model (see ``_model``);
``_bytecode_overrules`` says when the bytecode is trusted over a 2-thread
reading taken on a busy machine.
"""

from __future__ import annotations

from ._bytecode import Finding
from ._features import Features

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
# Without a GIL the same holds from a lower share: two threads then need two
# free cores, so a CPU other programs hold part of the time reads as poor
# scaling, and worker processes would be starved alike. On 3.13t on the 2-CPU
# VM (load 5-7) cpu_bound read 1.00x at 17% busy and 2.00x at 0% in one
# minute; the plan flipped between processes and threads (benchmarks/bench_auto.py).
NOGIL_BUSY_SHARE = 0.1
# Pickling plus unpickling an object graph (lists, tuples, dicts of small
# objects), per pickled byte: 19-47 ns/B measured (see _model._object_pickling).
OBJECT_PICKLE_BYTE_S = 20e-9
ORDER = ("serial", "thread", "process", "dask")
# Calls shorter than this get no two-thread reading (the probe skips the pair,
# planner._probe_worker.PAIR_MIN_CALL_S, or one thread runs every sample before
# the other starts). They are assumed not to scale, even without a GIL: on
# 3.13t `x * x` ran 2x slower on 2 threads than in a loop (0.06 s against
# 0.03 s for 500,000 items, benchmarks/bench_auto.py, tiny), the threads
# contending for the same objects (the function, its globals, the results).
UNTIMED_PAIR_TINY_S = 20e-6
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
    hinted = bool(feat.kinds("releases_gil") or waiting_io(feat))
    s = feat.pair_speedup
    if s is None:
        t = feat.task_seconds
        if not hinted and t is not None and t < UNTIMED_PAIR_TINY_S:
            # Too short to time two threads on (the probe skips them): no
            # scaling is assumed, GIL or not (see UNTIMED_PAIR_TINY_S) --
            # whatever share of a 2 us call the CPU clock read (39% under
            # load, and the plan was 4 threads "for C code": a flaky test).
            return 1.0
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


def _bytecode_overrules(feat: Features) -> str | None:
    """On a busy machine the 2-thread reading is unreliable both ways: other
    programs holding the CPUs hide real scaling, and their comings and goings
    can fake some. Only then, and only when the bytecode is unambiguous, the
    bytecode decides: "releases" (a GIL-releasing or I/O call, reading under
    PAIR_TELLS_BELOW) or "holds" (pure-Python loops only, reading above
    NO_SCALING_BELOW)."""
    s = feat.pair_speedup
    busy = BUSY_SHARE if feat.gil_enabled else NOGIL_BUSY_SHARE
    if s is None or feat.busy_share < busy:
        return None
    hints = feat.kinds("releases_gil") or waiting_io(feat)
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


def waiting_io(feat: Features) -> list[Finding]:
    """The I/O calls the bytecode shows, unless the calls measured mostly on the
    CPU: then they are not where the time goes (a ``time.sleep`` on a branch
    never taken), and a busy machine only ever lowers that reading. Trusting
    one put a CPU-bound function on threads in the caller under load."""
    f = feat.cpu_fraction
    return feat.kinds("io") if f is None or f <= COMPUTES_ABOVE else []

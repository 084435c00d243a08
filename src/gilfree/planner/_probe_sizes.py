"""Pickled sizes of a function, its arguments and its results.

What a process backend would send: cloudpickle, protocol 5, with NumPy buffers
of ``SHM_THRESHOLD`` or more counted apart (they go through shared memory).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

from ._probe_result import ProbeResult

# Pickled sizes are measured on this many samples (pickling is not free).
SIZE_SAMPLES = 3
# NumPy buffers of at least this size go to process workers through shared
# memory (SPEC: "NumPy arrays of 1 MiB or more ... without copying").
SHM_THRESHOLD = 1 << 20


def measure_sizes(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    result: ProbeResult,
    *,
    count: int = SIZE_SAMPLES,
    known: dict[int, tuple[int, list[int]]] | None = None,
) -> None:
    """Pickled sizes of up to ``count`` samples that ran (``known``: sizes
    already measured, by sample index, from ``pickled_size``); records what
    cannot be pickled (then processes are out)."""
    import cloudpickle

    try:
        result.fn_bytes = len(cloudpickle.dumps(fn, protocol=5))
    except Exception as exc:
        result.unpicklable = f"the function cannot be pickled ({type(exc).__name__}: {exc})"
        return
    ran = sorted(i for i, (ok, _) in result.outcomes.items() if ok)[:count]
    k = len(ran)
    if k == 0:
        # Nothing ran: maybe because no sample could be sent to the probe's
        # process (48 locks: every call failed, and the plan took processes on
        # the bytecode alone, failing every item a thread could have run).
        failed = sorted(result.outcomes)[:count]
        for i in failed:
            try:
                pickled_size(samples[i])
            except Exception as exc:
                result.unpicklable = f"argument {i} cannot be pickled ({type(exc).__name__}: {exc})"
                return
        return
    arg_in, arg_shm, res_in = 0.0, 0.0, 0.0
    for i in ran:
        try:
            inband, oob = known[i] if known and i in known else pickled_size(samples[i])
        except Exception as exc:
            result.unpicklable = f"argument {i} cannot be pickled ({type(exc).__name__}: {exc})"
            return
        big = sum(b for b in oob if b >= SHM_THRESHOLD)
        arg_in += inband + (sum(oob) - big)
        arg_shm += big
        _ok, value = result.outcomes[i]
        try:
            inband, oob = pickled_size(value)
        except Exception as exc:
            result.unpicklable = (
                f"the result of sample {i} cannot be pickled ({type(exc).__name__}: {exc})"
            )
            return
        res_in += inband + sum(oob)
    result.arg_bytes = arg_in / k
    result.shm_bytes = arg_shm / k
    result.result_bytes = res_in / k


def pickled_size(obj: Any) -> tuple[int, list[int]]:
    """In-band pickle size and the sizes of out-of-band buffers (not copied).

    Plain pickle first, cloudpickle when that fails, as the process pool sends
    data (``gilfree._serialize.dumps_data``): cloudpickle's hook runs for every
    container, which costs a large object graph half as much again."""
    import cloudpickle

    buffers: list[int] = []

    def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
        buffers.append(buf.raw().nbytes)
        return False  # out of band: counted, not copied

    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=keep_out_of_band)
    except Exception:
        buffers.clear()
        data = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_out_of_band)
    return len(data), buffers

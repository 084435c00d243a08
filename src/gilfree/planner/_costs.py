"""Predicted time of a whole job on each backend (see ``_model`` for the model).

The constants are the per-item and per-chunk costs of gilfree's own backends;
each comment says where its value comes from.
"""

from __future__ import annotations

import math

from ._features import Features

# Thread backend: handing a chunk to a thread and collecting its results (queue,
# wake-up), per chunk and per item, paid under the GIL; starting a thread.
# gilfree's thread backend ran 2M `x * x` calls 0.03-0.06 s slower than a loop
# (benchmarks/bench_auto.py, tiny), i.e. well under 0.1 us per item.
THREAD_CHUNK_S = 30e-6
THREAD_ITEM_S = 0.1e-6
THREAD_START_S = 100e-6
# The thread backend's chunks hold about this much work (backends/_thread.py).
THREAD_CHUNK_TARGET_S = 0.002
# Process backend: per-item cost in the parent (pickling an item into a chunk,
# unpickling and storing its result) beyond the bytes themselves. gilfree's pool
# ran 2M `x * x` calls in ~2.2 s on 2 CPUs (bench_auto, tiny): ~1 us per item.
PROCESS_ITEM_S = 1e-6
# The pool's round trip per chunk relative to the raw pipe ping-pong measured in
# _machine (pickling the chunk, the manager thread, futures).
POOL_ROUNDTRIP_FACTOR = 3.0
# Pickling costs about as much again as moving the bytes through the pipe.
PICKLE_FACTOR = 2.0
# Sending an argument through shared memory, per byte: a memcpy is ~0.2 ns/B,
# but gilfree's process pool measured 20-90 ms per 16 MiB array (segment
# creation, copy, page faults on both sides) in benchmarks/bench_auto.py on a
# busy 2-CPU VM, i.e. 1-5 ns/B; we take the low end.
SHM_BYTE_S = 1.2e-9
# Fixed cost of making a process pool (pipes, manager thread) besides the workers.
POOL_FIXED_S = 0.01
# The engine's adaptive chunker aims at chunks of about this much work and at
# least CHUNKS_PER_WORKER chunks per worker so the last ones balance.
TARGET_CHUNK_S = 0.02
CHUNKS_PER_WORKER = 4
# Dask, measured by benchmarks/bench_dask.py on a local 2-worker cluster: a
# one-item task through gilfree costs ~1.8-3 ms (Client.map's own: ~1.5 ms), a
# gilfree.map call a fixed ~28 ms (connect, scatter the function, first task).
# A remote cluster adds network latency, so the fixed cost keeps some margin.
# Data moves over TCP at ~1 GB/s plus pickling.
DASK_TASK_S = 2.5e-3
DASK_CONNECT_S = 0.05
DASK_BYTE_S = 2e-9


def thread_speedup(k: int, g: float, f: float, cpus: int) -> float:
    return 1.0 / max(1.0 / k, g, f / cpus)


def predict_serial(n: int, t: float) -> float:
    return n * t


def predict_thread(n: int, t: float, k: int, g: float, f: float, cpus: int) -> float:
    by_work = math.ceil(n * t / THREAD_CHUNK_TARGET_S) if t > 0 else 0
    chunks = max(1, min(n, max(CHUNKS_PER_WORKER * k, by_work)))
    overhead = chunks * THREAD_CHUNK_S + n * THREAD_ITEM_S + k * THREAD_START_S
    return n * t / thread_speedup(k, g, f, cpus) + overhead


def chunk_count(n: int, t: float, w: int) -> int:
    """Chunks the engine's adaptive chunker would make (an estimate)."""
    by_work = math.ceil(n * t / TARGET_CHUNK_S) if t > 0 else 0
    return max(1, min(n, max(CHUNKS_PER_WORKER * w, by_work)))


def predict_process(feat: Features, n: int, t: float, w: int) -> float:
    m = feat.machine
    f = feat.cpu_fraction if feat.cpu_fraction is not None else 1.0
    ip = feat.internal_parallelism or 1.0
    # BLAS threads are capped inside workers, so a call that used ip cores
    # in one process takes about ip times longer there but w run at once.
    speedup = 1.0 / max(1.0 / w, f * ip / m.cpus)
    chunks = chunk_count(n, t, w)
    rt = m.roundtrip_s * POOL_ROUNDTRIP_FACTOR
    moved = feat.arg_bytes + feat.result_bytes
    # Pickling an argument as timed by the probe, when it was: an object graph
    # pickles 10-20x slower than the flat buffer the machine's byte cost is
    # measured on (see _model._object_pickling), and a worker unpickles it in
    # about the same time again.
    timed = feat.arg_pickle_s or 0.0
    pickling = max(moved * m.byte_s * PICKLE_FACTOR, timed)
    parent = chunks * rt / 2 + n * (PROCESS_ITEM_S + pickling + feat.shm_bytes * SHM_BYTE_S)
    workers_side = n * t / speedup + (chunks * rt + n * moved * m.byte_s + n * timed) / w
    # The last chunks run on fewer workers: about half a chunk of imbalance.
    tail = 0.5 * n * t / chunks
    start = POOL_FIXED_S + w * m.spawn_s + m.ready_s
    return start + max(workers_side, parent) + tail


def predict_dask(feat: Features, n: int, t: float, g: float) -> float:
    threads = max(1, feat.dask_threads or 1)
    procs = max(1, feat.dask_workers or 1)
    f = feat.cpu_fraction if feat.cpu_fraction is not None else 1.0
    speedup = 1.0 / max(1.0 / threads, g / procs, f / threads)
    chunks = chunk_count(n, t, threads)
    moved = feat.arg_bytes + feat.shm_bytes + feat.result_bytes
    return DASK_CONNECT_S + n * t / speedup + chunks * DASK_TASK_S + n * moved * DASK_BYTE_S

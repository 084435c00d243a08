"""What the dask backend scatters to the workers, cached while the cluster holds it.

What travels, and how:

* The function is scattered (``client.scatter(fn, broadcast=True)``) once per function
  and backend and resolved by Dask on each worker: it crosses the network once per
  worker, not once per task, is deserialized once per worker, and the scheduler never
  needs to unpickle user code. Lambdas and closures travel with cloudpickle, as Dask
  always does.
* Items are pickled by us into one ``bytes`` payload per chunk (cloudpickle, so lambdas
  in arguments work too). NumPy arrays of ``share_threshold`` bytes or more (1 MiB by
  default) anywhere in an item are not pickled into it: each is scattered to every
  worker once per backend (cached by identity, dropped when the array is garbage
  collected), and the payload carries a pickle *persistent id* that the worker resolves
  to the scattered array. Arrays are treated as read-only: mutating one between two
  tasks of the same map is not seen by the workers.
* A ``gilfree.share()`` handle names a segment in this machine's ``/dev/shm``, which a
  worker elsewhere cannot open: its data is scattered the same way (whatever its size)
  and the task gets that array, which ``numpy.asarray`` takes as the handle. Nothing
  on this path needs the workers to share this machine.
* The chunk runner (``_run_chunk`` in ``_dask_runner``) is scattered once as well, pickled
  *by value* (that module is registered with ``cloudpickle.register_pickle_by_value``), and uses
  only the standard library and cloudpickle: the cluster's workers need Dask, cloudpickle
  and the user's own code, but not gilfree.

Scattered data lives only in the memory of the workers that hold it: when they all
die, the scheduler forgets it and cancels every task that needs it. Each cache below
hands out a future only while it is "finished" (held somewhere), and scatters again
otherwise.
"""

from __future__ import annotations

import io
import sys
import threading
import time
import types
import weakref
from collections import OrderedDict
from typing import Any

import cloudpickle

from ..errors import SerializationError
from ._base import Job
from ._dask_runner import _run_chunk
from ._dask_work import _short, _Work

#: Functions kept scattered per backend (an Executor fed new lambdas must not grow
#: without bound); the least recently used one is released from the cluster.
FUNCTION_CACHE = 64
#: Seconds a scatter may wait for a worker to take the data. Longer than connecting:
#: right after workers died, their nannies may take seconds to start new ones.
SCATTER_TIMEOUT_S = 60.0


def share_threshold(job: Job) -> int:
    """The job's ``share_threshold`` in bytes."""
    threshold = job.options.share_threshold
    assert isinstance(threshold, int), "Options.__post_init__ parses sizes into bytes"
    return threshold


class _ArgumentPickler(cloudpickle.Pickler):
    """Pickles a chunk's items, swapping large ndarrays for scattered references."""

    def __init__(
        self, file: io.BytesIO, data: ScatteredData, threshold: int, job_id: int = 0
    ) -> None:
        super().__init__(file, protocol=5)
        self._job_id = job_id
        self.refs: list[Any] = []
        self._ref_index: dict[int, int] = {}
        self._data = data
        self._threshold = threshold
        self._ndarray = sys.modules["numpy"].ndarray
        # gilfree.share() handles need numpy, so with no numpy there are none to look for.
        from .._shm import SharedArray

        self._shared = SharedArray

    def persistent_id(self, obj: Any) -> int | None:
        # A share() handle names a segment in this machine's /dev/shm, which a Dask
        # worker on another host (or in another mount namespace) cannot open: its data
        # travels by value instead, scattered once like any large array, and arrives as
        # the read-only array numpy.asarray(handle) gives here.
        shared = type(obj) is self._shared
        if shared:
            seg = getattr(obj, "_gilfree_segment", None)
            if seg is not None and not seg.finalizer.alive:
                raise ValueError(f"shared array {seg.name} was released; it cannot be sent")
        if shared or (isinstance(obj, self._ndarray) and obj.nbytes >= self._threshold):
            future = self._data.array(obj, shared, self._job_id)
            index = self._ref_index.get(id(future))
            if index is None:
                index = self._ref_index[id(future)] = len(self.refs)
                self.refs.append(future)
            return index
        return None


def _digest(arr: Any) -> bytes:
    """A 128-bit hash of an array's bytes, its shape and dtype (a full read)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(repr((arr.shape, arr.dtype.str)).encode())
    np = sys.modules["numpy"]
    h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
    return h.digest()


class ScatteredData:
    """The runner, functions and large arrays one backend scattered, and the payloads
    that refer to them. Shares the backend's lock and counts into its ``stats``."""

    def __init__(self, client: Any, lock: threading.Lock, stats: dict[str, int]) -> None:
        self._client = client
        self._lock = lock
        self._stats = stats
        self._runner: Any = None  # the scattered _run_chunk, under self._lock
        self._functions: OrderedDict[Any, tuple[Any, Any]] = OrderedDict()  # -> (fn, fut)
        # id -> (ref, future, digest of a writable array's bytes, job last checked)
        self._arrays: dict[int, tuple[weakref.ref[Any], Any, bytes | None, int]] = {}

    def clear(self) -> None:
        """Forget everything (the backend shuts down): Dask releases what no one holds."""
        with self._lock:
            self._functions.clear()
            self._arrays.clear()
            self._runner = None

    def pack(self, items: list[Any], threshold: int, job_id: int = 0) -> tuple[bytes, list[Any]]:
        """Items pickled into one payload, and the scattered arrays it refers to."""
        buf = io.BytesIO()
        if "numpy" in sys.modules:  # no numpy loaded: no array to look for
            pickler = _ArgumentPickler(buf, self, threshold, job_id)
            pickler.dump(items)
            return buf.getvalue(), pickler.refs
        cloudpickle.Pickler(buf, protocol=5).dump(items)
        return buf.getvalue(), []

    def picklable_runs(self, work: _Work) -> list[_Work]:
        """Some item of ``work`` cannot be pickled: fail those; return the runs of good
        ones, to be sent."""
        job, start, items = work.job, work.start, work.items
        runs: list[_Work] = []
        run: list[Any] = []

        def end_run(first: int) -> None:
            strict = work.strict and len(run) == 1
            runs.append(_Work(job, first, run, retries=work.retries, strict=strict))

        for k, item in enumerate(items):
            try:
                self.pack([item], share_threshold(job), job.id)
            except Exception as exc:
                if run:
                    end_run(start + k - len(run))
                    run = []
                err = SerializationError(
                    f"argument {start + k} ({_short(item)}) could not be pickled: {exc}",
                    what="argument",
                    index=start + k,
                )
                err.__cause__ = exc
                job.fail(start + k, err)
            else:
                run.append(item)
        if run:
            end_run(start + len(items) - len(run))
        return runs

    def runner(self) -> Any:
        with self._lock:
            runner = self._runner
        if runner is None or runner.status != "finished":
            runner = self.scatter(_run_chunk)
            with self._lock:
                self._runner = runner
        return runner

    def drop_lost(self) -> None:
        """Ask the scheduler which scattered data is still held; forget the rest.

        Our futures learn of a loss by a message from the scheduler, which may still be
        on its way: a suspect must not be blamed for data lost before it was sent.
        """
        with self._lock:
            held = [self._runner] if self._runner is not None else []
            held += [future for _, future in self._functions.values()]
            held += [future for _, future, _, _ in self._arrays.values()]
        lost = {future.key for future in held if future.status != "finished"}
        alive = [future for future in held if future.key not in lost]
        try:
            holders = self._client.who_has(alive) if alive else {}
        except Exception:  # one was cancelled meanwhile: scatter them all again
            holders = {}
        lost.update(future.key for future in alive if not holders.get(future.key))
        if not lost:
            return
        with self._lock:
            if self._runner is not None and self._runner.key in lost:
                self._runner = None
            for key in [k for k, (_, f) in self._functions.items() if f.key in lost]:
                del self._functions[key]
            for key in [k for k, (_, f, _, _) in self._arrays.items() if f.key in lost]:
                del self._arrays[key]

    def scatter(self, obj: Any) -> Any:
        """``obj`` on every worker. A worker that dies while it gets its copy fails the
        whole scatter (the scheduler's connection to it closes): try again, as the
        scheduler drops the dead worker, until SCATTER_TIMEOUT_S is spent."""
        deadline = time.monotonic() + SCATTER_TIMEOUT_S
        pause = 0.05
        while True:
            left = deadline - time.monotonic()
            try:
                return self._scatter_within(obj, left)
            except (OSError, KeyError) as exc:  # TimeoutError is an OSError
                if isinstance(exc, KeyError) and not _names_a_worker(exc):
                    raise
                if self._client.status != "running" or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # a moment for the scheduler to notice the death
            pause = min(2 * pause, 1.0)

    def _scatter_within(self, obj: Any, seconds: float) -> Any:
        """``Client.scatter``, given up after ``seconds`` with TimeoutError. Its own
        ``timeout=`` bounds only the wait for workers: a worker dying mid-scatter
        left CI's ``Executor.submit`` waiting in ``distributed.utils.sync`` for
        over 15 minutes (distributed 2026.8.0; pytest-timeout did not stop it)."""
        client = self._client
        scatter = getattr(client, "_scatter", None)
        if scatter is None:  # a distributed without it: its public call, unbounded
            return client.scatter(obj, broadcast=True, hash=False, timeout=seconds)
        return client.sync(
            scatter,
            obj,
            broadcast=True,
            hash=False,
            timeout=seconds,
            callback_timeout=seconds,
            workers=None,
            direct=None,
            local_worker=None,
        )

    def function(self, fn: Any) -> Any:
        # Each `obj.method` is a new bound-method object: key those by what they bind.
        if isinstance(fn, types.MethodType):
            key: Any = (id(fn.__self__), id(fn.__func__))
        else:
            key = id(fn)
        with self._lock:
            entry = self._functions.get(key)
            if entry is not None and entry[1].status == "finished":
                self._functions.move_to_end(key)
                return entry[1]
        future = self.scatter(fn)
        with self._lock:
            self._functions[key] = (fn, future)  # holding fn keeps the ids in key unique
            self._functions.move_to_end(key)
            self._stats["functions"] += 1
            while len(self._functions) > FUNCTION_CACHE:
                self._functions.popitem(last=False)
        return future

    def array(self, obj: Any, shared: bool = False, job_id: int = 0) -> Any:
        """The scattered copy of an ndarray, or of a share() handle's data (``shared``).

        A copy is reused only while it is the same data: a read-only array (all
        the way down, ``_shm._frozen``) as it is; a writable one after its bytes
        hash as they did when scattered (blake2b, once per job: a map's chunks
        share the check), since the caller may change it between two tasks
        (issue 13; SPEC: "an array changed between two tasks is seen changed").
        """
        from .._shm._segments import _frozen

        key = id(obj)
        data = sys.modules["numpy"].asarray(obj) if shared else obj
        frozen = _frozen(data)
        with self._lock:
            entry = self._arrays.get(key)
        if entry is not None and entry[0]() is obj and entry[1].status == "finished":
            _ref, future, digest, checked = entry
            if frozen or checked == job_id or _digest(data) == digest:
                with self._lock:
                    self._arrays[key] = (entry[0], future, digest, job_id)
                return future
        future = self.scatter(data)

        def forget(ref: weakref.ref[Any], key: int = key) -> None:
            with self._lock:
                if key in self._arrays and self._arrays[key][0] is ref:
                    del self._arrays[key]

        digest = None if frozen else _digest(data)
        with self._lock:
            self._arrays[key] = (weakref.ref(obj, forget), future, digest, job_id)
            self._stats["scattered_arrays"] += 1
        return future


def _names_a_worker(exc: KeyError) -> bool:
    """A KeyError whose key is a worker's address: the scheduler's own, when that
    worker died while a scatter to it was under way (``Scheduler.update_data``
    looks it up after the send). It failed an innocent task as a
    SerializationError in one CI run."""
    return len(exc.args) == 1 and isinstance(exc.args[0], str) and "://" in exc.args[0]

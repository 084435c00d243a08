"""The dask backend: chunks run as tasks on an existing Dask distributed cluster.

Data flow::

    engine thread                      Dask client (its event loop thread)        cluster
    -------------                      -----------------------------------        -------
    submit(job, start, items)
      fn     -> scatter once per fn ---------------------------------------> every worker
      big ndarrays -> scatter once ---------------------------------------> every worker
      items  -> pickled to bytes, big arrays replaced by references
      client.submit(call, runner, fn, payload, refs, ...) --------------> scheduler -> worker:
                                                                           _run_chunk maps fn
                                                                           over the items and
                                                                           returns pickled
                                                                           per-item outcomes
                                       future done --> Dask callback thread
                                                       puts it on our inbox
    collector thread (ours) <-- inbox
      gathers finished outcomes in batches, job.deliver / job.fail / job.record,
      resubmits failed items that have retries left

One Dask task per chunk, not per item: Dask spends ~1 ms of scheduler and network
time per task, so tiny items are batched (``chunk_target_s``). Inside a task each item
has its own outcome, so one bad item does not take its neighbours down.

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

Errors, retries and timeouts:

* A task's exception keeps its original type; the worker-side traceback (text) is its
  ``__cause__``, a :class:`gilfree.errors.RemoteTraceback`.
* ``retries=N`` is Dask's own ``retries=``: a chunk of one item is submitted with
  ``retries=N`` and raises on failure, so Dask reruns it (on any worker). In a chunk of
  several items a failed item is resubmitted alone, as such a one-item task with
  ``retries=N-1``, so its neighbours never run twice.

Worker deaths. Dask reruns a task whose worker died on another worker, and gives up with
``KilledWorker`` once ``distributed.scheduler.allowed-failures`` (3) + 1 workers died
under it. Two things make that unfit to blame one item:

* ``KilledWorker`` blames every task that was running on each dead worker: an innocent
  task that shared workers with the culprit (one worker runs several tasks at once)
  gets it too, and a chunk holds many items.
* The runner, the function and large arrays are *scattered* data: they live only in
  the memory of the workers that got them. A culprit that kills one worker after
  another kills every holder; the scheduler then forgets the data and *cancels* every
  task that needs it, queued or running. (That is where innocent items failed with
  "Dask cancelled the task".)

So: each scattered future is used only while Dask says it is held, and scattered
again otherwise. A task given up with ``KilledWorker``, or cancelled by the cluster, is
split: every item of a chunk goes again as a one-item task; a one-item task that shared
the cluster with other tasks of ours becomes a *suspect* and runs again *alone* (new
work waits until no task of ours is out there, then each suspect goes by itself). A
one-item task that died alone killed its workers: it fails with :class:`gilfree
.WorkerDied`, or runs alone again while it has ``retries`` left. Innocent items thus
never fail, and the culprit is found after a few worker restarts more than plain
``client.map`` needs. Items of a chunk that ran before the death run again.
* ``timeout=`` is per item and measured on the worker, from the moment the call starts
  (time queued on the cluster does not count): with a timeout the runner calls ``fn`` in
  a helper thread and waits on it. Past the timeout the item fails with
  :class:`gilfree.TaskTimeout` carrying that thread's stack, and the chunk goes on with
  its next item. **Dask cannot interrupt a running Python call in a worker thread: the
  timed-out call runs on in its abandoned (daemon) thread on the worker, using CPU, and
  its result is discarded.** Each call under a timeout costs one thread start on the
  worker (~0.1 ms). A call that holds the GIL forever (a C loop that never releases it)
  stalls the whole worker process, timeouts included.

Concurrency and cancelling:

* ``workers=None`` uses all the cluster's threads; ``workers=N`` fewer than that caps how
  many of our tasks are on the cluster at once (chunks over the cap wait here, in
  order). It cannot resize the cluster.
* An ``Executor`` future stays *pending* until its outcome arrives -- the cluster does
  not tell us when a task starts -- so ``Future.cancel()`` succeeds until then and drops
  the Dask task (a call already running on a worker runs on; its result is discarded).

``shutdown()`` closes our client; it never closes the user's cluster.
"""

from __future__ import annotations

import io
import itertools
import operator
import os
import pickle
import queue
import sys
import threading
import time
import types
import uuid
import weakref
from collections import OrderedDict, deque
from typing import Any

import cloudpickle

from .._options import Options
from ..errors import (
    ConfigurationError,
    GilfreeError,
    RemoteTraceback,
    SerializationError,
    TaskTimeout,
    WorkerDied,
)
from ._base import Backend, FutureJob, Job
from ._dask_runner import (
    _BAD_RESULT,
    _OK,
    _RAISED,
    _TB_ATTR,
    _TIMEOUT,
    _TIMEOUT_MARK,
    _format_remote,
    _run_chunk,
)

#: Environment variable naming the scheduler when ``address=`` is not given.
ADDRESS_ENV = "GILFREE_DASK_ADDRESS"
#: Seconds to wait for the scheduler to answer when connecting.
CONNECT_TIMEOUT_S = 10.0
#: Chunks kept in flight beyond two per worker thread. A Dask task takes a few ms from
#: submit to result (client -> scheduler -> worker -> scheduler -> client), so a window
#: of two per thread leaves threads idle between tasks. One-item tasks of a no-op on a
#: 2-thread local cluster: 6.2 ms/task with 6 in flight, 3.4 with 12, 2.8 with 24
#: (Client.map of everything at once: 1.6); 16 extra gets most of it, still bounded.
PIPELINE = 16
#: Functions kept scattered per backend (an Executor fed new lambdas must not grow
#: without bound); the least recently used one is released from the cluster.
FUNCTION_CACHE = 64
#: Seconds a scatter may wait for a worker to take the data. Longer than connecting:
#: right after workers died, their nannies may take seconds to start new ones.
SCATTER_TIMEOUT_S = 60.0

# ---------------------------------------------------------------------------------------
# Client side.
# ---------------------------------------------------------------------------------------
try:
    from distributed.client import done_callback as _done_callback
except ImportError:  # pragma: no cover - other distributed versions
    _done_callback = None


class _ArgumentPickler(cloudpickle.Pickler):
    """Pickles a chunk's items, swapping large ndarrays for scattered references."""

    def __init__(
        self, file: io.BytesIO, backend: DaskBackend, threshold: int, job_id: int = 0
    ) -> None:
        super().__init__(file, protocol=5)
        self._job_id = job_id
        self.refs: list[Any] = []
        self._ref_index: dict[int, int] = {}
        self._backend = backend
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
            future = self._backend._scattered_array(obj, shared, self._job_id)
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


class _Work:
    """Consecutive items of one job, to be sent as one Dask task.

    ``retries``: Dask reruns left for a task that raises (``strict`` one-item tasks
    raise; see ``_run_chunk``), and the reruns left after its worker died.
    ``isolated``: sent only when no other task of ours is on the cluster (a suspect,
    see "Worker deaths" above).
    """

    __slots__ = ("isolated", "items", "job", "retries", "start", "strict")

    def __init__(
        self,
        job: Job,
        start: int,
        items: list[Any],
        *,
        retries: int,
        strict: bool,
        isolated: bool = False,
    ) -> None:
        self.job = job
        self.start = start
        self.items = items
        self.retries = retries
        self.strict = strict
        self.isolated = isolated

    def part(self, k: int, **changes: Any) -> _Work:
        """Item ``k`` alone, as a one-item task."""
        fields = {
            "retries": self.retries,
            "strict": self.retries > 0,
            "isolated": self.isolated,
            **changes,
        }
        return _Work(self.job, self.start + k, [self.items[k]], **fields)


class _Chunk:
    """One Dask task in flight.

    ``first``: no other task of ours was in flight when it was sent; ``sends``: the
    backend's count of sent tasks just after it went. Both still true when it settles:
    it was alone on the cluster (see "Worker deaths" above).
    """

    __slots__ = ("first", "future", "key", "sends", "work")

    def __init__(self, key: str, work: _Work) -> None:
        self.key = key
        self.work = work
        self.first = False
        self.sends = 0
        self.future: Any = None

    @property
    def job(self) -> Job:
        return self.work.job

    @property
    def start(self) -> int:
        return self.work.start

    @property
    def items(self) -> list[Any]:
        return self.work.items


_STOP = object()


class _Cancel:
    """Inbox message: cancel these Dask futures."""

    __slots__ = ("futures",)

    def __init__(self, futures: list[Any]) -> None:
        self.futures = futures


_SETTLED = ("finished", "error", "cancelled")


class DaskBackend(Backend):
    name = "dask"
    #: Dask costs ~1 ms per task (scheduler bookkeeping plus two network hops; 1.06 ms
    #: per task for Client.map of a no-op on a 2-worker local cluster). 0.15 s of work
    #: per chunk keeps that under 1 % while leaving chunks short enough that the last
    #: ones of a run do not idle the cluster for long.
    chunk_target_s = 0.15

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        address = options.address or os.environ.get(ADDRESS_ENV)
        if not address:
            raise ConfigurationError(
                "backend='dask' needs the address of a Dask scheduler: pass "
                f"address='tcp://host:8786' or set the {ADDRESS_ENV} environment variable"
            )
        self.address = address
        self._client = connect(address, CONNECT_TIMEOUT_S)
        self._runner: Any = None  # the scattered _run_chunk, under self._lock
        try:
            threads = sum(self._client.nthreads().values())
            self.workers = options.workers or max(1, threads)
            self._scattered_runner()
        except BaseException:
            self._client.close()
            raise
        self._token = uuid.uuid4().hex[:8]
        self._seq = itertools.count()
        self._chunks: dict[str, _Chunk] = {}  # key -> chunk, under self._lock
        self._idle = threading.Condition(self._lock)  # notified when nothing is left
        # workers=N below the cluster's threads caps how many of our tasks are on the
        # cluster at once (it cannot resize the cluster); chunks over the cap wait here,
        # in order. At or above the cluster's size a cap would only stop the scheduler
        # from queueing the next tasks (as "auto" passes workers=threads): no cap then.
        self._cap = options.workers if options.workers and options.workers < threads else None
        self._waiting: deque[_Work] = deque()
        self._active = 0  # tasks on the cluster or being sent, counted against the cap
        # One-item tasks suspected of killing their worker, each to be rerun alone; while
        # there are any, new work waits in _waiting. _isolating: one is on the cluster.
        self._suspects: deque[_Work] = deque()
        self._isolating = False
        self._sends = 0  # tasks sent so far (see _Chunk)
        self._functions: OrderedDict[Any, tuple[Any, Any]] = OrderedDict()  # -> (fn, fut)
        # id -> (ref, future, digest of a writable array's bytes, job last checked)
        self._arrays: dict[int, tuple[weakref.ref, Any, bytes | None, int]] = {}
        self._closed = False
        self._stats = {
            "tasks": 0,
            "resubmitted": 0,
            "scattered_arrays": 0,
            "functions": 0,
            "worker_deaths": 0,  # tasks that came back KilledWorker or lost with the data
        }
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._collector = threading.Thread(
            target=self._collect, name="gilfree-dask-collector", daemon=True
        )
        self._collector.start()

    @property
    def window(self) -> int:
        return 2 * self.workers + PIPELINE

    # -- submission ---------------------------------------------------------------------
    def submit(self, job: Job, start: int, items: list[Any], attempt: int = 0) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
        if job.cancelled:
            return
        if isinstance(job, FutureJob):
            # The cluster does not tell us when a task starts, so job.begin() waits for
            # the outcome: the future stays pending until then, and cancelling it (say,
            # Executor.shutdown(cancel_futures=True)) drops its Dask task.
            job.future.add_done_callback(lambda f, job=job: f.cancelled() and self.cancel(job))
        retries = max(0, job.options.retries - attempt)
        strict = retries > 0 and len(items) == 1
        self._launch(_Work(job, start, items, retries=retries, strict=strict))

    def _launch(self, work: _Work) -> None:
        if work.job.cancelled:
            return
        if work.isolated:
            with self._lock:
                self._suspects.append(work)
            self._release(0)  # sends it at once if nothing else of ours is out there
            return
        with self._lock:
            held = self._suspects or self._isolating
            if held or (self._cap is not None and self._active >= self._cap):
                self._waiting.append(work)
                return
            self._active += 1
        self._send_in_slot(work)

    def _send_in_slot(self, work: _Work) -> None:
        """Send a chunk whose slot under the cap is taken; give it back if nothing went."""
        sent = False
        try:
            sent = not work.job.cancelled and self._send(work)
        finally:
            if not sent:
                if work.isolated:
                    with self._lock:
                        self._isolating = False
                self._release()

    def _release(self, n: int = 1) -> None:
        """Give back ``n`` slots of the cap; send what waits into them.

        While suspects wait, nothing else goes out: once none of our tasks is left on
        the cluster, the first suspect goes alone; ordinary work resumes after the last.
        """
        with self._lock:
            self._active -= n
            ready = []
            if self._suspects or self._isolating:
                if not self._isolating and self._active == 0:
                    ready.append(self._suspects.popleft())
                    self._isolating = True
                    self._active += 1
            else:
                while self._waiting and (self._cap is None or self._active < self._cap):
                    ready.append(self._waiting.popleft())
                    self._active += 1
            if not (self._chunks or self._waiting or self._suspects):
                self._idle.notify_all()
        for work in ready:
            self._send_in_slot(work)

    def _send(self, work: _Work) -> bool:
        """Submit one Dask task for the chunk (its slot is taken). False: none was sent."""
        job, start, items = work.job, work.start, work.items
        try:
            if work.isolated:
                self._drop_lost_data()
            runner = self._scattered_runner()
            fn = self._scattered_function(job.fn)
        except Exception as exc:
            if isinstance(exc, (OSError, TimeoutError)):  # no worker took the data in time
                err: BaseException = GilfreeError(
                    f"could not send the function to the Dask workers at {self.address}: "
                    f"{exc!r} (are any workers running?)"
                )
            else:
                err = SerializationError(
                    f"the function {job.fn!r} could not be sent to the Dask workers: {exc}",
                    what="function",
                )
            err.__cause__ = exc
            for k in range(len(items)):
                job.fail(start + k, err)
            return False
        try:
            payload, refs = self._pack(items, job.options.share_threshold, job.id)
        except (OSError, TimeoutError) as exc:  # scattering a large array failed
            err = GilfreeError(
                f"could not send large arrays of inputs {start}..{start + len(items) - 1} "
                f"to the Dask workers at {self.address}: {exc!r}"
            )
            err.__cause__ = exc
            for k in range(len(items)):
                job.fail(start + k, err)
            return False
        except Exception:
            self._launch_picklable_parts(work)
            return False
        key = f"gilfree-{self._token}-{job.id}-{start}-{next(self._seq)}"
        chunk = _Chunk(key, work)
        with self._lock:
            chunk.first = not self._chunks
            self._sends += 1
            chunk.sends = self._sends
            self._chunks[key] = chunk
            self._stats["tasks"] += 1
        try:
            chunk.future = self._client.submit(
                operator.call,
                runner,
                fn,
                payload,
                refs,
                job.options.timeout,
                work.strict,
                key=key,
                pure=False,
                retries=work.retries or None,
            )
        except Exception as exc:  # the client is closing or lost the scheduler
            with self._lock:
                self._chunks.pop(key, None)
            for k in range(len(items)):
                job.fail(start + k, exc)
            return False
        self._when_done(chunk.future)
        return True

    def _when_done(self, future: Any) -> None:
        """Put ``future`` on the collector's inbox once it is finished, failed or cancelled."""
        if _done_callback is None:  # pragma: no cover - other distributed versions
            future.add_done_callback(self._inbox.put)
            return
        # What Future.add_done_callback does, minus its hop through a process-wide
        # "Dask-Callback-Thread" that Dask never stops: the put runs on the client's
        # event loop, and SimpleQueue.put never blocks it.
        self._client.loop.add_callback(_done_callback, future, self._inbox.put)

    def _launch_picklable_parts(self, work: _Work) -> None:
        """Some item cannot be pickled: fail those, send the runs of good ones."""
        job, start, items = work.job, work.start, work.items
        run: list[Any] = []

        def launch_run(first: int) -> None:
            self._launch(
                _Work(job, first, run, retries=work.retries, strict=work.strict and len(run) == 1)
            )

        for k, item in enumerate(items):
            try:
                self._pack([item], job.options.share_threshold, job.id)
            except Exception as exc:
                if run:
                    launch_run(start + k - len(run))
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
            launch_run(start + len(items) - len(run))

    def _pack(self, items: list[Any], threshold: int, job_id: int = 0) -> tuple[bytes, list[Any]]:
        buf = io.BytesIO()
        if "numpy" in sys.modules:  # no numpy loaded: no array to look for
            pickler = _ArgumentPickler(buf, self, threshold, job_id)
            pickler.dump(items)
            return buf.getvalue(), pickler.refs
        cloudpickle.Pickler(buf, protocol=5).dump(items)
        return buf.getvalue(), []

    # Scattered data lives only in the memory of the workers that hold it: when they all
    # die, the scheduler forgets it and cancels every task that needs it. Each cache
    # below hands out a future only while it is "finished" (held somewhere), and
    # scatters again otherwise.
    def _scattered_runner(self) -> Any:
        with self._lock:
            runner = self._runner
        if runner is None or runner.status != "finished":
            runner = self._scatter(_run_chunk)
            with self._lock:
                self._runner = runner
        return runner

    def _drop_lost_data(self) -> None:
        """Ask the scheduler which scattered data is still held; forget the rest.

        Our futures learn of a loss by a message from the scheduler, which may still be
        on its way: a suspect must not be blamed for data lost before it was sent.
        """
        with self._lock:
            held = [self._runner] if self._runner is not None else []
            held += [future for _, future in self._functions.values()]
            held += [future for _, future in self._arrays.values()]
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
            for key in [k for k, (_, f) in self._arrays.items() if f.key in lost]:
                del self._arrays[key]

    def _scatter(self, obj: Any) -> Any:
        """``obj`` on every worker. A worker that dies while it gets its copy fails the
        whole scatter (the scheduler's connection to it closes): try again, as the
        scheduler drops the dead worker, until SCATTER_TIMEOUT_S is spent."""
        deadline = time.monotonic() + SCATTER_TIMEOUT_S
        pause = 0.05
        while True:
            left = deadline - time.monotonic()
            try:
                return self._client.scatter(obj, broadcast=True, hash=False, timeout=left)
            except OSError:
                if self._client.status != "running" or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # a moment for the scheduler to notice the death
            pause = min(2 * pause, 1.0)

    def _scattered_function(self, fn: Any) -> Any:
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
        future = self._scatter(fn)
        with self._lock:
            self._functions[key] = (fn, future)  # holding fn keeps the ids in key unique
            self._functions.move_to_end(key)
            self._stats["functions"] += 1
            while len(self._functions) > FUNCTION_CACHE:
                self._functions.popitem(last=False)
        return future

    def _scattered_array(self, obj: Any, shared: bool = False, job_id: int = 0) -> Any:
        """The scattered copy of an ndarray, or of a share() handle's data (``shared``).

        A copy is reused only while it is the same data: a read-only array (all
        the way down, ``_shm._frozen``) as it is; a writable one after its bytes
        hash as they did when scattered (blake2b, once per job: a map's chunks
        share the check), since the caller may change it between two tasks
        (issue 13; SPEC: "an array changed between two tasks is seen changed").
        """
        from .._shm import _frozen

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
        future = self._scatter(data)

        def forget(ref: weakref.ref, key: int = key) -> None:
            with self._lock:
                if key in self._arrays and self._arrays[key][0] is ref:
                    del self._arrays[key]

        digest = None if frozen else _digest(data)
        with self._lock:
            self._arrays[key] = (weakref.ref(obj, forget), future, digest, job_id)
            self._stats["scattered_arrays"] += 1
        return future

    # -- outcomes (collector thread) ------------------------------------------------------
    def _collect(self) -> None:
        while True:
            batch = [self._inbox.get()]
            while True:  # take everything already waiting: one gather for all of it
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            stop = any(m is _STOP for m in batch)
            cancels = [f for m in batch if isinstance(m, _Cancel) for f in m.futures]
            futures = [m for m in batch if m is not _STOP and not isinstance(m, _Cancel)]
            try:
                if cancels:
                    self._client.cancel(cancels)
                self._settle(futures)
            except BaseException as exc:  # never die silently: fail what we hold
                self._fail_all(exc)
            if stop:
                return

    def _settle(self, futures: list[Any]) -> None:
        with self._lock:
            chunks = [self._chunks.get(f.key) for f in futures]
        # A chunk whose future is still None was cancelled while being sent.
        finished = [c for c in chunks if c is not None and c.future.status == "finished"]
        blobs: dict[str, Any] = {}
        if finished:
            try:
                values = self._client.gather([c.future for c in finished])
                blobs = {c.future.key: v for c, v in zip(finished, values, strict=True)}
            except Exception:
                blobs = {}  # settle them one by one below
        for chunk in chunks:
            if chunk is None:
                continue  # cancelled and forgotten
            if chunk.future.status not in _SETTLED and chunk.future.key not in blobs:
                # Finished, then its result was lost with its worker: Dask recomputes it.
                self._when_done(chunk.future)
                continue
            try:
                self._settle_one(chunk, blobs)
            finally:
                self._forget(chunk)

    def _settle_one(self, chunk: _Chunk, blobs: dict[str, Any]) -> None:
        job, future = chunk.job, chunk.future
        if not job.begin():  # cancelled meanwhile: drop the outcome
            return
        if future.key in blobs:
            blob = blobs[future.key]
        elif future.status == "finished":
            try:
                blob = future.result()
            except Exception as exc:
                self._fail_chunk(chunk, exc, "")
                return
        elif future.status == "cancelled":
            if self._client.status != "running":
                exc = GilfreeError(
                    f"Dask cancelled the task of inputs {chunk.start}.."
                    f"{chunk.start + len(chunk.items) - 1}: the connection to the Dask "
                    f"scheduler at {self.address} was lost"
                )
                self._fail_chunk(chunk, exc, "")
            else:
                # Not by us (we forget what we cancel): the scheduler dropped it because
                # scattered data it needed died with the workers that held it.
                self._after_death(chunk, None)
            return
        else:  # "error": the task itself raised (strict one-item tasks, or the runner)
            from distributed.scheduler import KilledWorker

            exc = future.exception()
            if isinstance(exc, KilledWorker):
                self._after_death(chunk, exc)
                return
            text = exc.__dict__.pop(_TB_ATTR, None) or _format_remote(exc, future.traceback())
            self._fail_chunk(chunk, exc, text)
            return
        try:
            outcomes = pickle.loads(blob)
        except Exception as exc:
            err = SerializationError(
                f"results of inputs {chunk.start}..{chunk.start + len(chunk.items) - 1} "
                f"could not be unpickled here: {exc!r}",
                what="result",
            )
            err.__cause__ = exc
            self._fail_chunk(chunk, err, "")
            return
        self._deliver(chunk, outcomes)

    def _after_death(self, chunk: _Chunk, killed: BaseException | None) -> None:
        """Workers died under ``chunk``: Dask gave up on it (``killed``, a KilledWorker)
        or dropped it with lost scattered data (``killed`` is None). Find the culprit.

        Several items: each is sent again as a one-item task. One item that was not
        alone on the cluster, or whose data was lost (perhaps before it started): a
        suspect, sent again alone. One item that Dask gave up on while it was alone, or
        a suspect whose workers died again: it killed them. It fails with WorkerDied,
        or is sent alone again while it has retries left.
        """
        work = chunk.work
        with self._lock:
            alone = chunk.first and chunk.sends == self._sends
            self._stats["worker_deaths"] += 1
        if len(work.items) > 1:
            with self._lock:
                self._stats["resubmitted"] += len(work.items)
            for k in range(len(work.items)):
                self._launch(work.part(k, isolated=False))
            return
        if not work.isolated and (killed is None or not alone):
            with self._lock:
                self._stats["resubmitted"] += 1
            self._launch(work.part(0, isolated=True))
            return
        if work.retries > 0:
            with self._lock:
                self._stats["resubmitted"] += 1
            self._launch(work.part(0, isolated=True, retries=work.retries - 1))
            return
        index = work.start
        reported = (
            f"Dask reported {type(killed).__name__}: {killed}"
            if killed is not None
            else "Dask cancelled its task: every worker holding data it needed died with it"
        )
        err = WorkerDied(
            f"task {index} ({_short(work.items[0])}): its Dask worker died while running "
            f"it, with no other task of this map on the cluster; {reported}",
            index=index,
            item=_short(work.items[0]),
        )
        err.__cause__ = killed
        work.job.fail(index, err)

    def _deliver(self, chunk: _Chunk, outcomes: list[tuple[Any, ...]]) -> None:
        job, start = chunk.job, chunk.start
        run: list[Any] = []
        first = start
        seconds = 0.0
        for k, (kind, value, text, took) in enumerate(outcomes):
            seconds += took
            if kind == _OK:
                run.append(value)
                continue
            if run:
                job.deliver(first, run)
                run = []
            first = start + k + 1
            if kind != _BAD_RESULT and chunk.work.retries > 0 and not chunk.work.strict:
                # Rerun this item alone; Dask's retries take the remaining attempts.
                with self._lock:
                    self._stats["resubmitted"] += 1
                self._launch(chunk.work.part(k, retries=chunk.work.retries - 1, strict=True))
                continue
            job.fail(start + k, self._error(kind, value, text, start + k, job))
        if run:
            job.deliver(first, run)
        job.record(len(outcomes), seconds)

    def _error(self, kind: int, value: Any, text: str, index: int, job: Job) -> BaseException:
        if kind == _TIMEOUT:
            timeout = job.options.timeout
            return TaskTimeout(
                f"task {index} ran past its timeout of {timeout} s on a Dask worker. Dask "
                "cannot interrupt a running call: it runs on in an abandoned thread on the "
                f"worker and its result will be dropped. Its stack when given up:\n{text}",
                index=index,
                timeout=timeout,
                stack=text,
            )
        if kind == _BAD_RESULT:
            return SerializationError(
                f"the result of task {index} could not be pickled on the worker: {value}",
                what="result",
                index=index,
            )
        value.__cause__ = RemoteTraceback(text)
        return value

    def _fail_chunk(self, chunk: _Chunk, exc: BaseException, text: str) -> None:
        """The task as a whole failed: every item of it fails with ``exc``."""
        job = chunk.job
        for k in range(len(chunk.items)):
            index = chunk.start + k
            if isinstance(exc, TimeoutError) and exc.args[:1] == (_TIMEOUT_MARK,):
                err = self._error(_TIMEOUT, None, exc.args[1], index, job)
            elif text:
                err = self._error(_RAISED, exc, text, index, job)
            else:
                err = exc
            job.fail(index, err)

    def _forget(self, chunk: _Chunk) -> None:
        with self._lock:
            if self._chunks.pop(chunk.key, None) is None:
                return  # cancel() already forgot it and gave its slot back
            if chunk.work.isolated:
                self._isolating = False
        self._release()

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            held = [(c.job, c.start, c.items) for c in self._chunks.values()]
            held += [(w.job, w.start, w.items) for w in [*self._waiting, *self._suspects]]
            self._chunks.clear()
            self._waiting.clear()
            self._suspects.clear()
            self._isolating = False
            self._active = 0
            self._idle.notify_all()
        for job, start, items in held:
            if not job.cancelled:
                for k in range(len(items)):
                    job.fail(start + k, exc)

    # -- control --------------------------------------------------------------------------
    def check(self) -> None:
        if not self._collector.is_alive() and not self._closed:
            raise RuntimeError("the dask backend's collector thread has stopped")

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self._lock:
            chunks = [c for c in self._chunks.values() if c.job is job]
            for c in chunks:
                del self._chunks[c.key]
                if c.work.isolated:
                    self._isolating = False
            self._waiting = deque(w for w in self._waiting if w.job is not job)
            self._suspects = deque(w for w in self._suspects if w.job is not job)
        self._release(len(chunks))
        futures = [c.future for c in chunks if c.future is not None]
        if futures:
            # Queued tasks are dropped; a running call runs on, its result discarded.
            # The collector sends it: cancel() may be called from any thread, and must
            # not wait for a round trip to the scheduler.
            self._inbox.put(_Cancel(futures))

    def shutdown(self, *, wait: bool = True, kill: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Not from the collector itself (a Future callback calling shutdown): it is
            # the thread that would empty _chunks.
            if wait and not kill and threading.current_thread() is not self._collector:
                while self._chunks or self._waiting or self._suspects:
                    self._idle.wait()
            futures = [c.future for c in self._chunks.values() if c.future is not None]
            held = [*self._chunks.values(), *self._waiting, *self._suspects]
            for job in [w.job for w in held]:
                job.cancelled = True
            self._chunks.clear()
            self._waiting.clear()
            self._suspects.clear()
            self._functions.clear()
            self._arrays.clear()
        try:
            if futures:
                self._client.cancel(futures)
        finally:
            self._inbox.put(_STOP)
            if self._collector is not threading.current_thread():
                self._collector.join(timeout=CONNECT_TIMEOUT_S)
            self._runner = None
            self._client.close(timeout=CONNECT_TIMEOUT_S)

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            return {
                "backend": self.name,
                "address": self.address,
                "workers": self.workers,
                "in_flight": len(self._chunks),
                "waiting": len(self._waiting),
                "suspects": len(self._suspects) + self._isolating,
                **self._stats,
            }


def connect(address: str, timeout: float) -> Any:
    """A ``distributed.Client`` for ``address``, or ConnectionError naming it.

    Built in two steps so that a failed connection can still be cleaned up: the
    constructor starts the client's event-loop thread before it connects, and
    a plain ``Client(address)`` that fails leaves that thread running.
    """
    from distributed import Client

    client = Client.__new__(Client)
    try:
        client.__init__(address, timeout=timeout, set_as_default=False)
    except BaseException as exc:
        _discard(client)
        if isinstance(exc, OSError):  # includes TimeoutError
            raise ConnectionError(
                f"could not reach the Dask scheduler at {address} "
                f"(from address= or {ADDRESS_ENV}): {exc}"
            ) from exc
        raise
    return client


def _discard(client: Any) -> None:
    """Close a client whose connection failed, including its event-loop thread."""
    try:
        client.close(timeout=CONNECT_TIMEOUT_S)
    finally:
        runner = getattr(client, "_loop_runner", None)  # close() skips it after a failure
        if runner is not None:
            runner.stop()


def _short(item: Any, limit: int = 80) -> str:
    try:
        text = repr(item)
    except Exception:
        text = f"<{type(item).__qualname__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."

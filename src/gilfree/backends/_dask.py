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

What travels, and how (the function, large arrays and the chunk runner are scattered
once and cached while the cluster holds them): ``_dask_data``. Errors, retries,
timeouts, and finding the item that kills its workers: ``_dask_work``. Which of our
tasks are on the cluster and which wait: ``_dask_flight``. The code that runs on the
workers: ``_dask_runner``. Connecting: ``_dask_connect``.

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

import itertools
import operator
import os
import pickle
import queue
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .._options import Options
from ..errors import ConfigurationError, GilfreeError, SerializationError
from ._base import Backend, FutureJob, Job
from ._dask_connect import ADDRESS_ENV, CONNECT_TIMEOUT_S, connect
from ._dask_data import ScatteredData, share_threshold
from ._dask_flight import Flight
from ._dask_runner import _TB_ATTR, _format_remote
from ._dask_work import (
    _SETTLED,
    _Chunk,
    _Work,
    after_death,
    deliver,
    fail_chunk,
)

__all__ = ["ADDRESS_ENV", "CONNECT_TIMEOUT_S", "PIPELINE", "DaskBackend", "connect"]

#: Chunks kept in flight beyond two per worker thread. A Dask task takes a few ms from
#: submit to result (client -> scheduler -> worker -> scheduler -> client), so a window
#: of two per thread leaves threads idle between tasks. One-item tasks of a no-op on a
#: 2-thread local cluster: 6.2 ms/task with 6 in flight, 3.4 with 12, 2.8 with 24
#: (Client.map of everything at once: 1.6); 16 extra gets most of it, still bounded.
PIPELINE = 16

_done_callback: Callable[[Any, Callable[[Any], None]], Any] | None
try:
    from distributed.client import done_callback as _done_callback
except ImportError:  # pragma: no cover - other distributed versions
    _done_callback = None

_STOP = object()


class _Cancel:
    """Inbox message: cancel these Dask futures."""

    __slots__ = ("futures",)

    def __init__(self, futures: list[Any]) -> None:
        self.futures = futures


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
        self._stats = {
            "tasks": 0,
            "resubmitted": 0,
            "scattered_arrays": 0,
            "functions": 0,
            "worker_deaths": 0,  # tasks that came back KilledWorker or lost with the data
        }
        # The runner, functions and large arrays on the workers (under self._lock).
        self._data = ScatteredData(self._client, self._lock, self._stats)
        try:
            threads = sum(self._client.nthreads().values())
            self.workers = options.workers or max(1, threads)
            self._data.runner()
        except BaseException:
            self._client.close()
            raise
        self._token = uuid.uuid4().hex[:8]
        self._seq = itertools.count()
        # workers=N below the cluster's threads caps our tasks on the cluster at once.
        cap = options.workers if options.workers and options.workers < threads else None
        self._flight = Flight(self._lock, cap)  # under self._lock
        self._closed = False
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
            def drop_if_cancelled(future: Future[Any], job: Job = job) -> None:
                if future.cancelled():
                    self.cancel(job)

            job.future.add_done_callback(drop_if_cancelled)
        retries = max(0, job.options.retries - attempt)
        strict = retries > 0 and len(items) == 1
        self._launch(_Work(job, start, items, retries=retries, strict=strict))

    def _launch(self, work: _Work) -> None:
        if work.job.cancelled:
            return
        if work.isolated:
            with self._lock:
                self._flight.suspects.append(work)
            self._release(0)  # sends it at once if nothing else of ours is out there
            return
        with self._lock:
            if not self._flight.take_slot(work):
                return
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
                        self._flight.isolating = False
                self._release()

    def _release(self, n: int = 1) -> None:
        """Give back ``n`` slots of the cap; send what waits into them (``Flight``)."""
        with self._lock:
            ready = self._flight.release(n)
        for work in ready:
            self._send_in_slot(work)

    def _send(self, work: _Work) -> bool:
        """Submit one Dask task for the chunk (its slot is taken). False: none was sent."""
        job, start, items = work.job, work.start, work.items
        try:
            if work.isolated:
                self._data.drop_lost()
            runner = self._data.runner()
            fn = self._data.function(job.fn)
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
            payload, refs = self._data.pack(items, share_threshold(job), job.id)
        except (OSError, TimeoutError) as exc:  # scattering a large array failed
            err = GilfreeError(
                f"could not send large arrays of inputs {start}..{start + len(items) - 1} "
                f"to the Dask workers at {self.address}: {exc!r}"
            )
            err.__cause__ = exc
            for k in range(len(items)):
                job.fail(start + k, err)
            return False
        except Exception:  # some item cannot be pickled: fail it, send the others
            for part in self._data.picklable_runs(work):
                self._launch(part)
            return False
        key = f"gilfree-{self._token}-{job.id}-{start}-{next(self._seq)}"
        chunk = _Chunk(key, work)
        with self._lock:
            self._flight.sent(chunk)
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
                self._flight.chunks.pop(key, None)
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
            chunks = [self._flight.chunks.get(f.key) for f in futures]
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
                fail_chunk(chunk, exc, "")
                return
        elif future.status == "cancelled":
            if self._client.status != "running":
                lost = GilfreeError(
                    f"Dask cancelled the task of inputs {chunk.start}.."
                    f"{chunk.start + len(chunk.items) - 1}: the connection to the Dask "
                    f"scheduler at {self.address} was lost"
                )
                fail_chunk(chunk, lost, "")
            else:
                # Not by us (we forget what we cancel): the scheduler dropped it because
                # scattered data it needed died with the workers that held it.
                self._after_death(chunk, None)
            return
        else:  # "error": the task itself raised (strict one-item tasks, or the runner)
            from distributed.scheduler import KilledWorker

            raised = future.exception()
            if isinstance(raised, KilledWorker):
                self._after_death(chunk, raised)
                return
            text = raised.__dict__.pop(_TB_ATTR, None) or _format_remote(raised, future.traceback())
            fail_chunk(chunk, raised, text)
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
            fail_chunk(chunk, err, "")
            return
        again = deliver(chunk, outcomes)
        if again:
            with self._lock:
                self._stats["resubmitted"] += len(again)
            for work in again:
                self._launch(work)

    def _after_death(self, chunk: _Chunk, killed: BaseException | None) -> None:
        """Workers died under ``chunk``: send it again (split, or as a suspect) or blame
        it (see ``_dask_work.after_death``)."""
        with self._lock:
            alone = self._flight.alone(chunk)
            self._stats["worker_deaths"] += 1
        again = after_death(chunk.work, killed, alone)
        if isinstance(again, BaseException):
            chunk.work.job.fail(chunk.work.start, again)
            return
        with self._lock:
            self._stats["resubmitted"] += len(again)
        for work in again:
            self._launch(work)

    def _forget(self, chunk: _Chunk) -> None:
        with self._lock:
            if not self._flight.forget(chunk):
                return  # cancel() already forgot it and gave its slot back
        self._release()

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            held = self._flight.take_all()
        for w in held:
            if not w.job.cancelled:
                for k in range(len(w.items)):
                    w.job.fail(w.start + k, exc)

    # -- control --------------------------------------------------------------------------
    def check(self) -> None:
        if not self._collector.is_alive() and not self._closed:
            raise RuntimeError("the dask backend's collector thread has stopped")

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self._lock:
            chunks = self._flight.drop(job)
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
        if not wait and not kill and threading.current_thread() is not self._collector:
            # As concurrent.futures: the work already submitted still finishes
            # (cancelling it left its futures pending for good), behind the caller.
            threading.Thread(
                target=self._close, args=(True, False), name="gilfree-dask-shutdown", daemon=True
            ).start()
            return
        self._close(wait, kill)

    def _close(self, wait: bool, kill: bool) -> None:
        with self._lock:
            # Not from the collector itself (a Future callback calling shutdown): it is
            # the thread that would empty the flight.
            if wait and not kill and threading.current_thread() is not self._collector:
                while not self._flight.empty():
                    self._flight.idle.wait()
            futures = [c.future for c in self._flight.chunks.values() if c.future is not None]
            for w in self._flight.take_all():
                w.job.cancelled = True
        try:
            if futures:
                self._client.cancel(futures)
        finally:
            self._inbox.put(_STOP)
            if self._collector is not threading.current_thread():
                self._collector.join(timeout=CONNECT_TIMEOUT_S)
            self._data.clear()
            self._client.close(timeout=CONNECT_TIMEOUT_S)

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            return {
                "backend": self.name,
                "address": self.address,
                "workers": self.workers,
                "in_flight": len(self._flight.chunks),
                "waiting": len(self._flight.waiting),
                "suspects": len(self._flight.suspects) + self._flight.isolating,
                **self._stats,
            }

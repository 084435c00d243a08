"""gilfree's process pool: one manager thread, one pair of pipes per worker.

Data flow::

    caller threads                     manager thread (_manager)          workers (_worker)
    ──────────────                     ─────────────────────────          ─────────────────
    ProcessPool.submit(job, start, items)
      pickle items (caller's time) ──► incoming ─► pending ─► dispatch ─► task pipe ──► run chunk
      write 1 byte to wake pipe    ──► selector.select() ◄── result pipe ◄─────────── results
                                        │  ◄── process sentinels (exit) ◄─────────── death
                                        │  ◄── timer heap (per-task timeouts)
                                        └─► job.deliver / job.fail (engine queue or Future)

Modules, each readable on its own (no module imports one listed above it)::

    _pool      this facade: pickling in the caller's thread, the function cache
    _manager   the event loop and everything it owns
    _recovery  pure: what a death does to the chunks a worker held; error texts
    _state     Chunk, Worker, the job protocol, the pool and worker states
    _procs     operating-system plumbing: start, watch, reap a worker process
    _zygote    the fork server that starts workers once the parent has threads
    _worker    the worker process's loop
    _wire      frames on pipes, message kinds

Every submitted index gets exactly one outcome: a result, the task's
exception, ``WorkerDied``, ``TaskTimeout``, ``SerializationError``, or
``PoolBroken`` when the pool cannot go on. When a worker dies, its slot (see
``_worker``) names the task it was running; that task fails (or is retried)
and the rest of its chunks run elsewhere.
"""

from __future__ import annotations

import collections
import functools
import multiprocessing
import os
import pickle
import sys
import threading
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .. import _serialize, _shm
from ..errors import ConfigurationError, PoolBroken, SerializationError
from . import _recovery, _worker
from ._manager import Manager
from ._state import Chunk, JobLike, PoolState

#: Distinct pickled functions remembered by workers before the oldest is dropped.
FN_CACHE = 256


def _cpus() -> int:
    """CPUs this process may run on (``gilfree._options.usable_cpus``, which the
    pool may not import: it sits below the options layer)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class ProcessPool:
    """A fixed number of worker processes running chunks of jobs' items.

    Thread-safe. A pool no one holds any more shuts down as ``shutdown(wait=False)``
    would (queued work still runs, then the workers exit), as CPython's
    executors do when garbage-collected.
    """

    def __init__(
        self,
        workers: int,
        *,
        start_method: str | None = None,
        max_tasks_per_worker: int | None = None,
        max_worker_memory: int | None = None,
        share_threshold: int = _shm.DEFAULT_THRESHOLD,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
    ) -> None:
        if workers < 1:
            raise ValueError(f"a process pool needs at least one worker, not {workers}")
        if _worker.IN_WORKER:
            raise ConfigurationError(
                "a task running on a gilfree process worker cannot start a process pool "
                "of its own (backend='process' inside backend='process'): run the inner "
                "map with backend='thread' or 'serial', or the outer one on threads"
            )
        init_blob = None
        if initializer is not None:
            if not callable(initializer):
                raise TypeError(f"initializer must be callable, not {initializer!r}")
            init_blob = _serialize.dump_function(functools.partial(initializer, *initargs))
        self.size = workers
        self._arena = _shm.Arena(share_threshold)
        config = {
            "parent": os.getpid(),
            # Tasks see the caller's sys.argv however their worker was started
            # (the fork server is a `python -c` of its own).
            "argv": list(sys.argv),
            "max_tasks": max_tasks_per_worker,
            "max_memory": max_worker_memory,
            "share_threshold": share_threshold,
            # BLAS/OpenMP threads per worker, so workers x threads <= CPUs.
            "blas_threads": max(1, _cpus() // workers),
            # A worker the zygote (or spawn) starts is not our fork: without our
            # authkey it could not talk to a multiprocessing Manager we pass it.
            "authkey": bytes(multiprocessing.current_process().authkey).hex(),
        }
        try:
            self._manager = Manager(
                workers, config, start_method=start_method, arena=self._arena, init_blob=init_blob
            )
        except OSError as exc:
            # Each worker had its retry (a dead fork server is restarted by
            # it): a fork server killed twice while the pool starts, EMFILE.
            self._arena.close()
            what = f"its first workers could not start ({type(exc).__name__}: {exc})"
            raise _recovery.broken(what, exc) from exc
        except BaseException:
            self._arena.close()
            raise
        self._fn_lock = threading.Lock()
        self._job_fns: weakref.WeakKeyDictionary[Any, tuple[int, bytes] | SerializationError] = (
            weakref.WeakKeyDictionary()
        )
        self._last_fn: tuple[weakref.ref[Any], tuple[int, bytes]] | None = None
        self._fns: weakref.WeakKeyDictionary[Any, tuple[int, bytes]] = weakref.WeakKeyDictionary()
        self._fn_keys: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._next_key = 0
        # Each job's leases on shared memory, so that a job withdrawn before any
        # worker took it frees its segments at once (see withdraw).
        self._job_leases: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        # Not at interpreter exit: workers notice the parent's death on their own.
        weakref.finalize(self, self._manager.stop).atexit = False

    def submit(
        self,
        job: JobLike,
        start: int,
        items: list[Any],
        *,
        timeout: float | None = None,
        retries: int = 0,
        history: tuple[str, ...] = (),
    ) -> None:
        """Run ``job.fn`` on ``items`` (inputs ``start, start+1, ...``); outcomes go to ``job``.

        ``timeout`` bounds each task's seconds; ``retries`` is how many more
        times a task that failed (by exception, death or timeout) is run.
        ``history``: how attempts of these items made elsewhere ended (auto's
        probe); they count against ``retries`` and open a failure's note.
        Raises ``PoolBroken`` if the pool broke, RuntimeError after shutdown.
        """
        self._manager.check_open()
        fn = self._function(job)
        if isinstance(fn, SerializationError):
            for k in range(len(items)):
                job.fail(start + k, fn)
            return
        # An item's __reduce__ may raise anything, SystemExit included: that
        # item's failure, not the caller's (Ctrl-C, though, is the caller's).
        try:
            blob, lease = self._arena.dumps(items)
        except KeyboardInterrupt:
            raise
        except BaseException:  # pickle them one by one: a bad item fails alone
            self._enqueue_one_by_one(job, start, items, fn, timeout, retries, history)
            return
        if lease is not _shm.NO_LEASE:
            with self._fn_lock:
                self._job_leases.setdefault(job, []).append(lease)
        chunk = Chunk(
            job, start, items, blob, lease, fn, timeout=timeout, retries=retries, history=history
        )
        self._manager.enqueue([chunk])

    def _enqueue_one_by_one(
        self,
        job: JobLike,
        start: int,
        items: list[Any],
        fn: tuple[int, bytes],
        timeout: float | None,
        retries: int,
        history: tuple[str, ...],
    ) -> None:
        """``items`` did not pickle together: each that does runs, each that does not fails."""
        chunks: list[Chunk] = []
        for k, item in enumerate(items):
            try:
                blob, lease = self._arena.dumps([item])
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                job.fail(start + k, _serialize.argument_error(start + k, item, exc))
                continue
            chunks.append(
                Chunk(
                    job,
                    start + k,
                    [item],
                    blob,
                    lease,
                    fn,
                    timeout=timeout,
                    retries=retries,
                    history=history,
                )
            )
        leases = [c.lease for c in chunks if c.lease is not _shm.NO_LEASE]
        if leases:
            with self._fn_lock:
                self._job_leases.setdefault(job, []).extend(leases)
        self._manager.enqueue(chunks)

    def withdraw(self, job: JobLike) -> None:
        """``job`` was cancelled before any worker took it: free its shared
        memory now rather than when the manager reaches its queued chunks
        (which it then drops). Only for such a job: a running chunk's segments
        are still being read."""
        with self._fn_lock:
            leases = self._job_leases.pop(job, [])
        for lease in leases:
            lease.release()

    def _function(self, job: JobLike) -> tuple[int, bytes] | SerializationError:
        """(key, pickled function) of ``job``; workers cache functions by key.

        A function pickled by name (a module-level function of an importable
        module) is pickled once while it lives (weakly cached): its pickle
        holds no state that could change. Anything pickled by value -- a
        ``__main__`` function or a closure (their globals and cells), a
        callable object (its attributes) -- is pickled again for each job, so
        that every job sees it as it is when submitted, as with
        ``concurrent.futures``, whose every submit pickles its function.
        """
        fn = job.fn
        last = self._last_fn  # one map's chunks, one function's submits: no lookup
        if last is not None and last[0]() is fn:
            return last[1]
        cached: tuple[int, bytes] | SerializationError | None
        by_fn = type(fn) in _NAMED_TYPES
        try:
            cached = self._fns.get(fn) if by_fn else None
        except TypeError:  # unhashable
            by_fn, cached = False, None
        if cached is not None:
            if not isinstance(cached, SerializationError):
                self._last_fn = (weakref.ref(fn), cached)
            return cached
        # Pickled by value: once per job, for all its chunks (a map of 20,000
        # one-item chunks of a __main__ function pickled it 20,000 times).
        cached = self._job_fns.get(job)
        if cached is not None:
            return cached
        try:
            blob = _serialize.dump_function(fn)
        except SerializationError as exc:
            self._job_fns[job] = exc  # per job: each submit gets its own error
            return exc
        by_fn = by_fn and _pickled_by_name(fn, blob)
        with self._fn_lock:
            key = self._fn_keys.get(blob)
            if key is None:
                self._next_key += 1
                key = self._fn_keys[blob] = self._next_key
                if len(self._fn_keys) > FN_CACHE:
                    _old_blob, old_key = self._fn_keys.popitem(last=False)
                    self._manager.forget(old_key)
            else:
                self._fn_keys.move_to_end(blob)
        if by_fn:
            self._fns[fn] = (key, blob)
            self._last_fn = (weakref.ref(fn), (key, blob))
        else:
            self._job_fns[job] = (key, blob)
        return key, blob

    def shutdown(
        self, *, wait: bool = True, kill: bool = False, cancel_pending: bool = False
    ) -> None:
        """Stop accepting work; ``kill`` stops running work at once (it fails).

        ``cancel_pending`` drops queued chunks whose jobs agree (``withdraw``),
        decided in the manager thread once idle workers got their first chunks.
        """
        self._manager.stop(kill, cancel_pending)
        if wait or kill:
            # Bounded once queued work is done: workers that outstay
            # STOP_GRACE_S are killed, and reaping each is bounded.
            self._manager.join()

    def withdraw_pending(self) -> None:
        """Drop queued chunks whose jobs agree (``withdraw``); the pool goes on."""
        self._manager.withdraw_pending()

    def check(self) -> None:
        """Raise PoolBroken if the pool can no longer deliver outcomes."""
        manager = self._manager
        if manager.error is not None:
            raise manager.broken_error()
        if not manager.alive() and manager.state is not PoolState.CLOSED:
            raise manager.broken_error()

    @property
    def broken(self) -> PoolBroken | None:
        return self._manager.error

    def statistics(self) -> dict[str, Any]:
        return {
            "workers": self.size,
            "state": self._manager.state.value,
            "pids": self._manager.pids(),
            **self._manager.stats,
        }


#: Functions whose pickle can be a bare reference to their name.
_NAMED_TYPES = (types.FunctionType, types.BuiltinFunctionType)


def _pickled_by_name(fn: Any, blob: bytes) -> bool:
    """Whether ``blob`` (cloudpickle's pickle of ``fn``) only names ``fn``:
    then it is what the standard pickler writes, a reference to module and name."""
    try:
        return pickle.dumps(fn, protocol=_serialize.PROTOCOL) == blob
    except Exception:  # a lambda, a function of __main__'s locals: pickled by value
        return False

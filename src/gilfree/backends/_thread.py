"""The thread backend: a pool of daemon threads, for calls that wait or release the GIL.

Why not ``ThreadPoolExecutor``: a task past its ``timeout`` must fail on time
and its thread be *abandoned* -- a thread cannot be killed -- and
ThreadPoolExecutor joins every worker at interpreter exit, so one hung call
would hang the program's exit. Our threads are daemons; a watchdog thread
(started only when a timeout is set) fails an overdue task with
``TaskTimeout`` carrying that thread's stack, starts a replacement thread, and
the abandoned thread drops its result and exits when its call returns.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import sys
import threading
import time
import traceback
from typing import Any

from .._options import Options
from ..errors import PoolBroken, TaskTimeout
from ._base import Backend, Job
from ._run import run_items

#: Threads when the caller does not say: enough to overlap I/O waits. 32 is
#: ThreadPoolExecutor's ceiling; 400 x 10 ms sleeps run within 2% of it.
DEFAULT_THREADS = 32

_thread_ids = itertools.count(1)


class _Running:
    """One task under a timeout, watched by the watchdog."""

    __slots__ = ("abandoned", "attempt", "deadline", "done", "index", "item", "job", "thread")

    def __init__(self, job: Job, index: int, item: Any, attempt: int, deadline: float) -> None:
        self.job = job
        self.index = index
        self.item = item
        self.attempt = attempt
        self.deadline = deadline
        self.thread = threading.current_thread()
        self.done = False
        self.abandoned = False


class ThreadBackend(Backend):
    name = "thread"
    #: A hand-off through the queue costs ~10 us; 2 ms of work per chunk hides it.
    chunk_target_s = 0.002
    #: 64 threads x 2 chunks of 2 ms of tiny tasks held a million items in flight
    #: (gilfree run, 2M lines); tiny tasks hold the GIL and run one at a time
    #: anyway, and waiting tasks come one per chunk, so this cap costs nothing.
    max_outstanding = 65_536

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.workers = options.workers or DEFAULT_THREADS
        self._queue: queue.SimpleQueue[tuple[Job, int, list[Any], int] | None] = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._closed = False
        self._killed = False
        self._watch: list[tuple[float, int, _Running]] = []
        self._watch_seq = itertools.count()
        self._watch_cv = threading.Condition(self._lock)
        self._watchdog: threading.Thread | None = None
        self._broken: PoolBroken | None = None

    def max_chunk(self, job: Job) -> int:
        # A timeout is per task: one task per chunk, so an abandoned thread
        # strands nothing else.
        return 1 if job.options.timeout is not None else 1 << 30

    # -- submission ---------------------------------------------------------
    def submit(self, job: Job, start: int, items: list[Any], attempt: int = 0) -> None:
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._queue.put((job, start, items, attempt))
            if self._idle > 0:
                self._idle -= 1  # claim an idle thread: it will take this chunk
            elif len(self._threads) < self.workers:
                self._start_thread()
            # else: queued until a thread frees up

    def _start_thread(self) -> None:
        t = threading.Thread(
            target=self._work, name=f"gilfree-thread-{next(_thread_ids)}", daemon=True
        )
        self._threads.add(t)
        t.start()

    # -- worker threads -------------------------------------------------------
    def _work(self) -> None:
        me = threading.current_thread()
        try:
            if not self._initialize():
                return
            while True:
                entry = self._queue.get()
                if entry is None:
                    return
                job, start, items, attempt = entry
                if job.begin():
                    if job.options.timeout is None:
                        run_items(job, start, items, attempt, catch=BaseException)
                    elif not self._run_timed(job, start, items[0], attempt):
                        return  # abandoned: a replacement already took our place
                # An idle thread must not keep the last task's function,
                # arguments or job alive (concurrent.futures does not).
                entry = job = items = None  # type: ignore[assignment]
                with self._lock:
                    self._idle += 1
        finally:
            with self._lock:
                self._threads.discard(me)

    def _initialize(self) -> bool:
        """Run the initializer in this new thread; if it fails, the backend is
        broken, as ``ThreadPoolExecutor`` is (``BrokenThreadPool``): every queued
        task fails with ``PoolBroken`` and later submits raise it."""
        init = self.options.initializer
        if init is None:
            return True
        try:
            init(*self.options.initargs)
            return True
        except BaseException as exc:
            broken = PoolBroken(
                f"the thread pool is broken: initializer {init!r} raised "
                f"{type(exc).__name__}: {exc}"
            )
            broken.__cause__ = exc
        with self._lock:
            self._broken = self._broken or broken
            self._closed = True
        self._fail_queued(self._broken)
        return False

    def _fail_queued(self, exc: BaseException) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is None:
                continue
            job, start, items, _attempt = entry
            if job.begin():
                for k in range(len(items)):
                    job.fail(start + k, exc)

    def _run_timed(self, job: Job, index: int, item: Any, attempt: int) -> bool:
        """Run one task under its timeout, retrying here if it raises.

        False when this thread was abandoned (the watchdog took the task over).
        """
        timeout = job.options.timeout
        assert timeout is not None
        while True:
            running = _Running(job, index, item, attempt, time.monotonic() + timeout)
            with self._lock:
                heapq.heappush(self._watch, (running.deadline, next(self._watch_seq), running))
                if self._watchdog is None:
                    self._watchdog = threading.Thread(
                        target=self._watch_loop, name="gilfree-thread-watchdog", daemon=True
                    )
                    self._watchdog.start()
                self._watch_cv.notify()
            t0 = time.perf_counter()
            try:
                value, exc = job.fn(item), None
            except BaseException as e:  # SystemExit too: this task's, as in run_items
                value, exc = None, e
            elapsed = time.perf_counter() - t0
            with self._lock:
                if running.abandoned:
                    return False
                running.done = True
            job.record(1, elapsed)
            if exc is None:
                job.deliver(index, [value])
                return True
            if attempt >= job.options.retries:
                job.fail(index, exc)
                return True
            attempt += 1

    def _watch_loop(self) -> None:
        with self._lock:
            while not (self._closed and (self._killed or not self._watch)):
                if not self._watch:
                    self._watch_cv.wait()
                    continue
                deadline, _, running = self._watch[0]
                now = time.monotonic()
                if running.done:
                    heapq.heappop(self._watch)
                    continue
                if deadline > now:
                    self._watch_cv.wait(deadline - now)
                    continue
                heapq.heappop(self._watch)
                running.abandoned = True
                self._threads.discard(running.thread)
                if not self._closed:
                    self._start_thread()
                self._lock.release()
                try:
                    self._expire(running)
                finally:
                    self._lock.acquire()

    def _expire(self, running: _Running) -> None:
        job = running.job
        if running.attempt < job.options.retries:
            try:  # on another thread: this one is stuck
                self.submit(job, running.index, [running.item], running.attempt + 1)
                return
            except RuntimeError:  # shut down meanwhile: no more attempts, fail it
                pass
        frame = sys._current_frames().get(running.thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        timeout = job.options.timeout
        job.fail(
            running.index,
            TaskTimeout(
                f"task {running.index} ran past its timeout of {timeout} s on thread "
                f"{running.thread.name}; the thread is abandoned (threads cannot be "
                f"killed) and its result will be dropped. Its stack when stopped:\n{stack}",
                index=running.index,
                timeout=timeout,
                stack=stack,
            ),
        )

    # -- lifecycle ------------------------------------------------------------
    cancels_pending = True

    def shutdown(
        self, *, wait: bool = True, kill: bool = False, cancel_pending: bool = False
    ) -> None:
        with self._lock:
            if self._closed:
                # Again (wait=True at exit after a wait=False): join what still runs.
                threads = list(self._threads)
                if self._watchdog is not None:
                    threads.append(self._watchdog)
            else:
                self._closed = True
                self._killed = kill
                if kill:  # drop queued chunks; running calls cannot be stopped
                    while True:
                        try:
                            entry = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if entry is not None:
                            entry[0].withdraw()  # a future's job: cancel the future
                            entry[0].cancelled = True
                elif cancel_pending:
                    self._withdraw_queued()
                for _ in range(len(self._threads)):
                    self._queue.put(None)
                threads = list(self._threads)
                if self._watchdog is not None:
                    threads.append(self._watchdog)
            self._watch_cv.notify_all()
        if wait and not kill:
            for t in threads:
                if t is not threading.current_thread():
                    t.join()

    def cancel_pending(self) -> None:
        with self._lock:
            self._withdraw_queued()

    def _withdraw_queued(self) -> None:
        """Drop the queued chunks no thread has taken whose jobs agree (under _lock).

        A chunk a thread already took runs; so does one whose job declines
        (a stream, or a retry of a task that already started).
        """
        kept = []
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not None and not entry[0].withdraw():
                kept.append(entry)
        for entry in kept:
            self._queue.put(entry)

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            return {"backend": self.name, "workers": self.workers, "threads": len(self._threads)}

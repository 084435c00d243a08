"""The worker process: read a chunk, run it, send results, repeat.

What the parent can see of a worker without asking it:

* its *slot*, four int64 in shared memory: the chunk it runs, the position in
  that chunk, when that task started (CLOCK_MONOTONIC, which is system-wide on
  Linux) and whether a task is running. When the worker dies the slot says
  which task killed it; while it lives, which task may be over its timeout.
* its *stack pipe*: faulthandler writes the Python stack there on a fatal
  signal (segfault) and on SIGUSR1, which the parent sends before it kills a
  task past its timeout.

The worker ignores SIGINT (Ctrl-C reaches the whole process group; the parent
decides) and exits by itself when the parent dies: a watchdog thread blocks on
a pipe whose only write end the parent holds, and reads EOF when it is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import mmap
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import _serialize, _shm
from ..errors import SerializationError
from . import _namespace, _wire

#: A BLAS/OpenMP pool inherited through fork is capped only once it runs:
#: capping one that never ran starts its threads, which spin for ~0.1 s of CPU
#: (in a forked child OpenBLAS restarts its server on any thread-count call).
#: Paid in every worker, that made 200,000 tiny tasks 1.7x slower, and cost
#: ~12 ms of CPU per worker on pure-Python work that never calls BLAS (64
#: workers: ~0.8 s). So after a chunk whose tasks took this long on average
#: the worker counts its threads; more than its own (a pool woke up) and it
#: caps them. Microsecond tasks never run BLAS at length.
CAP_AFTER_S = 0.001
#: ...and counts them at most this often (reading /proc costs ~15 us).
THREAD_CHECK_S = 0.1
#: Results of a chunk still running are sent home at least this often, so a
#: crash late in a long chunk loses (and re-runs) little finished work.
FLUSH_S = 0.2

_RUNNING = 1
_IDLE = 0


#: True in a pool worker once it runs: a task there cannot start a pool of its own.
IN_WORKER = False
#: Why this worker must retire after its chunk (``retire_after_chunk``), if it must.
_must_retire = ""
#: This worker's slot, once it serves (``restart_clock``).
_slot: memoryview | None = None


def restart_clock(ns: int) -> None:
    """Called by a task that runs several calls at once (``_on_threads``): the
    pool's timeout for it counts from ``ns`` (CLOCK_MONOTONIC), the start of
    its oldest call still running. A call that holds the GIL stops these
    updates, and so is stopped on time with its worker."""
    if _slot is not None:
        _slot[2] = ns


def retire_after_chunk(reason: str) -> None:
    """Called by a task: this worker exits once its chunk's results are sent
    (it holds a thread that cannot be stopped), and the pool replaces it."""
    global _must_retire
    _must_retire = reason


def main(
    config: dict[str, Any],
    task_fd: int,
    result_fd: int,
    stack_fd: int,
    alive_fd: int,
    slots_fd: int,
    close_fds: Sequence[int] = (),
) -> None:
    global IN_WORKER
    IN_WORKER = True
    _take_callers_state(config)
    for fd in close_fds:  # the parent's ends, inherited through fork
        try:
            os.close(fd)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forking parent holds SIGINT back until here (see _procs.WorkerProcess);
    # set to SIG_IGN first, one sent in between is dropped.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if config.get("authkey"):  # the caller's, for multiprocessing proxies in tasks
        multiprocessing.current_process().authkey = bytes.fromhex(config["authkey"])
    faulthandler.enable(file=stack_fd, all_threads=False)
    faulthandler.register(signal.SIGUSR1, file=stack_fd, all_threads=False)
    ppid: int | None = config.get("ppid")
    armed = ppid is not None and _die_with_parent(ppid)
    if not (armed and ppid == config["parent"]):
        # The kernel kills us with our parent, so no watcher thread is needed
        # (~0.25 ms of CPU a worker) -- unless that parent is the fork server,
        # which outlives the pool's process by as long as it takes to notice.
        _watch_parent(alive_fd)
    _cap_native_threads(config["blas_threads"])
    index = config["index"]
    slots = mmap.mmap(slots_fd, 0)
    slot = memoryview(slots).cast("q")[4 * index : 4 * index + 4]
    worker = Worker(task_fd, result_fd, slot, config["max_tasks"], config["max_memory"])
    if "numpy" in sys.modules:  # inherited through fork, with the parent's thread count
        worker.blas_cap = config["blas_threads"]
    worker.results = _shm.ResultPickler(config["share_threshold"], config["parent"])
    worker.serve()
    # Done: leave without the interpreter's exit steps. A forked worker holds
    # copies of the caller's atexit and threading exit hooks (executors to shut
    # down, files to flush), which are the caller's to run, not ours; running
    # them held every shutdown up for its 2 s grace.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


#: Variables read by BLAS and OpenMP runtimes when they load.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _cap_native_threads(n: int) -> None:
    """workers x native threads <= CPUs: no oversubscription of the machine.

    These variables cap the libraries loaded from now on. Libraries inherited
    through fork are capped later by ``Worker.cap_inherited_pools``.
    """
    for var in _THREAD_VARS:
        os.environ[var] = str(n)


#: Exit status of a worker that lost its parent (or its end of the alive pipe).
PARENT_GONE = _wire.PARENT_GONE


_prctl: Any = None


def prepare_fork() -> None:
    """In the parent, before forking workers: look ``prctl`` up once, so that
    each forked worker does not (~0.2 ms of CPU a worker)."""
    global _prctl
    if _prctl is None:
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # not Linux
            _prctl = False


def _die_with_parent(ppid: int) -> bool:
    """Have the kernel SIGKILL us when our parent process dies; True if it will.

    The watcher thread below needs the GIL to exit, which a task stuck in one
    long C call never gives up; the kernel needs nothing from us. Only set for
    a parent whose forking thread lives as long as it does (the caller's main
    thread, or the single-threaded zygote): PR_SET_PDEATHSIG fires when the
    *thread* that forked us ends.
    """
    prepare_fork()
    if not _prctl or _prctl(1, signal.SIGKILL) != 0:  # PR_SET_PDEATHSIG
        return False  # not Linux: the watcher thread remains
    if os.getppid() != ppid:  # the parent died before prctl took effect
        os._exit(PARENT_GONE)
    return True


def _watch_parent(fd: int) -> None:
    def watch() -> None:
        # SIGUSR1 (stack dump before a timeout kill) must land in the task's
        # thread, not here: faulthandler dumps the thread that receives it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os._exit(PARENT_GONE)  # parent gone: nobody will read our results

    threading.Thread(target=watch, name="gilfree-parent-watch", daemon=True).start()


class Worker:
    def __init__(
        self,
        task_fd: int,
        result_fd: int,
        slot: memoryview,
        max_tasks: int | None,
        max_memory: int | None,
    ) -> None:
        self.task_fd = task_fd
        self.frames = _wire.BlockingFrames(task_fd)
        self.result_fd = result_fd
        self.slot = slot
        global _slot
        _slot = slot
        self.fns: dict[int, Any] = {}
        self.max_tasks = max_tasks
        self.max_memory = max_memory
        self.tasks_done = 0
        self.results: _shm.ResultPickler | None = None
        self.blas_cap: int | None = None
        self.own_threads = _thread_count()  # this one and the parent watcher
        self.next_thread_check = 0.0

    def dumps(self, msg: Any) -> bytes:
        if self.results is not None and _shm.numpy_loaded():
            return self.results.dumps(msg)
        return _serialize.dumps_data(msg)

    def send(self, msg: tuple[Any, ...]) -> None:
        _wire.send_frame(self.result_fd, pickle.dumps(msg, _serialize.PROTOCOL))

    def serve(self) -> None:
        while True:
            raw = self.frames.recv()
            if raw is None:
                return  # the parent closed our pipe: orderly exit
            msg = pickle.loads(raw)
            kind = msg[0]
            if kind == _wire.CHUNK:
                t0 = time.perf_counter()
                n = self.run_chunk(msg[1], msg[2], msg[3], msg[4])
                if self.blas_cap is not None and time.perf_counter() - t0 > CAP_AFTER_S * n:
                    self.cap_if_running()
                reason = self.retire_reason()
                if reason:
                    self.send((_wire.RETIRE, reason))
                    return
            elif kind == _wire.FN:
                self.define(msg[1], msg[2])
            elif kind == _wire.INIT:
                if not self.initialize(msg[1]):
                    return
            elif kind == _wire.FORGET:
                self.fns.pop(msg[1], None)

    def initialize(self, blob: bytes) -> bool:
        """Run the pool's initializer; on failure tell the parent and return False (exit)."""
        try:
            _namespace.shared(_serialize.loads(blob))()
        except BaseException as exc:
            exc_, tb = _serialize.exception_payload(exc)
            self.send((_wire.INITFAIL, exc_, tb))
            return False
        self.send((_wire.INITOK,))
        return True

    def cap_if_running(self) -> None:
        """Cap inherited pools once native threads beyond our own show one is running."""
        now = time.monotonic()
        if now < self.next_thread_check:
            return
        self.next_thread_check = now + THREAD_CHECK_S
        if _thread_count() > self.own_threads:
            self.cap_inherited_pools()

    def cap_inherited_pools(self) -> None:
        """Cap BLAS/OpenMP pools this worker inherited loaded through fork."""
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        threadpool_limits(limits=self.blas_cap)
        self.blas_cap = None

    def define(self, key: int, blob: bytes) -> None:
        try:
            self.fns[key] = _namespace.shared(_serialize.loads(blob))
        except BaseException as exc:
            self.fns[key] = SerializationError(
                f"the function could not be unpickled in the worker: {type(exc).__name__}: {exc}",
                what="function",
            )

    def run_chunk(self, seq: int, key: int, blob: bytes, careful: bool) -> int:
        """Run one chunk; returns how many tasks it held."""
        slot = self.slot
        slot[0] = seq
        slot[3] = _IDLE
        try:
            items = _serialize.loads(blob)
        except BaseException as exc:
            self.send((_wire.LOADFAIL, seq, f"{type(exc).__name__}: {exc}"))
            return 1
        fn = self.fns.get(key)
        if fn is None or isinstance(fn, SerializationError):
            err = fn or SerializationError("function not defined in worker", what="function")
            failures = [(p, err, "") for p in range(len(items))]
            self.send((_wire.RESULT, seq, 0, [None] * len(items), failures, 0.0, True))
            return max(1, len(items))
        if careful:
            self.run_careful(seq, fn, items)
        else:
            self.run_fast(seq, fn, items)
        self.tasks_done += len(items)
        return max(1, len(items))

    def run_fast(self, seq: int, fn: Any, items: list[Any]) -> None:
        """Tiny tasks: one slot write per task, nothing else (as fast as list(map))."""
        slot = self.slot
        values: list[Any] = []
        append = values.append
        failures: list[tuple[int, BaseException, str]] = []
        t0 = time.perf_counter()
        slot[3] = _RUNNING
        for pos, item in enumerate(items):
            slot[1] = pos
            try:
                append(fn(item))
            except BaseException as exc:  # SystemExit in a task is that task's failure
                append(None)
                failures.append((pos, *_serialize.exception_payload(exc)))
        slot[3] = _IDLE
        self.send_results(seq, 0, values, failures, time.perf_counter() - t0, True)

    def run_careful(self, seq: int, fn: Any, items: list[Any]) -> None:
        """Tasks under a timeout or long ones: each start is timed, results stream home."""
        slot = self.slot
        values: list[Any] = []
        failures: list[tuple[int, BaseException, str]] = []
        offset = 0
        clock = time.monotonic_ns
        t0 = time.perf_counter()
        last_flush = clock()
        flush_ns = int(FLUSH_S * 1e9)
        for pos, item in enumerate(items):
            now = clock()
            if now - last_flush > flush_ns and values:
                t1 = time.perf_counter()
                self.send_results(seq, offset, values, failures, t1 - t0, False)
                offset += len(values)
                values, failures, t0, last_flush = [], [], t1, now
            slot[1] = pos
            slot[2] = now
            slot[3] = _RUNNING
            try:
                values.append(fn(item))
            except BaseException as exc:  # SystemExit in a task is that task's failure
                values.append(None)
                failures.append((pos, *_serialize.exception_payload(exc)))
            slot[3] = _IDLE
        self.send_results(seq, offset, values, failures, time.perf_counter() - t0, True)

    def send_results(
        self,
        seq: int,
        offset: int,
        values: list[Any],
        failures: list[tuple[int, BaseException, str]],
        elapsed: float,
        final: bool,
    ) -> None:
        msg = (_wire.RESULT, seq, offset, values, failures, elapsed, final)
        try:
            payload = self.dumps(msg)
        except BaseException:  # a result's __reduce__ may even call sys.exit
            payload = self.dumps(self._isolate_unpicklable(msg))
        _wire.send_frame(self.result_fd, payload)

    @staticmethod
    def _isolate_unpicklable(msg: tuple[Any, ...]) -> tuple[Any, ...]:
        """Replace each result that cannot be pickled by a SerializationError."""
        kind, seq, offset, values, failures, elapsed, final = msg
        failures = list(failures)
        clean = []
        for k, value in enumerate(values):
            try:
                _serialize.dumps_data(value)  # plain pickling: no segment is made
                clean.append(value)
            except Exception as exc:
                clean.append(None)
                failures.append(
                    (
                        offset + k,
                        SerializationError(
                            f"result of type {type(value).__name__} ({_serialize.describe(value)}) "
                            f"cannot be pickled back to the parent: {type(exc).__name__}: {exc}",
                            what="result",
                        ),
                        "",
                    )
                )
            except BaseException as exc:
                # SystemExit (say) from the result's __reduce__: that task's
                # failure, as if the task had raised it (what concurrent.futures
                # reports); the worker must not die of it with the chunk unsettled.
                clean.append(None)
                exc.add_note(
                    f"raised while pickling the result of task {offset + k} "
                    f"(of type {type(value).__name__}) in the worker"
                )
                failures.append((offset + k, *_serialize.exception_payload(exc)))
        return (kind, seq, offset, clean, failures, elapsed, final)

    def retire_reason(self) -> str:
        if _must_retire:
            return _must_retire
        if self.max_tasks is not None and self.tasks_done >= self.max_tasks:
            return f"ran {self.tasks_done} tasks (max_tasks_per_worker={self.max_tasks})"
        if self.max_memory is not None:
            rss = _rss()
            if rss > self.max_memory:
                return f"uses {rss} bytes of memory (max_worker_memory={self.max_memory})"
        return ""


def _thread_count() -> int:
    """Threads of this process, native ones included (an unknown count: assume many)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1 << 30


def _take_callers_state(config: dict[str, Any]) -> None:
    """What a worker the fork server or spawn started must take from the caller:
    a forked worker has it already."""
    if "argv" in config:
        sys.argv[:] = config["argv"]
    if "sys_path" in config:
        sys.path[:] = config["sys_path"]
    if "environ" in config:
        os.environ.clear()
        os.environ.update(config["environ"])
    if "cwd" in config:
        with contextlib.suppress(OSError):
            os.chdir(config["cwd"])


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def spawned_main() -> None:
    """Entry point of a worker started by the spawn launcher in ``_procs``."""
    import json

    config = json.loads(sys.argv[1])
    task_fd, result_fd, stack_fd, alive_fd, slots_fd = map(int, sys.argv[2:7])
    main(config, task_fd, result_fd, stack_fd, alive_fd, slots_fd)

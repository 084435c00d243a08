"""The probe of a function that looks tiny, in a bare forked child.

For ``x * x`` over 200,000 items the job itself is ~8 ms; making a one-worker
process pool to probe it cost more than that (start-up, a manager thread, the
pool's imports, joining it). Here the caller forks once, the child runs the
planner's serial phase on the samples and sends its outcomes and timings back
through a pipe, and exits::

    caller ── fork ──► child: for each batch (1, 1, 2, 4, ... calls):
      │                   mark (call index, start time) in a shared page
      │                   call, time, pickle the batch's outcomes ──► pipe
      └── select(pipe, until the marked call's timeout) ◄──────────────┘

The guarantees are the pool's: the calls never run in the caller; a call that
kills the child is ``WorkerDied`` for that item (the shared page names it) and
the probe stops there; a call past ``timeout=`` is ``TaskTimeout`` (its stack
is dumped by faulthandler, then the child is killed); Ctrl-C kills the child.
The child inherits the function and the samples, so nothing is pickled on the
way in, and it leaves by ``os._exit`` (no exit hooks of the caller run twice).
It is reaped later, off the job's critical path (``reap``).

Only a single-threaded caller forks (a fork copies no other thread, and a lock
another thread held would stay locked in the child): otherwise, and where
``os.fork`` does not exist, ``available()`` says no and the pool probes.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _probe_child, _serialize, _stacks
from ._probe_child import PAIR_MARK, _child
from .errors import TaskTimeout, WorkerDied
from .planner import _probe as probing

#: Seconds to wait for a timed-out call's stack (faulthandler) before the kill.
STACK_WAIT_S = 0.5
#: Seconds the child may spend between calls when ``timeout=`` is given (see ``_limit``).
BETWEEN_CALLS_S = 10.0
#: ...and reads the mark at least this often meanwhile (see ``_between_polls``).
POLL_BETWEEN_S = 0.05
#: Pids of children that finished and are not reaped yet.
_unreaped: list[int] = []


def available(start_method: str | None) -> bool:
    """Whether this process may probe in a bare forked child now."""
    return hasattr(os, "fork") and start_method in (None, "fork") and threading.active_count() == 1


#: A sample this large (``approx_size``) is probed in the forked child, which
#: inherits it, two-thread phase included: the pool would pickle every sample
#: it sends (a 200,000-tuple list: ~80 ms to pickle, ~70 ms to unpickle).
LARGE_ARG_BYTES = 64 * 1024
#: Pickling a sample to time it stops after a call's time, or at least this long.
PICKLE_FLOOR_S = 0.002
#: ...and is first tried for this long while the child runs its first calls
#: (the caller would only wait for the child meanwhile; 2 cores run both).
PICKLE_MEANWHILE_S = 0.02


def looks_large(samples: Sequence[Any]) -> bool:
    """Whether the first sample looks costly to send to a worker."""
    return bool(samples) and approx_size(samples[0]) >= LARGE_ARG_BYTES


def approx_size(obj: Any, depth: int = 0) -> int:
    """Bytes of ``obj`` by ``sys.getsizeof``, looking two levels into lists and
    tuples (a starmap's argument tuple, a list of lists) from their first items.
    Cheap and rough: it only sorts small arguments from large ones."""
    try:
        size = sys.getsizeof(obj)
    except Exception:  # a __sizeof__ that raises
        return 0
    if depth < 2 and type(obj) in (list, tuple) and obj:
        head = obj[:8]
        size += sum(approx_size(x, depth + 1) for x in head) * len(obj) // len(head)
    return size


class _Enough(Exception):
    pass


class _Meter:
    """A file that counts what the pickler writes and stops it at a deadline
    (protocol 5 writes its frames as it goes, about every 64 KiB)."""

    __slots__ = ("deadline", "written")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.written = 0

    def write(self, data: Any) -> int:
        n = len(data)
        self.written += n
        if time.perf_counter() > self.deadline:
            raise _Enough
        return n


def timed_pickle(obj: Any, limit_s: float) -> tuple[float, int, list[int], bool] | None:
    """Pickle ``obj`` as the pool would (plain pickle, protocol 5), stopping
    after ``limit_s``: ``(seconds, in-band bytes, out-of-band buffer sizes,
    whole)``; when not ``whole``, seconds and bytes are floors. None when plain
    pickle cannot pickle it (the pool falls back to cloudpickle)."""
    oob: list[int] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        oob.append(buf.raw().nbytes)
        return False

    t0 = time.perf_counter()
    meter = _Meter(t0 + limit_s)
    try:
        pickle.Pickler(meter, 5, buffer_callback=out_of_band).dump(obj)
    except _Enough:
        return time.perf_counter() - t0, meter.written, oob, False
    except KeyboardInterrupt:
        raise
    except BaseException:  # a __reduce__ may raise anything: as the pool's submit
        return None
    return time.perf_counter() - t0, meter.written, oob, True


def reap() -> None:
    """Collect the exit status of finished probe children (never blocks)."""
    for pid in list(_unreaped):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # someone else collected it
            done = pid
        if done:
            _unreaped.remove(pid)


def probe(
    fn: Callable[[Any], Any],
    samples: Sequence[Any],
    budget: float,
    timeout: float | None,
    *,
    whole: bool = False,
    pair: bool = False,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[probing.ProbeResult, int, bool]:
    """Run the serial phase of the planner's probe on ``samples`` in a child.

    Returns the measurements, how many samples it settled (a prefix: the
    serial phase stops when it has measured enough, when its calls turn out
    to take ``PAIR_MIN_CALL_S`` or more -- the rest is left for a two-thread
    phase on the pool -- or after a call that killed the child or ran past
    ``timeout``), and whether such a fault stopped the child.

    ``whole``: the child runs the whole probe (large arguments, which the pool
    would have to pickle): its serial phase does not stop early for long
    calls, and runs ``WARM_UP_CALLS`` at least; with ``pair`` the two-thread
    phase follows, on the samples after the serial ones.
    A crash or overrun there cannot be pinned on one sample: ``pair_skipped``
    then says so and those samples are left unsettled. ``meanwhile`` runs
    here while the child starts (the marks keep its calls' deadlines).
    """
    reap()
    # Every sample, unless the calls turn out too long for that (see _child): a
    # tiny function gets no two-thread phase, so nothing is kept back for one,
    # and each sample probed is one that cannot crash the caller later.
    n = len(samples)
    limit = n - probing.PAIR_RESERVE if whole and pair and n >= probing.PAIR_RESERVE + 2 else n
    cap = probing.SERIAL_SHARE * budget
    pair_cap = probing.PAIR_SHARE * budget if whole and pair else None
    mark = mmap.mmap(-1, 16)
    view = memoryview(mark).cast("q")
    view[0] = -1
    view[1] = time.monotonic_ns()
    r, w = os.pipe()
    stack_r, stack_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # or the child would write the caller's buffer again
        except Exception:  # a closed or odd stream
            pass
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which leaves by _exit
        os.close(r)
        os.close(stack_r)
        code = 0
        try:
            _child(fn, samples, limit, cap, whole, pair_cap, view, w, stack_w, timeout)
        except BaseException:
            code = 70
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    pass
            os._exit(code)
    os.close(w)
    os.close(stack_w)
    started = time.perf_counter()
    result = probing.ProbeResult()
    settled, faulted = 0, True
    try:
        if meanwhile is not None:
            meanwhile()
        settled, faulted = _collect(
            pid, r, stack_r, view, samples, timeout, pair_cap or 0.0, result
        )
    except BaseException:
        _kill(pid)
        raise
    finally:
        os.close(r)
        os.close(stack_r)
        view.release()
        mark.close()
    result.failures = sum(1 for ok, _ in result.outcomes.values() if not ok)
    result.seconds = time.perf_counter() - started
    return result, settled, faulted


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _limit(k: int, timeout: float | None, pair_s: float = 0.0) -> float:
    """Seconds the child may spend at mark ``k``: a call gets ``timeout``; the
    child's own work between calls (starting, pickling a batch) at least
    ``BETWEEN_CALLS_S``, so a short timeout on a busy machine blames no call;
    the two-thread phase that as well as its share of the budget."""
    assert timeout is not None
    if k >= 0:
        return timeout
    return max(timeout, BETWEEN_CALLS_S) + (pair_s if k == PAIR_MARK else 0.0)


def _between_polls(timeout: float) -> float:
    """How often the parent reads the mark while the child is between calls.

    A call started meanwhile has only ``timeout``: waiting out the longer
    between-calls limit first let a hung call run ~10 s under ``timeout=1``
    whenever the parent read a batch before the child marked its next call
    (a loaded machine; 11-18 s on 3.13t in a full suite)."""
    return max(0.001, min(POLL_BETWEEN_S, timeout / 10))


def _read_mark(view: memoryview) -> tuple[int, int]:
    """(call index, its start in monotonic ns); the child writes the time, then
    the index, so a torn read only ever shows a later start (a later deadline)."""
    while True:
        k = view[0]
        t = view[1]
        if view[0] == k:
            return k, t


def _collect(
    pid: int,
    r: int,
    stack_r: int,
    view: memoryview,
    samples: Sequence[Any],
    timeout: float | None,
    pair_s: float,
    result: probing.ProbeResult,
) -> tuple[int, bool]:
    """Read the child's batches into ``result`` until it ends, dies or overruns.

    Returns how many samples it settled, and whether a fault stopped it."""
    buf = bytearray()
    settled = 0
    while True:
        wait = None
        if timeout is not None:
            k, t = _read_mark(view)
            wait = max(0.0, t / 1e9 + _limit(k, timeout, pair_s) - time.monotonic())
            if k < 0:  # the child may start a call any moment, with a shorter limit
                wait = min(wait, _between_polls(timeout))
        ready, _, _ = select.select([r], [], [], wait)
        if not ready:
            k, t = _read_mark(view)
            if time.monotonic() - t / 1e9 < _limit(k, timeout, pair_s):
                continue  # another call started since: its own deadline
            stack = _stack_of(pid, stack_r)
            _kill(pid)
            if k >= 0:
                result.outcomes[k] = (False, _timeout_error(k, samples[k], timeout, stack))
                return k + 1, True
            if k == PAIR_MARK:
                result.pair_skipped = (
                    "the two-thread measurement ran past its time limit and was stopped; "
                    "its samples are probed again on the pool"
                )
                return settled, True
            # Stuck between calls (a result's __reduce__, say): no call to
            # blame; the samples not settled are probed again on the pool.
            result.pair_skipped = "the probe's child stopped between calls"
            return settled, True
        chunk = os.read(r, 1 << 16)
        if chunk:
            buf += chunk
            while len(buf) >= 8:
                size = int.from_bytes(buf[:8], "little")
                if len(buf) < 8 + size:
                    break
                msg = pickle.loads(bytes(buf[8 : 8 + size]))
                del buf[: 8 + size]
                if msg is None:  # the end: the child exits by itself
                    _unreaped.append(pid)
                    return settled, False
                if msg[0] == "pair":
                    settled = _add_pair(result, msg[1], settled)
                    continue
                settled = _add_batch(result, msg)
            continue
        # EOF without the end: the child died.
        k, _t = _read_mark(view)
        _pid, status = os.waitpid(pid, 0)
        stack = _task_frames(_stacks.read_dump(stack_r))
        if k < 0:
            result.crashes += 1
            if k == PAIR_MARK:
                result.pair_skipped = (
                    "the two-thread measurement stopped (its process died); its samples "
                    "are probed again on the pool"
                )
            return settled, True
        result.outcomes[k] = (False, _death_error(pid, status, k, samples[k], stack))
        result.crashes += 1
        return k + 1, True


def _add_batch(result: probing.ProbeResult, msg: tuple[Any, ...]) -> int:
    first, outcomes, wall, cpu, pcpu, rq = msg
    for k, (ok, value) in enumerate(outcomes):
        if not ok:
            exc, tb = value
            value = _serialize.with_remote_traceback(exc, tb)
        result.outcomes[first + k] = (ok, value)
    if first == 0:
        result.first_wall = wall  # the first batch is one call
    result.serial_calls += len(outcomes)
    result.serial_wall += wall
    result.serial_cpu += cpu
    result.serial_process_cpu += pcpu
    result.serial_runqueue += rq
    return int(first) + len(outcomes)


def _add_pair(result: probing.ProbeResult, pair: probing.ProbeResult, settled: int) -> int:
    """The child's two-thread phase (outcomes from sample ``settled`` on) into ``result``."""
    for k, (ok, value) in pair.outcomes.items():
        if not ok:
            exc, tb = value
            value = _serialize.with_remote_traceback(exc, tb)
        result.outcomes[k] = (ok, value)
    result.suspects.extend(pair.suspects)  # calls past timeout=: run again alone
    for name in ("pair_calls", "pair_wall", "pair_cpu", "pair_windows", "overlap"):
        setattr(result, name, getattr(pair, name))
    result.pair_skipped = pair.pair_skipped
    return max([settled, *(k + 1 for k in [*pair.outcomes, *pair.suspects])])


def _stack_of(pid: int, stack_r: int) -> str:
    """The stack of the child's running call: faulthandler writes it on SIGUSR1."""
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return ""
    return _task_frames(_stacks.read_dump(stack_r, STACK_WAIT_S))


def _task_frames(stack: str) -> str:
    """The task's frames: below the child's loop (``_probe_child``) come the caller's
    own frames, inherited by the fork."""
    return _stacks.task_frames(stack, loop_file=_probe_child.__file__)


def _death_error(pid: int, status: int, index: int, item: Any, stack: str) -> WorkerDied:
    from .pool._recovery import describe_exit  # only after a crash

    exitcode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    how, signame = describe_exit(exitcode)
    text = _serialize.describe(item)
    msg = (
        f"the planner's probe process {pid} {how} while running task {index} "
        f"(input: {text}). The caller was not affected."
    )
    if stack.strip():
        msg += f"\nIts Python stack when it crashed:\n{stack.rstrip()}"
    return WorkerDied(
        msg, index=index, item=text, exitcode=exitcode, signal_name=signame, stack=stack
    )


def _timeout_error(index: int, item: Any, timeout: float | None, stack: str) -> TaskTimeout:
    return TaskTimeout(
        f"task {index} (input: {_serialize.describe(item)}) ran past its timeout of "
        f"{timeout} s; the planner's probe process running it was stopped. Its Python "
        f"stack when stopped:\n{stack.rstrip() or '(not available)'}",
        index=index,
        timeout=timeout,
        stack=stack,
    )

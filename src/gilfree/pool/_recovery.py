"""What happens to a dead worker's chunks, and what the errors say: pure functions.

When a worker dies the manager gathers what it knows (why it died, which task
its slot says was running, the chunks it held) and ``recover`` decides, without
touching the pool, which tasks fail and which go back to the queue. The table
in ``tests/pool/test_recovery.py`` runs every case through it.
"""

from __future__ import annotations

import enum
import os
import signal
from collections.abc import Sequence
from typing import NamedTuple

from .. import _stacks
from ..errors import PoolBroken, TaskTimeout, WorkerDied
from . import _wire

#: Deaths a chunk may cause without any task of it running before its tasks
#: fail (a crash while unpickling its items, say).
MAX_ANONYMOUS_DEATHS = 2


class Cause(enum.Enum):
    CRASH = "crash"  # it died on its own: signal, os._exit, ...
    TIMEOUT = "timeout"  # we killed it: a task ran past its timeout
    RETIRED = "retired"  # it exited on purpose (max_tasks / max_memory): blameless
    SERVER = "server"  # its fork server died and took it along: blameless


class Held(NamedTuple):
    """One chunk the dead worker held, in the order it was sent."""

    seq: int
    done: int  # leading items whose outcomes arrived
    size: int
    deaths: int  # earlier deaths it caused with none of its tasks running


class Requeue(NamedTuple):
    """Items ``a .. b-1`` of chunk ``seq`` go back to the front of the queue."""

    seq: int
    a: int
    b: int
    deaths: int


class Fail(NamedTuple):
    """Task ``pos`` of chunk ``seq`` fails (or is retried, if its budget allows)."""

    seq: int
    pos: int
    why: str  # "crash", "timeout" or "loading" (died with no task of it running)


def recover(
    cause: Cause, culprit: tuple[int, int] | None, held: Sequence[Held]
) -> list[Requeue | Fail]:
    """Give every task the dead worker held an outcome or a place in the queue.

    ``culprit`` is (chunk seq, position) of the task that was running when it
    died, if its slot (or the timeout that killed it) says so.
    """
    if cause in (Cause.RETIRED, Cause.SERVER):
        culprit = None
    out: list[Requeue | Fail] = []
    for k, h in enumerate(held):
        if culprit is not None and culprit[0] == h.seq:
            pos = culprit[1]
            if pos > h.done:
                out.append(Requeue(h.seq, h.done, pos, h.deaths))
            out.append(Fail(h.seq, pos, "timeout" if cause is Cause.TIMEOUT else "crash"))
            if pos + 1 < h.size:
                out.append(Requeue(h.seq, pos + 1, h.size, h.deaths))
            continue
        if h.done >= h.size:
            continue
        if culprit is None and cause is Cause.CRASH and k == 0:
            # Died between tasks of its first chunk: loading it, perhaps.
            if h.deaths + 1 >= MAX_ANONYMOUS_DEATHS:
                out.extend(Fail(h.seq, pos, "loading") for pos in range(h.done, h.size))
            else:
                out.append(Requeue(h.seq, h.done, h.size, h.deaths + 1))
            continue
        out.append(Requeue(h.seq, h.done, h.size, h.deaths))
    return out


# -- what the errors say --------------------------------------------------------------------
def describe_exit(exitcode: int | None, *, in_task: bool = True) -> tuple[str, str | None]:
    """('was killed by SIGSEGV (a segmentation fault...)', 'SIGSEGV'), or a status
    (with what in a task ends a process so, unless not ``in_task``)."""
    if exitcode is None:
        return "disappeared", None
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"was killed by signal {-exitcode}", None
        hint = {
            signal.SIGKILL: "killed from outside, often by the kernel's OOM killer",
            signal.SIGSEGV: "a segmentation fault, usually in C code",
            signal.SIGBUS: "a bus error, usually in C code or a truncated mmap",
            signal.SIGABRT: "aborted, usually by a failed assertion in C code",
            signal.SIGTERM: "terminated from outside",
        }.get(sig, signal.strsignal(sig) or "")
        return f"was killed by {sig.name} ({hint})", sig.name
    if exitcode == _wire.PARENT_GONE:
        return "exited after losing its pipe to the parent (status 70)", None
    if not in_task:
        return f"exited with status {exitcode}", None
    return f"exited with status {exitcode} (os._exit in the task, or sys.exit outside one)", None


_WORKER_LOOP = os.path.join("gilfree", "pool", "_worker.py")


def task_frames(stack: str, loop_file: str = _WORKER_LOOP) -> str:
    """A worker's stack with the task's frames only (below ``_worker``'s loop:
    frames inherited from the fork)."""
    return _stacks.task_frames(stack, loop_file)


def death_error(
    pid: int, exitcode: int | None, index: int, item: str, stack: str, *, loading: bool = False
) -> WorkerDied:
    stack = task_frames(stack)
    how, signame = describe_exit(exitcode)
    what = f"while loading or starting task {index}" if loading else f"while running task {index}"
    msg = f"worker process {pid} {how} {what} (input: {item})."
    msg += " The worker was replaced."
    if stack.strip():
        msg += f"\nIts Python stack when it crashed:\n{stack.rstrip()}"
    return WorkerDied(
        msg, index=index, item=item, exitcode=exitcode, signal_name=signame, stack=stack
    )


def timeout_error(index: int, item: str, timeout: float | None, stack: str) -> TaskTimeout:
    stack = task_frames(stack)
    return TaskTimeout(
        f"task {index} (input: {item}) ran past its timeout of {timeout} s; its worker was "
        "stopped and replaced. Its Python stack when stopped:\n"
        f"{stack.rstrip() or '(not available)'}",
        index=index,
        timeout=timeout,
        stack=stack,
    )


def broken(reason: str, cause: BaseException | None = None) -> PoolBroken:
    """The error every pending and later task of a broken pool fails with."""
    err = PoolBroken(
        f"gilfree's process pool is broken and cannot run more tasks: {reason}. "
        "Tasks not yet finished failed with this error; make a new pool to go on."
    )
    err.__cause__ = cause
    return err

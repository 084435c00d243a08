"""Planning out of process: the probe calls the user's function, so it runs in a child.

``gilfree.advise`` times real calls of the function on sample items in the
calling process. For the command that process holds the output file, so the
probe runs in a child Python (``python -m gilfree._cli._probe``) that loads
``MODULE:FUNC`` itself, plans, and sends back the plan and the records of the
calls it made. A sample that segfaults, calls ``os._exit`` or hangs ends or
stalls that child only: the command reads its exit status (or stops it once
past its time, ``probe_limit``) and says what happened instead of dying with it::

    gilfree run / advise --(pickle: target, samples, options)--> child stdin
           ^                                                       |
           +------(pickle: plan, explanation, records)---- child's own stdout
                                      (the user's prints go to stderr there)

The child dies with the command (``PR_SET_PDEATHSIG``), so a command killed
mid-probe leaves no process behind.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Seconds the child may take to start: Python, gilfree and the user's module,
#: on a loaded two-core machine (about 0.3 s when idle). It says when it is ready.
START_LIMIT_S = 20.0
#: Seconds a call may run past the probe's budget without --timeout: the probe
#: stops between calls, not inside one. A call slower than this is stopped and
#: the command plans for processes, where a long call costs nothing extra.
SLOW_CALL_S = 10.0
_READY = b"R"


@dataclass
class Probed:
    """What the child planned, or why it could not.

    ``records[k]`` is ``(good, line)`` for ``samples[k]`` of the request, for
    a prefix of the samples: the calls the probe made, kept as output records.
    """

    backend: str | None = None
    workers: int | None = None
    plan: dict[str, Any] | None = None  # Plan.to_dict()
    explanation: str = ""  # Plan.explain()
    records: list[tuple[bool, bytes]] = field(default_factory=list)
    failure: str | None = None  # why there is no plan: a crash, a hang, an error


def probe_limit(budget: float, timeout: float | None) -> float:
    """Seconds the probe may take once the child is ready: its budget, and one
    call past it (``--timeout`` when given: past it the call has failed anyway)."""
    return 2 * budget + (SLOW_CALL_S if timeout is None else timeout)


def probe(
    target: str,
    samples: list[tuple[int, Any]],
    *,
    budget: float,
    total: int | None,
    workers: int | None,
    address: str | None,
    timeout: float | None = None,
) -> Probed:
    """Plan for ``target`` on ``samples`` (``(input index, item)`` pairs) in a child."""
    request = pickle.dumps(
        {
            "target": target,
            "samples": samples,
            "budget": budget,
            "total": total,
            "workers": workers,
            "address": address,
            "parent": os.getpid(),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gilfree._cli._probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=os.environ.copy(),  # PYTHONPATH as load_target set it
    )
    try:
        out, late = _exchange(proc, request, probe_limit(budget, timeout))
    except BaseException:  # Ctrl-C: the child goes with us
        proc.kill()
        proc.wait()
        raise
    if late is not None:
        proc.kill()
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    if late is not None:
        return Probed(failure=late)
    if proc.returncode != 0 or not out:
        return Probed(failure=f"the process probing it {_how_it_ended(proc.returncode)}")
    try:
        return Probed(**pickle.loads(out))
    except Exception as exc:  # a truncated answer: the child died while writing it
        return Probed(failure=f"the probe's answer could not be read ({type(exc).__name__})")


def _exchange(
    proc: subprocess.Popen[bytes], request: bytes, limit: float
) -> tuple[bytes, str | None]:
    """Send the request, read the answer: ``(answer, None)``, or ``(b"", why)``
    when the child did not start in time or the probe ran past ``limit``."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(request)
        proc.stdin.close()
    except BrokenPipeError:  # it died on the way up: its exit status says how
        return b"", None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + START_LIMIT_S
    ready = False
    answer = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            if not ready:
                return b"", f"the process probing it did not start in {START_LIMIT_S:.0f} s"
            return b"", f"the probe ran past {limit:.0f} s (a call that hangs?); stopped it"
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return bytes(answer), None
        if not ready:
            ready = True
            deadline = time.monotonic() + limit
            chunk = chunk[len(_READY) :]
        answer += chunk


def _how_it_ended(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        what = " (a segmentation fault)" if -status == signal.SIGSEGV else ""
        return f"was killed by {name}{what}"
    return f"exited with status {status} (os._exit or sys.exit in the function?)"


# ---------------------------------------------------------------- the child


def _child() -> int:
    # Our answer goes to the real stdout; anything the user's code prints goes to stderr.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    request = pickle.load(sys.stdin.buffer)
    _die_with(request["parent"])
    ready = False
    try:
        from ._target import load_target

        fn = load_target(request["target"])
        os.write(answer_fd, _READY)  # started: the probe's own time limit begins
        ready = True
        probed = _plan(fn, request)
    except BaseException as exc:  # reported to the command, not raised here
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        probed = Probed(failure=f"planning failed: {text}")
    if not ready:
        os.write(answer_fd, _READY)
    # A plain dict: in the child this module is __main__, so Probed would not unpickle.
    data = pickle.dumps(vars(probed))
    view = memoryview(data)
    while view:
        view = view[os.write(answer_fd, view) :]
    return 0


def _plan(fn: Callable[[Any], Any], request: dict[str, Any]) -> Probed:
    from .._clusters import cluster_size
    from ..planner import advise
    from ._jsonl import error_record, result_record

    samples = request["samples"]
    plan = advise(
        fn,
        [item for _index, item in samples],
        budget=request["budget"],
        total=request["total"],
        address=request["address"],
        workers=request["workers"],
        cluster=cluster_size,
    )
    # This child is the sandbox: planner.advise probes in it, calling a prefix
    # of the samples, whose outcomes become the first records.
    records = []
    for k, (index, _item) in enumerate(samples):
        if k not in plan.outcomes:
            break
        ok, value = plan.outcomes[k]
        records.append(
            result_record(index, value) if ok else (False, error_record(index, value, task=k))
        )
    return Probed(
        backend=plan.backend,
        workers=plan.workers,
        plan=plan.to_dict(),
        explanation=plan.explain(),
        records=records,
    )


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when the command's process ends."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # it ended before the request above took effect
        os._exit(1)


if __name__ == "__main__":
    sys.exit(_child())

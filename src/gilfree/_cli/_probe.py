"""Planning out of process: the probe calls the user's function, so it runs in a child.

``gilfree.advise`` times real calls of the function on sample items in the
calling process. For the command that process holds the output file, so the
probe runs in a child Python (``python -m gilfree._cli._probe``) that loads
``MODULE:FUNC`` itself, plans, and sends back the plan and the records of the
calls it made. A sample that segfaults, calls ``os._exit`` or hangs ends or
stalls that child only: the command reads its exit status (or stops it after
``limit_s``) and says what happened instead of dying with it::

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
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

#: Seconds allowed for the child beyond the probe's budget: starting Python,
#: importing gilfree and the user's module on a loaded two-core machine, and
#: one slow call past the budget (the probe stops between calls, not inside one).
START_ALLOWANCE_S = 20.0


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


def limit_for(budget: float) -> float:
    return START_ALLOWANCE_S + 2 * budget


def probe(
    target: str,
    samples: list[tuple[int, Any]],
    *,
    budget: float,
    total: int | None,
    workers: int | None,
    address: str | None,
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
    limit = limit_for(budget)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gilfree._cli._probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=os.environ.copy(),  # PYTHONPATH as load_target set it
    )
    try:
        out, _ = proc.communicate(request, timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Probed(failure=f"the probe ran past {limit:.0f} s (a call that hangs?); stopped it")
    except BaseException:  # Ctrl-C: the child goes with us
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0 or not out:
        return Probed(failure=f"the process probing it {_how_it_ended(proc.returncode)}")
    try:
        return Probed(**pickle.loads(out))
    except Exception as exc:  # a truncated answer: the child died while writing it
        return Probed(failure=f"the probe's answer could not be read ({type(exc).__name__})")


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
    try:
        probed = _plan(request)
    except BaseException as exc:  # reported to the command, not raised here
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        probed = Probed(failure=f"planning failed: {text}")
    # A plain dict: in the child this module is __main__, so Probed would not unpickle.
    data = pickle.dumps(vars(probed))
    view = memoryview(data)
    while view:
        view = view[os.write(answer_fd, view) :]
    return 0


def _plan(request: dict[str, Any]) -> Probed:
    from ..planner import advise
    from ._jsonl import error_record, result_record
    from ._target import load_target

    fn = load_target(request["target"])
    samples = request["samples"]
    plan = advise(
        fn,
        [item for _index, item in samples],
        budget=request["budget"],
        total=request["total"],
        address=request["address"],
        workers=request["workers"],
    )
    records = []
    for (index, _item), (ok, value) in zip(samples, getattr(plan, "outcomes", ()), strict=False):
        records.append(result_record(index, value) if ok else (False, error_record(index, value)))
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

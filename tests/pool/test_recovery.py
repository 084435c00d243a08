"""The recovery policy as a table: what a worker's death does to the chunks it held."""

from __future__ import annotations

import signal

import pytest

from gilfree import PoolBroken, TaskTimeout, WorkerDied
from gilfree.pool._recovery import (
    MAX_ANONYMOUS_DEATHS,
    Cause,
    Fail,
    Held,
    Requeue,
    broken,
    death_error,
    describe_exit,
    recover,
    timeout_error,
)

A = Held(seq=1, done=0, size=10, deaths=0)  # the chunk it was running
B = Held(seq=2, done=0, size=5, deaths=0)  # prefetched behind it

# One case per group of rows, read as a table: kept as written.
# fmt: off
CASES = [
    # (name, cause, culprit, held, expected)
    ("crash mid-chunk: the culprit fails, its neighbours and the next chunk go back",
     Cause.CRASH, (1, 4), [A, B],
     [Requeue(1, 0, 4, 0), Fail(1, 4, "crash"), Requeue(1, 5, 10, 0), Requeue(2, 0, 5, 0)]),
    ("crash on the first task: nothing before it to requeue",
     Cause.CRASH, (1, 0), [A], [Fail(1, 0, "crash"), Requeue(1, 1, 10, 0)]),
    ("crash on the last task: nothing after it",
     Cause.CRASH, (1, 9), [A], [Requeue(1, 0, 9, 0), Fail(1, 9, "crash")]),
    ("crash after results came home: only the rest is requeued",
     Cause.CRASH, (1, 7), [Held(1, 5, 10, 0)],
     [Requeue(1, 5, 7, 0), Fail(1, 7, "crash"), Requeue(1, 8, 10, 0)]),
    ("crash between tasks: the first chunk is charged a death",
     Cause.CRASH, None, [A, B], [Requeue(1, 0, 10, 1), Requeue(2, 0, 5, 0)]),
    ("crash between tasks again: the chunk's tasks fail as loading deaths",
     Cause.CRASH, None, [Held(1, 8, 10, MAX_ANONYMOUS_DEATHS - 1)],
     [Fail(1, 8, "loading"), Fail(1, 9, "loading")]),
    ("timeout: the task past its limit fails as a timeout",
     Cause.TIMEOUT, (2, 3), [Held(2, 0, 5, 0)],
     [Requeue(2, 0, 3, 0), Fail(2, 3, "timeout"), Requeue(2, 4, 5, 0)]),
    ("retired worker: blameless, everything goes back",
     Cause.RETIRED, None, [A, B], [Requeue(1, 0, 10, 0), Requeue(2, 0, 5, 0)]),
    ("fork server died: blameless even though a task was running",
     Cause.SERVER, (1, 4), [A, B], [Requeue(1, 0, 10, 0), Requeue(2, 0, 5, 0)]),
    ("a finished chunk still listed is dropped",
     Cause.RETIRED, None, [Held(1, 10, 10, 0)], []),
    ("no chunks held: nothing to do", Cause.CRASH, None, [], []),
]
# fmt: on


@pytest.mark.parametrize("name, cause, culprit, held, expected", CASES, ids=[c[0] for c in CASES])
def test_recover(name, cause, culprit, held, expected):
    assert recover(cause, culprit, held) == expected


def test_every_index_gets_exactly_one_fate():
    for _name, cause, culprit, held, _expected in CASES:
        for h in held:
            fates = []
            for step in recover(cause, culprit, held):
                if step.seq != h.seq:
                    continue
                fates += [step.pos] if isinstance(step, Fail) else list(range(step.a, step.b))
            assert sorted(fates) == list(range(h.done, h.size))


@pytest.mark.parametrize(
    "exitcode, text, signame",
    [
        (-signal.SIGKILL, "killed by SIGKILL (killed from outside, often by the", "SIGKILL"),
        (-signal.SIGSEGV, "SIGSEGV (a segmentation fault", "SIGSEGV"),
        (70, "losing its pipe to the parent", None),
        (3, "exited with status 3", None),
        (None, "disappeared", None),
    ],
)
def test_describe_exit(exitcode, text, signame):
    how, name = describe_exit(exitcode)
    assert text in how and name == signame


def test_an_exit_outside_a_task_is_not_blamed_on_one():
    assert describe_exit(3, in_task=False) == ("exited with status 3", None)
    assert "in the task" in describe_exit(3)[0]


def test_error_messages_say_what_happened_and_where():
    err = death_error(123, -signal.SIGSEGV, 5, "5", "  File x.py, line 3 in f\n")
    assert isinstance(err, WorkerDied) and err.index == 5 and err.signal_name == "SIGSEGV"
    assert "worker process 123 was killed by SIGSEGV" in str(err) and "task 5" in str(err)
    assert "x.py" in str(err)
    loading = death_error(1, 2, 0, "'a'", "", loading=True)
    assert "while loading or starting task 0" in str(loading)
    late = timeout_error(4, "4", 1.5, "")
    assert isinstance(late, TaskTimeout) and late.timeout == 1.5 and "(not available)" in str(late)
    cause = OSError("no fork")
    gone = broken("no worker process could be started", cause)
    assert isinstance(gone, PoolBroken) and gone.__cause__ is cause
    assert "make a new pool" in str(gone)

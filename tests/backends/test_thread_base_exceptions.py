"""A task on a worker thread that raises SystemExit (or any BaseException) fails
that task alone, as ThreadPoolExecutor puts it in the future: the thread used
to die with it, leaving the job waiting for an outcome for ever."""

from __future__ import annotations

import sys

import pytest

import gilfree

pytestmark = pytest.mark.timeout(60)


class Bye(BaseException):
    pass


def leaves(x):
    if x == 5:
        sys.exit("bye")
    if x == 7:
        raise Bye(x)
    return x * 2


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["untimed", "timed"])
def test_thread_map_gives_base_exceptions_to_their_task(timeout):
    out = gilfree.map(leaves, range(12), backend="thread", errors="return", timeout=timeout)
    assert isinstance(out[5], SystemExit) and out[5].code == "bye"
    assert isinstance(out[7], Bye)
    assert [v for k, v in enumerate(out) if k not in (5, 7)] == [
        2 * k for k in range(12) if k not in (5, 7)
    ]


def test_thread_map_raises_the_first_in_a_living_caller():
    # The first to fail, in time (as multiprocessing.Pool.map raises): items 5
    # and 7 may run on two threads at once, so either may come first. It once
    # expected 5 alone, which held only while both ran in one chunk.
    with pytest.raises((SystemExit, Bye)) as raised:
        gilfree.map(leaves, range(12), backend="thread")
    assert (raised.type is SystemExit and raised.value.code == "bye") or raised.value.args == (7,)


def test_thread_executor_future_holds_system_exit_and_retries_apply():
    calls = []

    def once_then_fine(x):
        calls.append(x)
        if len(calls) == 1:
            sys.exit(3)
        return x

    with gilfree.Executor(backend="thread", workers=2) as ex:
        failed = ex.submit(sys.exit, 3)
        assert isinstance(failed.exception(timeout=30), SystemExit)
        assert failed.exception().code == 3
        assert ex.submit(abs, -4).result(timeout=30) == 4  # the pool still works
    with gilfree.Executor(backend="thread", workers=2, retries=1) as ex:
        assert ex.submit(once_then_fine, 9).result(timeout=30) == 9
    assert calls == [9, 9]

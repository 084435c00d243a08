"""An Executor's ``initializer`` on the default backend: every call, probed or
planned, runs where the initializer ran first, never in the caller's thread."""

from __future__ import annotations

import os

import pytest

import gilfree
from gilfree import PoolBroken

pytestmark = pytest.mark.timeout(120)

_table = None


def _fill(n):
    global _table
    _table = {i: i * 100 for i in range(n)}


def _lookup(x):
    return _table[x]  # TypeError (None) where _fill did not run


def _exit_at_init():
    os._exit(3)


def test_every_call_of_an_auto_executor_sees_what_its_initializer_set():
    """A quick function was planned serial: map ran it in the caller, where the
    initializer never ran (TypeError on every item), and the probe in a child
    forked from the caller, where it did not run either."""
    with gilfree.Executor(initializer=_fill, initargs=(50,)) as ex:
        assert list(ex.map(_lookup, range(20))) == [i * 100 for i in range(20)]
        assert ex.submit(_lookup, 7).result(timeout=60) == 700
        assert list(ex.map(_lookup, range(5), timeout=30)) == [0, 100, 200, 300, 400]
    assert _table is None  # not run in the caller


def test_an_initializer_that_exits_breaks_an_auto_executor_not_its_caller():
    with (
        gilfree.Executor(initializer=_exit_at_init) as ex,
        pytest.raises(PoolBroken, match="while running the initializer"),
    ):
        list(ex.map(_lookup, range(20)))
    # Reaching here says it: run in this process, the initializer would have
    # ended the test run with status 3.

"""A delivered list belongs to the reader: the code that delivered it never reads it again.

The engine's reader pops the values it hands over (so a result the caller drops
is freed at once). On a free-threaded build that pop ran between a thread's
``deliver`` and its ``len(values)``: the chunk looked short, its first item was
failed with StopIteration and the rest ran again (1 map in ~20 on 3.13t; an
ordered reader could hand that failure on in place of the value).
"""

from __future__ import annotations

import collections
import itertools

from gilfree._options import make_options
from gilfree.backends import StreamJob
from gilfree.backends._run import run_items
from gilfree.pool._ledger import Ledger
from gilfree.pool._state import Chunk


class Emptying(StreamJob):
    """A job whose reader takes each delivered list at once, as the engine may."""

    def deliver(self, start, values):
        super().deliver(start, list(values))
        values.clear()


def _outcomes(job):
    out = []
    while not job.outcomes.empty():
        out.append(job.outcomes.get_nowait())
    return out


def test_run_items_calls_each_item_once_when_the_reader_empties_the_list():
    calls = collections.Counter()

    def double(x):
        calls[x] += 1
        return 2 * x

    job = Emptying(double, make_options())
    run_items(job, 10, [1, 2, 3, 4])
    assert calls == {1: 1, 2: 1, 3: 1, 4: 1}
    assert _outcomes(job) == [(True, 10, [2, 4, 6, 8])]


def test_run_items_around_a_failure_when_the_reader_empties_the_list():
    def fail_on_3(x):
        if x == 3:
            raise ValueError(x)
        return x

    job = Emptying(fail_on_3, make_options())
    run_items(job, 0, [1, 2, 3, 4, 5])
    got = _outcomes(job)
    assert [(ok, i) for ok, i, _ in got] == [(True, 0), (False, 2), (True, 3)]
    assert got[0][2] == [1, 2] and isinstance(got[1][2], ValueError) and got[2][2] == [4, 5]


def test_the_pool_ledger_counts_delivered_results_before_the_reader_takes_them():
    # chunk.done says which tasks a worker death would run again.
    job = Emptying(abs, make_options())
    chunk = Chunk(job, 0, [-1, -2, -3, -4], b"", None, (0, b""))
    ledger = Ledger(None, collections.Counter())  # results() needs no arena
    ledger.results(chunk, 0, [1, 2], [], 0.001)
    assert chunk.done == 2
    ledger.results(chunk, 2, [3], [], 0.001)
    assert chunk.done == 3
    assert list(itertools.chain.from_iterable(v for _, _, v in _outcomes(job))) == [1, 2, 3]

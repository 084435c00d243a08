"""The engine on its own: input order, the bounded window, laziness and failures,
over a backend that completes chunks out of order."""

from __future__ import annotations

import itertools

import pytest

from gilfree import _engine
from gilfree._engine import Run
from gilfree._options import make_options
from gilfree.backends import Backend, StreamJob

pytestmark = pytest.mark.timeout(30)


class Reversing(Backend):
    """Runs chunks inline but reports them in reverse, three at a time (the rest when
    the engine asks whether it is alive): the worst order for an ordered map."""

    name = "reversing"

    def __init__(self, workers=2):
        super().__init__(make_options())
        self.workers = workers
        self.held = []
        self.outstanding = 0
        self.peak = 0

    def submit(self, job, start, items, attempt=0):
        self.outstanding += len(items)
        self.peak = max(self.peak, self.outstanding)
        self.held.append((job, start, items))
        if len(self.held) == 3:
            self.flush()

    def flush(self):
        held, self.held = self.held, []
        for job, start, items in reversed(held):
            self.outstanding -= len(items)
            for k, x in enumerate(items):
                try:
                    job.deliver(start + k, [job.fn(x)])
                except Exception as exc:
                    job.fail(start + k, exc)

    def check(self):
        self.flush()

    def shutdown(self, *, wait=True, kill=False):
        pass


@pytest.fixture(autouse=True)
def quick_health_check(monkeypatch):
    monkeypatch.setattr(_engine, "HEALTH_CHECK_S", 0.01)


def run(fn, iterable, ordered, chunksize=2, backend=None):
    backend = backend or Reversing()
    job = StreamJob(fn, make_options(chunksize=chunksize))
    total = _engine.length_hint(iterable)
    return backend, Run(backend, job, iterable, ordered=ordered, total=total)


def values(events):
    out = []
    for ok, _start, payload in events:
        out.extend(payload if ok else [payload])
    return out


def test_ordered_events_leave_in_input_order():
    _, r = run(lambda x: x * 10, range(25), ordered=True)
    assert values(r.events()) == [x * 10 for x in range(25)]
    assert r.finished


def test_unordered_events_leave_as_they_come_and_all_arrive():
    _, r = run(lambda x: x * 10, range(25), ordered=False)
    got = values(r.events())
    assert sorted(got) == [x * 10 for x in range(25)] and got != sorted(got)


def test_the_window_bounds_work_in_flight_and_input_read_ahead():
    backend = Reversing(workers=2)
    read = itertools.count()
    endless = (next(read) for _ in itertools.count())
    _, r = run(abs, endless, ordered=True, chunksize=2, backend=backend)
    events = r.events()
    first = [next(events) for _ in range(50)]
    assert [ev[1] for ev in first] == list(range(50))  # one event per item here
    window_items = backend.window * 2  # window chunks of chunksize 2
    assert backend.peak <= window_items
    assert next(read) <= 50 + window_items + 2  # read ahead is bounded too


def test_a_failure_is_an_event_at_its_index_and_the_rest_go_on():
    def fn(x):
        if x == 3:
            raise ValueError(x)
        return x

    _, r = run(fn, range(8), ordered=True, chunksize=1)
    out = values(r.events())
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5, 6, 7]
    assert isinstance(out[3], ValueError)


def test_a_backend_that_breaks_is_reported_by_the_health_check():
    class Broken(Reversing):
        def check(self):
            raise RuntimeError("the backend's machinery died")

        def submit(self, job, start, items):
            pass  # never reports

    _, r = run(abs, range(4), ordered=True, backend=Broken())
    with pytest.raises(RuntimeError, match="machinery died"):
        list(r.events())


def test_probed_outcomes_waiting_in_order_do_not_hold_the_window_shut():
    # backend="auto" on an indexable input: the probe already ran items 0, 1 and
    # 32..37. In input order 32..37 wait for 2..31, which must still be sent
    # although those six fill a window of 2 * workers + 2 (it hung before).
    probed = [0, 1, *range(32, 38)]
    prefilled = [(True, i, [i * 10]) for i in probed]
    backend = Reversing(workers=2)
    job = StreamJob(lambda x: x * 10, make_options(chunksize=1))
    items = _engine.Skipping(range(40), frozenset(probed))
    r = Run(backend, job, items, ordered=True, total=40, prefilled=prefilled)
    assert values(r.events()) == [x * 10 for x in range(40)]
    assert r.finished

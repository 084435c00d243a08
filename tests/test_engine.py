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


# -- Direct: map on the serial backend without the engine ---------------------------
def flaky(x):
    if x % 10 == 3:
        raise ValueError(x)
    if x == 15:
        raise StopIteration  # map() would end here silently
    return x * 2


def via_run(fn, items, prefilled, errors):
    """What map got from the engine: events, unordered, into slots."""
    backend = Reversing()
    job = StreamJob(fn, make_options(backend="serial", chunksize=4))
    r = Run(
        backend,
        job,
        _engine.Skipping(items, frozenset(ev[1] for ev in prefilled)),
        ordered=False,
        total=len(items),
        prefilled=list(prefilled),
    )
    slots = {}
    for ok, start, payload in r.events():
        if not ok and errors == "raise":
            raise payload
        slots[start] = payload if ok else [payload]
    return [v for start in sorted(slots) for v in slots[start]]


def shape(values):
    return [(type(v).__name__, str(v)) if isinstance(v, BaseException) else v for v in values]


@pytest.mark.parametrize("items", [list(range(40)), tuple(range(40)), range(40)])
@pytest.mark.parametrize("probed", [(), (0,), (3, 21, 39), (0, 1, 2)])
def test_direct_gives_the_engines_outcomes(items, probed):
    prefilled = [(True, i, [f"probe {i}"]) for i in probed]
    skip = _engine.Skipping(items, frozenset(probed))
    direct = _engine.Direct(flaky, skip, retries=0, prefilled=prefilled)
    got = direct.results(raise_errors=False)
    assert direct.finished
    assert shape(got) == shape(via_run(flaky, items, prefilled, "return"))
    assert len(got) == 40
    assert isinstance(got[15], StopIteration) and "on item 15" in got[15].__notes__[0]
    assert isinstance(got[13], ValueError) or 13 in probed


def test_direct_raises_a_failed_probe_call_first_then_the_first_failure_in_order():
    boom = KeyError("probe")
    direct = _engine.Direct(
        flaky,
        _engine.Skipping(list(range(40)), frozenset({30})),
        retries=0,
        prefilled=[(False, 30, boom)],
    )
    with pytest.raises(KeyError) as info:
        direct.results(raise_errors=True)
    assert info.value is boom
    calls = []

    def noted(x):
        calls.append(x)
        return flaky(x)

    direct = _engine.Direct(noted, list(range(40)), retries=0)
    with pytest.raises(ValueError, match=r"^3$"):
        direct.results(raise_errors=True)
    assert calls == [0, 1, 2, 3]  # nothing after the failure ran


def test_direct_retries_a_failed_item_then_goes_on_from_the_next():
    seen = {}

    def twice(x):
        seen[x] = seen.get(x, 0) + 1
        if x == 5 and seen[x] < 3:
            raise OSError("transient")
        return x

    out = _engine.Direct(twice, list(range(10)), retries=2).results(raise_errors=True)
    assert out == list(range(10))
    assert seen == {**{x: 1 for x in range(10)}, 5: 3}


def test_direct_runs_only_inputs_whose_iteration_runs_no_user_code():
    assert _engine.direct_ok([1]) and _engine.direct_ok(range(3)) and _engine.direct_ok((1,))
    assert _engine.direct_ok(_engine.Skipping([1, 2], frozenset({0})))
    assert not _engine.direct_ok(iter([1]))
    assert not _engine.direct_ok(x for x in [1])

    class MyList(list):
        def __iter__(self):
            raise RuntimeError("user code")

    assert not _engine.direct_ok(MyList([1]))

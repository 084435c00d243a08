"""The dask backend's bookkeeping, without a cluster: what a worker death makes of a
task (``after_death``, a pure function, tested with a table) and which tasks go out
when (``Flight``: the cap on our tasks, suspects sent alone)."""

from __future__ import annotations

import threading

import pytest

from gilfree._options import Options
from gilfree.backends import StreamJob
from gilfree.backends._dask_flight import Flight
from gilfree.backends._dask_work import _Chunk, _Work, after_death
from gilfree.errors import WorkerDied


class KilledWorker(Exception):
    """Stands for distributed's KilledWorker: after_death only names its type."""


def job():
    return StreamJob(abs, Options())


def work(n=1, *, start=0, retries=0, isolated=False):
    return _Work(job(), start, list(range(start, start + n)), retries=retries,
                 strict=retries > 0 and n == 1, isolated=isolated)  # fmt: skip


def summary(outcome):
    """A list of works as (start, items, retries, isolated); an error as its message."""
    if isinstance(outcome, WorkerDied):
        return str(outcome)
    return [(w.start, w.items, w.retries, w.isolated) for w in outcome]


KILLED = KilledWorker("gave up after 2 workers died")


@pytest.mark.parametrize(
    ("what", "task", "killed", "alone", "expected"),
    [
        ("a chunk is split into one-item tasks, on any worker",
         work(3, start=5, retries=1), KILLED, True,
         [(5, [5], 1, False), (6, [6], 1, False), (7, [7], 1, False)]),
        ("a split chunk's items are not suspects, even an isolated one's",
         work(2, isolated=True), None, False, [(0, [0], 0, False), (1, [1], 0, False)]),
        ("one item that shared the cluster is a suspect, sent alone",
         work(1, start=4), KILLED, False, [(4, [4], 0, True)]),
        ("one item whose scattered data was lost is a suspect, even alone",
         work(1, start=4), None, True, [(4, [4], 0, True)]),
        ("one item that Dask gave up on while alone killed its workers",
         work(1, start=4), KILLED, True,
         "task 4 (4): its Dask worker died while running it, with no other task of this "
         "map on the cluster; Dask reported KilledWorker: gave up after 2 workers died"),
        ("a suspect whose workers died again killed them",
         work(1, start=4, isolated=True), None, False,
         "task 4 (4): its Dask worker died while running it, with no other task of this "
         "map on the cluster; Dask cancelled its task: every worker holding data it needed "
         "died with it"),
        ("a culprit with retries left runs alone again, one retry spent",
         work(1, start=4, retries=2, isolated=True), KILLED, True, [(4, [4], 1, True)]),
    ],
)  # fmt: skip
def test_after_death(what, task, killed, alone, expected):
    assert summary(after_death(task, killed, alone)) == expected, what


def test_after_death_blames_with_index_item_and_cause():
    err = after_death(work(1, start=7), KILLED, True)
    assert isinstance(err, WorkerDied)
    assert err.index == 7 and err.item == "7" and err.__cause__ is KILLED


# -- Flight -------------------------------------------------------------------------------
def flight(cap=None):
    return Flight(threading.Lock(), cap)


def send(f, w, key):
    chunk = _Chunk(key, w)
    f.sent(chunk)
    return chunk


def test_cap_queues_work_in_order_and_release_sends_it():
    f = flight(cap=2)
    with f.idle:  # a Flight is used under the backend's lock
        a, b, c, d = (work(start=i) for i in range(4))
        assert [f.take_slot(w) for w in (a, b, c, d)] == [True, True, False, False]
        assert f.release(1) == [c]  # a is done: the first in line goes
        assert f.release(2) == [d]  # b and c are done, one waits
        assert f.release(1) == [] and f.empty()  # d is done
        assert [f.take_slot(w) for w in (a, b, c)] == [True, True, False]  # back to 2


def test_no_cap_never_queues():
    f = flight()
    assert all(f.take_slot(work(start=i)) for i in range(100))


def test_a_suspect_goes_alone_once_nothing_else_is_out_there():
    f = flight()
    with f.idle:  # a Flight is used under the backend's lock
        w1 = work(start=0)
        assert f.take_slot(w1)
        c1 = send(f, w1, "k1")
        suspect = work(start=9, isolated=True)
        f.suspects.append(suspect)
        assert f.release(0) == []  # c1 is still on the cluster
        w2 = work(start=1)
        assert not f.take_slot(w2)  # new work waits behind the suspect
        assert f.forget(c1)
        assert f.release() == [suspect] and f.isolating
        c2 = send(f, suspect, "k2")
        assert f.alone(c2)
        assert f.release(0) == []  # ordinary work still waits while the suspect is out
        assert f.forget(c2) and not f.isolating
        assert f.release() == [w2]  # then it resumes


def test_alone_only_if_no_other_task_was_sent_meanwhile():
    f = flight()
    c1 = send(f, work(start=0), "k1")
    assert c1.first and f.alone(c1)
    c2 = send(f, work(start=1), "k2")
    assert not c2.first and not f.alone(c1) and not f.alone(c2)


def test_forget_twice_releases_once():
    f = flight()
    c = send(f, work(), "k")
    assert f.forget(c) and not f.forget(c)


def test_drop_forgets_one_job_only():
    f = flight(cap=1)
    with f.idle:  # a Flight is used under the backend's lock
        mine, other = work(start=0), work(start=1)
        assert f.take_slot(mine)
        c = send(f, mine, "k")
        assert not f.take_slot(other)
        later = _Work(mine.job, 5, [5], retries=0, strict=False)
        assert not f.take_slot(later)
        assert f.drop(mine.job) == [c]
        assert list(f.waiting) == [other] and not f.chunks
        assert f.release() == [other]


def test_take_all_empties_and_wakes_a_waiter():
    f = flight(cap=1)
    w1, w2 = work(start=0), work(start=1)
    f.take_slot(w1)
    c = send(f, w1, "k")
    f.take_slot(w2)
    f.suspects.append(s := work(start=2, isolated=True))
    ready, woken = threading.Event(), threading.Event()

    def wait_until_idle():
        with f.idle:
            ready.set()
            if f.idle.wait(timeout=30):
                woken.set()

    t = threading.Thread(target=wait_until_idle)
    t.start()
    ready.wait(timeout=30)
    with f.idle:  # taken once the waiter is inside wait(), which let go of it
        held = f.take_all()
    t.join(timeout=30)
    assert held == [c, w2, s] and woken.is_set()
    assert f.empty() and not f.isolating
    assert f.take_slot(work(start=3))  # the cap's count starts again from zero

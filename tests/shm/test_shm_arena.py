"""The argument arena on its own: which segment a pickled array names, and when it goes.

``Arena.dumps`` is what the process pool calls for every chunk; these tests
call it directly and unpickle in this process (which maps segments the way a
worker does), so they do not depend on how the pool keeps its leases.
"""

from __future__ import annotations

import os
import pickle
import threading

import pytest

from gilfree import _shm

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(60)

MB = 1 << 20


def live():
    """This process's argument segments in /dev/shm."""
    prefix = f"gilfree-{os.getpid()}-a"
    return sorted(n for n in os.listdir(_shm.SHM_DIR) if n.startswith(prefix))


@pytest.fixture
def arena():
    a = _shm.Arena()
    yield a
    a.close()


def big(value=0.0, n=2 * MB // 8):
    return np.full(n, value, dtype=np.float64)


def test_a_large_array_goes_into_one_segment_freed_by_its_lease(arena):
    a = big(3.0)
    blob, lease = arena.dumps([a])
    assert len(blob) < 1000  # the data is not in the pickle
    assert lease.names == live() and len(live()) == 1
    got = pickle.loads(blob)[0]
    assert got.dtype == a.dtype and got.shape == a.shape and float(got.sum()) == float(a.sum())
    lease.release()
    assert live() == [] and arena.segments == 0 and lease.names == []
    lease.release()  # idempotent
    assert float(got[0]) == 3.0  # an unpickled array keeps its memory after the name goes


def test_small_arrays_and_plain_data_take_no_segment_and_no_lease(arena):
    blob, lease = arena.dumps([np.arange(100), {"k": [1, 2.0, "x"]}])
    assert lease is _shm.NO_LEASE and live() == []
    got = pickle.loads(blob)
    assert got[0].tolist() == list(range(100)) and got[1] == {"k": [1, 2.0, "x"]}


def test_an_unchanged_array_shares_its_segment_until_the_last_lease_goes(arena):
    a = big(1.0)
    _, first = arena.dumps([a])
    _, second = arena.dumps([(a, "again")])
    assert first.names == second.names and arena.reused == 1 and arena.segments == 1
    first.release()
    assert live() == second.names  # still needed by the second
    second.release()
    assert live() == []


def test_an_array_changed_between_two_dumps_gets_a_new_segment(arena):
    a = big(0.0)
    blob1, first = arena.dumps([a])
    a[-1] = 42.0  # in the last step compared
    blob2, second = arena.dumps([a])
    assert first.names != second.names and arena.reused == 0
    assert float(pickle.loads(blob2)[0][-1]) == 42.0
    assert float(pickle.loads(blob1)[0][-1]) == 0.0  # each task got a copy of its moment
    first.release()
    second.release()
    assert live() == []


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.__setitem__(0, -0.0),  # equal as a value, not as bytes
        lambda a: setattr(a, "shape", (2, a.size // 2)),  # same memory, other shape
        lambda a: a.__setitem__(a.size // 2, 1e-300),
    ],
    ids=["negative-zero", "reshaped-in-place", "middle-element"],
)
def test_every_change_is_seen(arena, change):
    a = big(0.0)
    arena.dumps([a])
    change(a)
    blob, _ = arena.dumps([a])
    got = pickle.loads(blob)[0]
    assert got.shape == a.shape and got.tobytes() == a.tobytes() and arena.reused == 0


def test_nan_content_is_compared_as_bytes_so_it_is_reused(arena):
    a = big(float("nan"))
    _, first = arena.dumps([a])
    _, second = arena.dumps([a])
    assert first.names == second.names and arena.reused == 1


def test_a_change_in_any_comparison_step_is_seen(arena, monkeypatch):
    monkeypatch.setattr(_shm._segments, "_COMPARE_STEP", 256 << 10)  # 8 steps over a 2 MiB array
    a = big(0.0)
    n = a.size
    arena.dumps([a])
    for k in (0, n // 8 - 1, n // 8, 5 * n // 8 + 3, n - 1):
        a[k] += 1.0
        blob, _ = arena.dumps([a])
        assert float(pickle.loads(blob)[0][k]) == float(a[k])
        assert arena.reused == 0


def test_a_read_only_array_is_reused_without_comparing(arena, monkeypatch):
    a = big(1.0)
    a.flags.writeable = False
    _, first = arena.dumps([a])
    view = a[: a.size // 2]  # a read-only view of a read-only owner: also trusted
    monkeypatch.setattr(_shm._arena, "_same_bytes", lambda *args: pytest.fail("compared"))
    _, second = arena.dumps([a])
    assert first.names == second.names and arena.reused == 1
    arena.dumps([view])
    arena.dumps([view])
    assert arena.reused == 2


def test_an_array_made_read_only_after_its_segment_was_made_is_compared(arena):
    a = big(1.0)
    arena.dumps([a])
    a[0] = 7.0
    a.flags.writeable = False
    blob, _ = arena.dumps([a])
    assert float(pickle.loads(blob)[0][0]) == 7.0 and arena.reused == 0


def bytearray_memory():
    buf = bytearray(big(1.0).tobytes())
    return np.frombuffer(buf), lambda: buf.__setitem__(slice(0, 8), np.float64(7.0).tobytes())


def view_of_writable():
    owner = big(1.0)
    return owner[:], lambda: owner.__setitem__(0, 7.0)


@pytest.mark.parametrize("make", [bytearray_memory, view_of_writable])
def test_read_only_arrays_whose_memory_can_still_change_are_compared(arena, make):
    a, change = make()
    a.flags.writeable = False
    arena.dumps([a])
    change()
    blob, _ = arena.dumps([a])
    assert float(pickle.loads(blob)[0][0]) == 7.0 and arena.reused == 0


def test_a_new_array_at_a_recycled_id_is_not_mistaken_for_the_old_one(arena):
    for k in range(5):  # a freed array's id is often reused at once by the next
        a = big(float(k))
        blob, _ = arena.dumps([a])
        assert float(pickle.loads(blob)[0][0]) == float(k)
        del a
    assert arena.reused == 0


def test_non_contiguous_arrays_travel_correctly_and_are_never_reused(arena):
    base = np.arange(4 * MB // 8, dtype=np.float64).reshape(-1, 4)
    view = base[:, ::2]  # 2 MiB, not contiguous
    blob, _ = arena.dumps([view])
    assert np.array_equal(pickle.loads(blob)[0], view)
    arena.dumps([view])
    assert arena.reused == 0 and arena.segments == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda n: np.arange(n).astype("datetime64[ns]"),
        lambda n: np.zeros(n, dtype=[("x", "f8"), ("tag", "i4")]),
        lambda n: (np.arange(n, dtype=np.float64) + 1j).astype(np.complex128),
        lambda n: np.asfortranarray(np.arange(n, dtype=np.float32).reshape(-1, 8)),
    ],
    ids=["datetime64", "structured", "complex", "fortran-order"],
)
def test_dtypes_and_layouts_round_trip(arena, make):
    a = make(MB // 4)
    assert a.nbytes >= MB
    blob, lease = arena.dumps([a])
    got = pickle.loads(blob)[0]
    assert len(lease.names) == 1
    assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)


@pytest.mark.parametrize(
    "items, by_value",
    [([np.ones(MB // 8)], True), ([np.ones(MB // 8), lambda x: x], False)],
    ids=["by-value", "needs-cloudpickle"],
)
def test_the_cloudpickle_path_also_sends_arrays_through_segments(arena, items, by_value):
    blob, lease = arena.dumps(items, by_value=by_value)
    assert len(lease.names) == 1 and len(blob) < 10_000
    assert float(pickle.loads(blob)[0].sum()) == MB // 8


def test_unpickled_arrays_are_writable_private_copies(arena):
    a = big(1.0)
    blob, _ = arena.dumps([a])
    one, two = pickle.loads(blob)[0], pickle.loads(blob)[0]
    assert one.flags.writeable
    one[:] = 5.0
    assert float(two.sum()) == a.size and float(a.sum()) == a.size  # nobody else saw it
    blob, _ = arena.dumps([a])
    assert arena.reused == 1 and float(pickle.loads(blob)[0].sum()) == a.size  # nor the segment


def test_a_failed_pickling_leaves_no_segment(arena):
    a = big(1.0)
    with pytest.raises(Exception):  # noqa: B017 -- whatever pickle raises for a lock
        arena.dumps([a, threading.Lock()])
    assert live() == [] and arena.segments == 0


def test_close_unlinks_every_segment_and_later_use_is_refused(arena):
    _, first = arena.dumps([big(1.0)])
    _, second = arena.dumps([big(2.0)])
    assert len(live()) == 2
    arena.close()
    assert live() == []
    first.release()  # after close: nothing to do, no error
    second.release()
    with pytest.raises(RuntimeError, match="closed"):
        arena.dumps([big(3.0)])
    assert live() == []


def test_leases_from_many_threads_leave_nothing(arena):
    a = big(1.0)
    threads_n, rounds = 4, 20
    barrier = threading.Barrier(threads_n)
    errors = []

    def work():
        try:
            barrier.wait(timeout=10)
            for _ in range(rounds):
                blob, lease = arena.dumps([a])
                assert float(pickle.loads(blob)[0][0]) == 1.0
                lease.release()
        except BaseException as exc:  # reported below, with the thread's own error
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and live() == [] and arena.segments == 0

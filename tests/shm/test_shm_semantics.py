"""Large arrays behave as pickled copies do; ``gilfree.share`` arrays are shared memory.

Issue 13: a changed array must be seen changed, a worker may write to its
arguments without touching the caller's, and a shared handle is an ndarray
wherever it arrives.
"""

from __future__ import annotations

import os
import pickle

import pytest

import gilfree

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(120)

MB = 1 << 20


def first(a):
    return float(a[0])


def test_an_array_changed_between_two_tasks_is_seen_changed(backend):
    a = np.zeros(1 << 18)  # 2 MiB: over the sharing threshold
    with gilfree.Executor(backend=backend, workers=1 if backend == "serial" else 2) as ex:
        assert ex.submit(first, a).result(timeout=60) == 0.0
        a[0] = 42.0
        assert ex.submit(first, a).result(timeout=60) == 42.0
        a[-1] = 1.0  # far from the first change; unchanged again after this
        assert ex.submit(np.sum, a).result(timeout=60) == 43.0
        assert ex.submit(np.sum, a).result(timeout=60) == 43.0


def normalize(a):
    a -= a.mean()
    return a


@pytest.mark.parametrize("n", [1_000, 200_000], ids=["small", "shared-memory"])
def test_workers_may_write_to_arguments_and_the_caller_never_sees_it(n):
    rng = np.random.default_rng(1)
    arrays = [rng.random(n) for _ in range(4)]
    before = [a.copy() for a in arrays]
    want = gilfree.map(normalize, [a.copy() for a in arrays], backend="serial")
    got = gilfree.map(normalize, arrays, backend="process", workers=2)
    for g, w, a, b in zip(got, want, arrays, before, strict=True):
        assert np.allclose(g, w) and g.flags.writeable
        assert np.array_equal(a, b)  # the caller's arrays are untouched


def scribble(a):
    old = float(a[0])
    a[0] = 99.0
    a[-1] = 99.0
    return old, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_tasks_of_one_segment_never_see_each_others_writes(workers):
    a = np.zeros(1 << 18)
    got = gilfree.map(scribble, [a] * 6, backend="process", workers=workers, chunksize=1)
    assert [old for old, _pid in got] == [0.0] * 6
    if workers == 1:
        assert len({pid for _old, pid in got}) == 1  # the same worker, one mapping per task
    assert float(a[0]) == 0.0 and float(a[-1]) == 0.0
    with gilfree.Executor(backend="process", workers=1) as ex:  # nor did the segment
        assert [ex.submit(scribble, a).result(timeout=60)[0] for _ in range(3)] == [0.0] * 3


def test_a_read_only_argument_arrives_writable_as_a_pickled_copy_would():
    a = np.zeros(1 << 18)
    a.flags.writeable = False
    assert gilfree.map(normalize, [a], backend="process")[0].flags.writeable


# -- gilfree.share ------------------------------------------------------------------------
def kind(h):
    return type(h).__module__ + "." + type(h).__name__, float(h.sum()), h.flags.writeable


def test_share_hands_every_backend_an_ndarray(backend):
    a = np.arange(1 << 18, dtype=np.float64)
    with gilfree.share(a) as h:
        assert isinstance(h, np.ndarray) and float(h.sum()) == float(a.sum())
        got = gilfree.map(kind, [h, h[: 1 << 10]], backend=backend)
        name, total, writable = got[0]
        assert total == float(a.sum()) and writable
        assert got[1][1] == float(a[: 1 << 10].sum())
        if backend in ("process", "dask"):
            assert name == "numpy.ndarray"  # a plain array over the shared mapping
        else:
            assert name == "gilfree._shm.SharedArray"  # the handle itself, in this process


def test_the_parent_uses_a_handle_as_an_array_without_copies():
    a = np.arange(1 << 18, dtype=np.float64)
    with gilfree.share(a) as h:
        plain = np.asarray(h)
        assert type(plain) is np.ndarray and np.shares_memory(plain, h)
        assert type(h + 1) is np.ndarray and type(h.sum()) is np.float64
        assert h.name.startswith(f"gilfree-{os.getpid()}-s")
        assert pickle.loads(pickle.dumps(type(h))) is type(h)  # the class, by reference
        c = h.copy()
        assert c.name is None and float(gilfree.map(np.sum, [c], backend="process")[0]) == float(
            a.sum()
        )
        a[0] = -1.0  # the handle is a copy of what share() was given
        assert float(h[0]) == 0.0


def fill_row(args):
    out, k = args
    out[k] = k + 1  # straight into the shared segment
    return float(out[k].sum())


def test_workers_write_to_a_shared_array_and_the_parent_sees_it():
    rows, cols = 6, 1 << 16
    with gilfree.share(np.zeros((rows, cols))) as out:
        got = gilfree.map(fill_row, [(out, k) for k in range(rows)], backend="process", workers=2)
        assert got == [float((k + 1) * cols) for k in range(rows)]
        assert [float(out[k, 0]) for k in range(rows)] == [k + 1.0 for k in range(rows)]
        out[:] = 0.0  # and the parent's writes reach the workers: no stale copy anywhere
        assert gilfree.map(np.sum, [out], backend="process")[0] == 0.0


def write_through(args):
    view, value = args
    view[:] = value
    return float(view.sum())


def test_slices_of_a_shared_array_travel_as_views_of_the_segment():
    with gilfree.share(np.zeros(1 << 18)) as h:
        n = h.size // 4
        quarters = [(h[k * n : (k + 1) * n], k + 1) for k in range(4)]  # disjoint: no race
        got = gilfree.map(write_through, quarters, backend="process", workers=2, chunksize=1)
        assert got == [float((k + 1) * n) for k in range(4)]
        assert [float(h[k * n]) for k in range(4)] == [1.0, 2.0, 3.0, 4.0]
        odd = [(h[::-1][:8], 5), (h[1::2][:8], 6)]  # negative and wider strides, disjoint
        assert gilfree.map(write_through, odd, backend="process", workers=2) == [40.0, 48.0]
        assert float(h[-1]) == 5.0 and float(h[-8]) == 5.0 and float(h[-9]) == 4.0
        assert float(h[1]) == 6.0 and float(h[15]) == 6.0 and float(h[2]) == 1.0


def try_write(h):
    try:
        h[0] = 1.0
    except ValueError as exc:
        return str(exc)
    return "written"


def test_a_read_only_handle_is_read_only_in_workers():
    with gilfree.share(np.zeros(1 << 18)) as h:
        h.flags.writeable = False
        assert "read-only" in gilfree.map(try_write, [h], backend="process")[0]
        assert float(h[0]) == 0.0


def test_share_refuses_object_arrays_with_a_clear_error():
    with pytest.raises(TypeError, match="dtype=object"):
        gilfree.share(np.array([object()] * 4))

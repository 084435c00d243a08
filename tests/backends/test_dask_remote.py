"""backend="dask" with a worker that does not share this machine's /dev/shm, as a worker
on another host does not: the worker runs in its own mount namespace, with a fresh
tmpfs on /dev/shm (``unshare --mount``, which needs root).

A ``gilfree.share()`` handle names a segment in the client's /dev/shm; on the Dask path
its data must travel by value, scattered once per map like any large array.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import pytest

pytest.importorskip("distributed")
pytest.importorskip("numpy")

import numpy as np
from dask_cluster import LocalDaskCluster

import gilfree
from gilfree._options import Options
from gilfree.backends import StreamJob
from gilfree.backends._dask import DaskBackend

pytestmark = pytest.mark.timeout(120)

#: Runs its arguments in a new mount namespace whose /dev/shm is an empty tmpfs. It
#: ends by exec-ing them, so the process the test tracks is the worker itself, and the
#: mount goes away with the namespace when the worker exits.
PRIVATE_SHM = [
    "unshare", "--mount", "--propagation", "private",
    "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "sh",
]  # fmt: skip


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*PRIVATE_SHM, "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def address():
    if not _can_unshare():
        pytest.skip("needs root and unshare(1) to give a Dask worker its own /dev/shm")
    with LocalDaskCluster(n_workers=0, nthreads=2) as cluster:
        cluster.add_worker(wrapper=PRIVATE_SHM)
        yield cluster.address
    assert all(p.poll() is not None for p in [*cluster.workers, cluster.scheduler])


# -- functions that run on the worker -------------------------------------------------------
def look(arg):
    """What the worker sees: whether the client's segment exists there, and the data."""
    handle, segment, i = arg
    data = np.asarray(handle)
    return os.path.exists(f"/dev/shm/{segment}"), float(data[i]), data[i : i + 3] * 2


def scale(arg):
    array, k = arg
    return np.asarray(array) * k  # a 2 MiB result, back by value


# -- tests ----------------------------------------------------------------------------------
def test_shared_handle_travels_by_value(address):
    big = np.arange(1 << 18, dtype=np.float64)  # 2 MiB
    with gilfree.share(big) as handle, gilfree.share(np.arange(5.0)) as small:
        assert os.path.exists(f"/dev/shm/{handle.name}")  # here, but not on the worker
        out = gilfree.map(
            look,
            [(handle, handle.name, i) for i in range(6)] + [(small, small.name, 2)],
            backend="dask",
            address=address,
        )
    for i, (seen, value, part) in enumerate(out[:6]):
        assert not seen  # the worker really has a /dev/shm of its own
        assert value == float(i)
        np.testing.assert_array_equal(part, big[i : i + 3] * 2)
    assert out[6][0] is False and out[6][1] == 2.0


def test_shared_handle_is_scattered_once_per_map(address):
    with gilfree.share(np.ones(1 << 16)) as handle:
        backend = DaskBackend(Options(address=address))
        try:
            job = StreamJob(look, backend.options)
            for i in range(8):  # eight tasks, one item each
                backend.submit(job, i, [(handle, handle.name, i)])
            got = {}
            while len(got) < 8:
                ok, start, values = job.outcomes.get(timeout=60)
                assert ok, values
                got.update(zip(itertools.count(start), values, strict=False))
            stats = backend.statistics()
        finally:
            backend.shutdown()
    assert [got[i][1] for i in range(8)] == [1.0] * 8
    assert stats["scattered_arrays"] == 1 and stats["tasks"] == 8


def test_numpy_arguments_and_results_round_trip(address):
    big = np.arange(1 << 18, dtype=np.float64)  # over the 1 MiB scatter threshold
    out = gilfree.map(scale, [(big, k) for k in range(3)] + [(np.arange(4), 3)],
                      backend="dask", address=address)  # fmt: skip
    for k in range(3):
        np.testing.assert_array_equal(out[k], big * k)
    np.testing.assert_array_equal(out[3], np.arange(4) * 3)


def test_released_handle_fails_alone(address):
    handle = gilfree.share(np.arange(4.0))
    handle.release()
    out = gilfree.map(
        lambda a: float(np.asarray(a[0]).sum()) if a[1] else a[0],
        [(1.0, False), (handle, True), (2.0, False)],
        backend="dask",
        address=address,
        errors="return",
        chunksize=3,
    )
    assert out[0] == 1.0 and out[2] == 2.0
    assert isinstance(out[1], gilfree.SerializationError) and out[1].what == "argument"
    assert "released" in str(out[1])

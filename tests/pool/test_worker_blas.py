"""BLAS pools inherited through fork: capped once they run, left alone when they never do
(capping an idle one starts its threads, which spin)."""

from __future__ import annotations

import os
import time

import pytest

import gilfree

np = pytest.importorskip("numpy")
threadpoolctl = pytest.importorskip("threadpoolctl")

pytestmark = pytest.mark.timeout(60)

WORKERS = 2
CAP = max(1, len(os.sched_getaffinity(0)) // WORKERS)


def _inherited_blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def _nap_then_report(_):
    time.sleep(0.005)  # long enough to be a candidate for capping
    return os.getpid(), len(os.listdir("/proc/self/task"))


def _matmul_then_report(_):
    a = np.ones((256, 256))
    (a @ a).sum()  # large enough for OpenBLAS to run its threads
    time.sleep(0.005)
    return os.getpid(), _inherited_blas_threads()


def test_a_pool_that_never_runs_is_not_capped():
    opts = dict(backend="process", workers=WORKERS, chunksize=1, start_method="fork")
    got = gilfree.map(_nap_then_report, range(12), **opts)
    # Capping an idle OpenBLAS pool starts its threads: the workers keep just
    # their own one (forked by the main thread, they need no parent-watcher
    # thread: the kernel kills them with the parent).
    assert {threads for _pid, threads in got} == {1}


def test_a_pool_that_runs_is_capped_after_the_first_chunk():
    if not any(n > CAP for n in _inherited_blas_threads()):
        pytest.skip("the parent's BLAS pool is no larger than the cap: nothing to cap")
    opts = dict(backend="process", workers=WORKERS, chunksize=1, start_method="fork")
    got = gilfree.map(_matmul_then_report, range(12), **opts)
    seen = set()
    for pid, counts in got:
        if pid in seen:  # a worker's first chunk may run before its pool is capped
            assert all(n <= CAP for n in counts), counts
        seen.add(pid)
    assert len(seen) < len(got)

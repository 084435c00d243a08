"""Large NumPy arrays travel through shared memory, both ways, and nothing is left in /dev/shm.

The leak guard (conftest) also fails any test here that leaves a segment of
this process behind.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import gilfree

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(60)

MB = 1 << 20


def segments(pid=None):
    """gilfree's segments in /dev/shm made by process ``pid`` (by anyone: None)."""
    prefix = "gilfree-" if pid is None else f"gilfree-{pid}-"
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


def ours(names):
    """Those of ``names`` made by this process (a worker's parent may be the fork server)."""
    return [n for n in names if n.startswith(f"gilfree-{os.getpid()}-")]


def describe(arr):
    """How the worker received an array: a view over a mapping of shared memory?"""
    base = arr
    while getattr(base, "base", None) is not None:
        base = base.base
    base = getattr(base, "obj", base)  # a memoryview: what does it look at?
    return {
        "writeable": arr.flags.writeable,
        "base": type(base).__name__,
        "sum": float(arr.sum()),
        "segments": segments(),
    }


@dataclasses.dataclass
class Payload:
    label: str
    data: object


def first_array(item):
    if isinstance(item, Payload):
        return describe(item.data)
    if isinstance(item, dict):
        return describe(item["x"])
    if isinstance(item, list | tuple):
        return first_array(item[0])
    return describe(item)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda a: a,
        lambda a: (a, 1),
        lambda a: [[a]],
        lambda a: {"x": a},
        lambda a: Payload("p", a),
    ],
    ids=["bare", "tuple", "nested-list", "dict", "dataclass"],
)
def test_large_arguments_arrive_as_writable_views_of_shared_memory(wrap):
    a = np.arange(2 * MB // 8, dtype=np.float64)
    got = gilfree.map(first_array, [wrap(a)] * 3, backend="process", workers=2)
    for g in got:
        assert g == {
            "writeable": True,  # a private copy-on-write mapping (test_shm_semantics.py)
            "base": "mmap",
            "sum": float(a.sum()),
            "segments": g["segments"],
        }
        assert len(ours(g["segments"])) == 1  # one for the unchanged array, however many tasks


def test_small_arrays_are_pickled_as_usual():
    a = np.arange(100, dtype=np.int64)
    got = gilfree.map(first_array, [a], backend="process")
    assert got[0]["writeable"] and got[0]["base"] != "mmap" and ours(got[0]["segments"]) == []


def make(n):
    return np.full(2 * MB // 8, n, dtype=np.float64)


def test_large_results_come_back_through_shared_memory_as_ordinary_arrays():
    out = gilfree.map(make, range(4), backend="process", workers=2)
    for k, arr in enumerate(out):
        assert arr.shape == (2 * MB // 8,) and float(arr[0]) == k and arr.flags.writeable
        arr[0] = -1  # the parent owns it
    assert segments(os.getpid()) == []  # names unlinked as soon as they were mapped


def test_share_handle_reaches_workers_without_copy_and_is_freed_on_release():
    a = np.random.default_rng(0).random(MB // 8 * 3)
    with gilfree.share(a) as handle:
        assert len(segments(os.getpid())) == 1
        got = gilfree.map(lambda h: describe(np.asarray(h)), [handle] * 2, backend="process")
        assert got[0]["base"] == "mmap" and got[0]["sum"] == pytest.approx(float(a.sum()))
        assert np.asarray(handle).base is not None  # the parent's view: no copy either
    assert segments(os.getpid()) == []
    with pytest.raises(gilfree.SerializationError, match="was released"):
        gilfree.map(np.sum, [handle], backend="process", errors="raise")


def boom(a):
    raise ValueError("boom")


def die(a):
    os._exit(1)


def hang(a):
    time.sleep(60)


@pytest.mark.parametrize(
    "fn, kw",
    [(boom, {}), (die, {}), (hang, {"timeout": 1})],
    ids=["exception", "worker-killed", "timeout"],
)
def test_no_segment_outlives_a_failed_map(fn, kw):
    a = np.ones(2 * MB // 8)
    out = gilfree.map(fn, [a, a], backend="process", errors="return", **kw)
    assert all(isinstance(o, Exception) for o in out)
    assert segments(os.getpid()) == []


def return_big_then_die(k):
    if k == 1:
        # a result segment is made, then the worker dies before sending it
        from gilfree import _shm

        _shm.ResultPickler(1, int(os.environ["GILFREE_TEST_PARENT"])).dumps(make(1))
        os._exit(1)
    return make(k)


def test_result_segments_of_a_dead_worker_are_swept(monkeypatch):
    monkeypatch.setenv("GILFREE_TEST_PARENT", str(os.getpid()))
    out = gilfree.map(return_big_then_die, range(3), backend="process", errors="return")
    assert isinstance(out[1], gilfree.WorkerDied) and float(out[2][0]) == 2
    assert segments(os.getpid()) == []


def test_no_segment_outlives_ctrl_c(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        textwrap.dedent("""
        import time, numpy as np, gilfree
        a = np.ones(4 << 20)
        def nap(x):
            time.sleep(30)
        print("go", flush=True)
        gilfree.map(nap, [a] * 4, backend="process")
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go"
    deadline = time.monotonic() + 20
    while not segments(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert segments(proc.pid), "the map never put its array in shared memory"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert segments(proc.pid) == []


def blas_threads(_):
    import numpy as np
    from threadpoolctl import threadpool_info

    a = np.ones((256, 256))
    (a @ a).sum()  # the BLAS pool runs its threads: only a running pool is capped
    time.sleep(0.005)  # BLAS pools inherited through fork are capped after tasks this long
    return os.getpid(), [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_blas_threads_are_capped_in_process_workers_only():
    cpus = len(os.sched_getaffinity(0))
    workers = 2
    got = gilfree.map(blas_threads, range(12), backend="process", workers=workers, chunksize=1)
    seen = set()
    for pid, counts in got:
        if pid in seen:  # each worker's first task may run before its pools are capped
            assert all(n <= max(1, cpus // workers) for n in counts), counts
        seen.add(pid)
    assert len(seen) < len(got)
    from threadpoolctl import threadpool_info

    here = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert gilfree.map(blas_threads, [0], backend="thread")[0][1] == here


def test_segments_of_a_killed_parent_are_swept_by_the_next_pool(monkeypatch):
    from gilfree import _shm

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    name = f"gilfree-{gone.pid}-a0"
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"left by a parent killed with SIGKILL")
    monkeypatch.setattr(_shm._segments, "_orphans_swept", False)
    try:
        assert gilfree.map(abs, [-1], backend="process") == [1]
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        _shm.unlink(name)

"""Argument segments live as long as a queued or running task needs them, not as long as the pool.

Issue 13: a long-lived Executor fed new arrays must not grow /dev/shm without
bound. These tests need the pool to release each chunk's ``Lease`` when the
chunk is done, failed or cancelled (``_shm.Arena.dumps`` is the seam).
"""

from __future__ import annotations

import os

import pytest

import gilfree

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(180)

#: "A few": the task in flight, plus one whose lease is released just after its
#: future resolved (the future is set before the chunk's bookkeeping ends).
FEW = 3


def argument_segments():
    prefix = f"gilfree-{os.getpid()}-a"
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def new_array(k):
    return np.full(1 << 18, float(k))  # 2 MiB: over the sharing threshold


def head(a):
    return float(a[0])


def boom(a):
    raise ValueError(f"boom {a[0]}")


def die(a):
    os._exit(3)


def test_forty_new_arrays_on_one_executor_never_hold_more_than_a_few_segments():
    peak = 0
    with gilfree.Executor(backend="process", workers=2) as ex:
        for k in range(40):
            assert ex.submit(head, new_array(k)).result(timeout=60) == float(k)
            peak = max(peak, len(argument_segments()))
        assert peak <= FEW, f"{peak} argument segments alive at once for one task at a time"


@pytest.mark.parametrize(
    "fn, error",
    [(boom, ValueError), (die, gilfree.WorkerDied)],
    ids=["exception", "worker-died"],
)
def test_segments_of_failed_tasks_go_before_the_executor_closes(fn, error):
    peak = 0
    with gilfree.Executor(backend="process", workers=2) as ex:
        for k in range(12):
            with pytest.raises(error):
                ex.submit(fn, new_array(k)).result(timeout=60)
            peak = max(peak, len(argument_segments()))
        assert peak <= FEW


def wait_on_fifo(path):
    with open(path, "rb") as f:  # blocks until the test opens the other end and writes
        return f.read(1)


@pytest.mark.timeout(120)
def test_segments_of_cancelled_tasks_go_before_the_executor_closes(tmp_path):
    fifo = str(tmp_path / "gate")
    os.mkfifo(fifo)
    with gilfree.Executor(backend="process", workers=1) as ex:
        gate = ex.submit(wait_on_fifo, fifo)
        futures = [ex.submit(head, new_array(k)) for k in range(10)]
        cancelled = [f for f in futures if f.cancel()]
        assert len(cancelled) >= 5  # at most a few were already handed to the worker
        alive = len(argument_segments())
        kept = len(futures) - len(cancelled)
        with open(fifo, "wb") as f:
            f.write(b"x")
        assert gate.result(timeout=60) == b"x"
        assert alive <= kept + 1, f"{alive} segments for {kept} tasks still to run"
        for f in futures:
            if f not in cancelled:
                f.result(timeout=60)


def test_a_map_over_many_arrays_frees_segments_as_chunks_finish():
    arrays = [new_array(k) for k in range(30)]
    seen = []
    for out in gilfree.imap(head, arrays, backend="process", workers=2, chunksize=1):
        seen.append((out, len(argument_segments())))
    assert [out for out, _ in seen] == [float(k) for k in range(30)]
    # Every array is still referenced by the caller, so nothing but the leases
    # can bound this: by the end, most chunks are done and their segments gone.
    assert min(n for _, n in seen[-5:]) < 10, seen

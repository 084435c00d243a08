"""backend="dask" against a real cluster: a ``dask scheduler`` and ``dask worker`` processes
started from the command line on 127.0.0.1 (see ``dask_cluster.py``).

The workers have this directory on their PYTHONPATH, so the top-level functions below
travel by reference, as a user's module would; lambdas and closures travel by value.
Races are forced with ``distributed.Event`` (a cluster-wide event), never with sleeps.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid

import pytest

pytest.importorskip("distributed")

from dask_cluster import LocalDaskCluster
from distributed import Client, Event, Queue

import gilfree
from gilfree._api import imap_indexed
from gilfree._options import Options
from gilfree.backends import StreamJob
from gilfree.backends._dask import PIPELINE, DaskBackend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cluster():
    with LocalDaskCluster(n_workers=2, nthreads=2) as c:
        yield c
        # Whatever the tests did, the user's cluster is still there: we never close it.
        with Client(c.address, set_as_default=False) as client:
            assert len(client.nthreads()) == 2
    assert all(p.poll() is not None for p in [*c.workers, c.scheduler])


@pytest.fixture
def address(cluster):
    cluster.check_scheduler()
    return cluster.address


@pytest.fixture
def client(address):
    with Client(address, set_as_default=False) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_collector_left():
    yield
    left = [t.name for t in threading.enumerate() if t.name == "gilfree-dask-collector"]
    assert not left, "a DaskBackend was not shut down"


# -- functions that run on the workers ---------------------------------------------------
def square(x):
    return x * x


def fail_on_three(x):
    if x == 3:
        raise KeyError(f"no {x} here")
    return x


def wait_for_event(x, name):
    Event(name).wait(timeout=30)
    return x


def flaky(arg):
    """Fails the first ``fails`` calls for each item; appends one line per call to ``path``."""
    path, item, fails = arg
    with open(path, "a") as f:
        f.write(f"{item}\n")
    with open(path) as f:
        calls = sum(1 for line in f if line == f"{item}\n")
    if calls <= fails:
        raise ConnectionError(f"flaky call {calls} of item {item}")
    return item


def slow_or_fast(arg):
    x, name = arg
    if x == 1:
        Event(name).wait(timeout=30)  # stands for a call that hangs
    return x


def in_worker_memory(arg):
    """True when the array this task got is the object the worker holds as scattered data."""
    from distributed import get_worker

    array, i = arg
    return any(v is array for v in get_worker().data.values()), float(array[i])


def sleep_then_return(x):
    time.sleep(0.05)  # the workload: long enough that a worker dies with tasks running
    return x, os.getpid()


def count_then_hang(name):
    Queue(name).put("attempt")
    Event(name).wait(timeout=30)  # stands for a call that hangs


# -- map / imap / Executor ---------------------------------------------------------------
def test_map_matches_a_plain_loop(address):
    assert gilfree.map(square, range(300), backend="dask", address=address) == [
        x * x for x in range(300)
    ]


def test_lambdas_and_closures_travel(address):
    offset = 7

    def add_offset(x):
        return x + offset

    assert gilfree.map(add_offset, range(10), backend="dask", address=address) == [
        x + 7 for x in range(10)
    ]
    assert gilfree.map(lambda x: (x, -x), [1, 2], backend="dask", address=address) == [
        (1, -1),
        (2, -2),
    ]


def test_address_from_the_environment(address, monkeypatch):
    monkeypatch.setenv("GILFREE_DASK_ADDRESS", address)
    assert gilfree.map(square, [3], backend="dask") == [9]


def test_no_address_names_both_ways_to_give_one(monkeypatch):
    monkeypatch.delenv("GILFREE_DASK_ADDRESS", raising=False)
    with pytest.raises(gilfree.ConfigurationError, match=r"address=.*GILFREE_DASK_ADDRESS"):
        gilfree.map(square, [1], backend="dask")


def report_then_wait(arg):
    """Item 0 waits for the event; the others put themselves on a cluster queue."""
    x, name = arg
    if x == 0:
        Event(name).wait(timeout=30)
    else:
        Queue(name).put(x)
    return x


def test_imap_ordered_waits_for_the_first_item(address, client):
    """Item 0 is held back until 1-5 have run: none of them may come out before it."""
    name = f"order-{uuid.uuid4().hex}"
    it = gilfree.imap(
        report_then_wait, [(x, name) for x in range(6)], backend="dask", address=address,
        chunksize=1,
    )  # fmt: skip
    released = threading.Event()

    def release_once_the_rest_ran():
        queue = Queue(name, client=client)
        for _ in range(5):
            queue.get(timeout=30)
        released.set()
        Event(name, client=client).set()

    releaser = threading.Thread(target=release_once_the_rest_ran)
    releaser.start()
    try:
        got = []
        for value in it:
            assert released.is_set(), f"{value} came out before item 0 finished"
            got.append(value)
        assert got == list(range(6))
    finally:
        releaser.join(timeout=40)


def test_imap_unordered_yields_as_tasks_complete(address, client):
    """Item 0 is held back until the other five have come out: they must not wait for it."""
    name = f"order-{uuid.uuid4().hex}"
    it = gilfree.imap(
        report_then_wait, [(x, name) for x in range(6)], backend="dask", address=address,
        ordered=False, chunksize=1,
    )  # fmt: skip
    try:
        got = [next(it) for _ in range(5)]  # would hang here if item 0 had to come first
    finally:
        Event(name, client=client).set()
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert next(it) == 0
    assert list(it) == []


def _our_tasks(dask_scheduler):
    """On the scheduler: the keys of gilfree's tasks it still knows."""
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith("gilfree-")]


def test_imap_consumes_its_input_lazily(address, client):
    drawn = 0

    def naturals():
        nonlocal drawn
        for x in itertools.count():
            drawn += 1
            yield x

    it = gilfree.imap(square, naturals(), backend="dask", address=address, chunksize=1)
    first = list(itertools.islice(it, 10))
    assert first == [x * x for x in range(10)]
    # 4 worker threads: at most a window of one-item chunks beyond what was taken.
    window = 2 * 4 + PIPELINE
    assert drawn <= 10 + window + 2, f"an infinite input was drawn {drawn} items ahead"
    it.close()
    # Closing the iterator cancels what was in flight: nothing of ours stays on the cluster.
    deadline = time.monotonic() + 10
    while client.run_on_scheduler(_our_tasks) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the scheduler to forget, not forcing a race
    assert client.run_on_scheduler(_our_tasks) == []


def test_executor_submit_and_map(address):
    with gilfree.Executor(backend="dask", address=address) as ex:
        futures = [ex.submit(square, x) for x in range(8)]
        assert [f.result(timeout=30) for f in futures] == [x * x for x in range(8)]
        assert list(ex.map(lambda x: x + 1, range(5))) == [1, 2, 3, 4, 5]
        bad = ex.submit(fail_on_three, 3)
        exc = bad.exception(timeout=30)
    assert isinstance(bad, concurrent.futures.Future)
    assert isinstance(exc, KeyError)
    assert isinstance(exc.__cause__, gilfree.RemoteTraceback)
    assert "fail_on_three" in exc.__cause__.tb


def test_executor_cancel_and_shutdown_drop_dask_tasks(address, client):
    """A dask future stays pending until its outcome arrives; cancelling drops the task."""
    name = f"block-{uuid.uuid4().hex}"
    ex = gilfree.Executor(backend="dask", address=address)
    t0 = time.monotonic()
    try:
        blocked = [ex.submit(wait_for_event, i, name) for i in range(6)]  # 4 threads
        assert not any(f.done() or f.running() for f in blocked)
        assert blocked[0].cancel()
        ex.shutdown(wait=True, cancel_futures=True)
        elapsed = time.monotonic() - t0
    finally:
        Event(name, client=client).set()
    assert all(f.cancelled() for f in blocked)
    assert elapsed < 10, "shutdown waited for calls whose futures were cancelled"
    deadline = time.monotonic() + 10
    while client.run_on_scheduler(_our_tasks) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the scheduler to forget, not forcing a race
    assert client.run_on_scheduler(_our_tasks) == []


@pytest.mark.parametrize(("workers", "out_there"), [(1, 1), (4, 6)])
def test_workers_caps_our_tasks_on_the_cluster(address, client, workers, out_there):
    """workers=1 on a 4-thread cluster: one task out there at a time, the rest wait here.
    workers=4, the cluster's size: no cap, the scheduler queues the next tasks itself."""
    name = f"cap-{uuid.uuid4().hex}"
    backend = DaskBackend(Options(address=address, workers=workers))
    try:
        job = StreamJob(lambda x: wait_for_event(x, name), backend.options)
        for i in range(6):
            backend.submit(job, i, [i])
        stats = backend.statistics()
        Event(name, client=client).set()
        got = sorted(job.outcomes.get(timeout=30)[1] for _ in range(6))
    finally:
        Event(name, client=client).set()
        backend.shutdown()
    assert (stats["in_flight"], stats["waiting"]) == (out_there, 6 - out_there)
    assert got == list(range(6))


# -- errors --------------------------------------------------------------------------------
def test_error_keeps_type_and_remote_traceback(address):
    with pytest.raises(KeyError, match="no 3 here") as info:
        gilfree.map(fail_on_three, range(10), backend="dask", address=address)
    cause = info.value.__cause__
    assert isinstance(cause, gilfree.RemoteTraceback)
    # Where it failed on the worker: this file, the function, the raising line.
    assert "test_dask.py" in cause.tb and "in fail_on_three" in cause.tb
    assert 'raise KeyError(f"no {x} here")' in cause.tb
    assert "_run_chunk" not in cause.tb  # gilfree's own frames are trimmed


def test_errors_return_keeps_the_other_results(address):
    out = gilfree.map(
        fail_on_three, range(6), backend="dask", address=address, errors="return", chunksize=6
    )
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
    assert isinstance(out[3], KeyError)


def raise_with_unpicklable_context(x):
    try:
        raise LookupError(threading.Lock())  # cannot be pickled
    except LookupError:
        raise ValueError(f"item {x}") from None


@pytest.mark.parametrize("retries", [0, 1])
def test_error_whose_chain_cannot_be_pickled_keeps_its_type(address, retries):
    with pytest.raises(ValueError, match="item 5") as info:
        gilfree.map(
            raise_with_unpicklable_context, [5], backend="dask", address=address, retries=retries
        )
    assert "raise_with_unpicklable_context" in info.value.__cause__.tb


def test_unpicklable_result_and_argument_fail_alone(address):
    lock = threading.Lock()
    out = gilfree.map(
        lambda x: threading.Lock() if x == 1 else x,
        range(3),
        backend="dask",
        address=address,
        errors="return",
        chunksize=3,
    )
    assert out[0] == 0 and out[2] == 2
    assert isinstance(out[1], gilfree.SerializationError) and out[1].what == "result"
    out = gilfree.map(
        lambda x: 1, [0, lock, 2], backend="dask", address=address, errors="return", chunksize=3
    )
    assert out[0] == 1 and out[2] == 1
    assert isinstance(out[1], gilfree.SerializationError) and out[1].what == "argument"


def test_function_the_workers_cannot_import(address, tmp_path, monkeypatch):
    (tmp_path / "only_here_module.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here_module

    with pytest.raises(gilfree.SerializationError, match="only_here_module") as info:
        gilfree.map(only_here_module.f, [1], backend="dask", address=address)
    assert info.value.what == "function"


# -- retries and timeouts ------------------------------------------------------------------
@pytest.mark.parametrize("chunksize", [1, 4])
def test_retries_rerun_only_the_failed_item(address, tmp_path, chunksize):
    path = str(tmp_path / "calls.txt")
    items = [(path, i, 2 if i == 2 else 0) for i in range(4)]  # item 2 fails twice
    out = gilfree.map(flaky, items, backend="dask", address=address, retries=2, chunksize=chunksize)
    assert out == [0, 1, 2, 3]
    with open(path) as f:
        calls = sorted(int(line) for line in f)
    assert calls == [0, 1, 2, 2, 2, 3]  # neighbours ran once, item 2 three times


@pytest.mark.parametrize("chunksize", [1, 4])
def test_retries_exhausted_raise_the_last_error(address, tmp_path, chunksize):
    path = str(tmp_path / "calls.txt")
    items = [(path, i, 5 if i == 1 else 0) for i in range(4)]
    with pytest.raises(ConnectionError, match="flaky call 2 of item 1") as info:
        gilfree.map(flaky, items, backend="dask", address=address, retries=1, chunksize=chunksize)
    assert "in flaky" in info.value.__cause__.tb
    with open(path) as f:
        assert sorted(int(line) for line in f).count(1) == 2


def test_timeout_fails_on_time_and_the_rest_goes_on(address, client):
    name = f"hang-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    out = gilfree.map(
        slow_or_fast,
        [(x, name) for x in range(4)],
        backend="dask",
        address=address,
        timeout=0.5,
        errors="return",
        chunksize=4,
    )
    elapsed = time.monotonic() - t0
    Event(name, client=client).set()  # let the abandoned call on the worker finish
    assert out[0] == 0 and out[2:] == [2, 3]
    exc = out[1]
    assert isinstance(exc, gilfree.TaskTimeout) and isinstance(exc, TimeoutError)
    assert exc.index == 1 and exc.timeout == 0.5
    assert "slow_or_fast" in exc.stack  # where the call was when it was given up
    assert elapsed < 10, f"a 0.5 s timeout took {elapsed:.1f} s to fire"


def test_timeout_with_retries_uses_every_attempt(address, client):
    name = f"hang-{uuid.uuid4().hex}"
    with pytest.raises(gilfree.TaskTimeout):
        gilfree.map(
            count_then_hang, [name], backend="dask", address=address, timeout=0.3, retries=1
        )
    Event(name, client=client).set()
    assert Queue(name, client=client).qsize() == 2  # the first call and one retry


# -- data movement -------------------------------------------------------------------------
def test_large_numpy_argument_is_scattered_once(address):
    np = pytest.importorskip("numpy")
    big = np.arange(1 << 18, dtype=np.float64)  # 2 MiB, over the 1 MiB threshold
    small = np.arange(16, dtype=np.float64)
    backend = DaskBackend(Options(address=address))
    try:
        job = StreamJob(in_worker_memory, backend.options)
        for i in range(12):  # twelve tasks, one item each
            backend.submit(job, i, [(big, i)])
        backend.submit(job, 12, [(small, 3)])
        got = {}
        while len(got) < 13:
            ok, start, values = job.outcomes.get(timeout=30)
            assert ok, values
            got.update(zip(itertools.count(start), values, strict=False))
        stats = backend.statistics()
    finally:
        backend.shutdown()
    # Every task saw the very object the worker holds as scattered data...
    assert all(got[i] == (True, float(i)) for i in range(12))
    # ...the small one travelled inside its task (the check can fail)...
    assert got[12] == (False, 3.0)
    # ...and the big array was scattered once for all twelve tasks.
    assert stats["scattered_arrays"] == 1 and stats["tasks"] == 13


@pytest.mark.parametrize("timeout", [None, 20.0])
def test_large_numpy_argument_through_the_public_api(address, timeout):
    """Also under a timeout, where fn runs in a helper thread: get_worker() still works."""
    np = pytest.importorskip("numpy")
    big = np.ones(1 << 18)
    out = gilfree.map(
        in_worker_memory,
        [(big, i) for i in range(6)],
        backend="dask",
        address=address,
        timeout=timeout,
    )
    assert out == [(True, 1.0)] * 6


class Scaler:
    def __init__(self, k):
        self.k = k

    def scale(self, x):
        return self.k * x


def test_function_is_scattered_once_per_backend(address):
    """Executor-style submits of the same callable, even `obj.method`, reuse one copy."""
    scaler = Scaler(3)
    backend = DaskBackend(Options(address=address))
    try:
        job_results = []
        for i in range(4):
            job = StreamJob(scaler.scale, backend.options)  # a new bound method each time
            backend.submit(job, 0, [i])
            job_results.append(job.outcomes.get(timeout=30))
        stats = backend.statistics()
    finally:
        backend.shutdown()
    assert job_results == [(True, 0, [3 * i]) for i in range(4)]
    assert stats["functions"] == 1 and stats["tasks"] == 4


def test_runner_needs_no_gilfree_on_the_worker():
    """The chunk runner is pickled by value: it loads where gilfree cannot be imported."""
    import cloudpickle

    from gilfree.backends import _dask_runner

    blob = cloudpickle.dumps(_dask_runner._run_chunk)
    payload = pickle.dumps([[1, 2], "abc"])
    script = (
        "import pickle, sys\n"
        "sys.modules['gilfree'] = None  # any import of gilfree now fails\n"
        "run = pickle.loads(sys.stdin.buffer.read())\n"
        f"out = pickle.loads(run(len, {payload!r}, [], None, False))\n"
        "print([o[:2] for o in out])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], input=blob, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "[(0, 2), (0, 3)]"


# -- a worker dies ---------------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.skip_in_test_pythons(
    "a Dask worker death: distributed's scheduler and gilfree's pure-Python Dask "
    "bookkeeping, the same on every interpreter; make test runs it (~13 s)"
)
def test_killed_worker_loses_no_result_and_duplicates_none():
    with LocalDaskCluster(n_workers=2, nthreads=2) as cluster:
        n = 60
        seen: list[int] = []
        killed = False
        for index, ok, value in imap_indexed(
            sleep_then_return,
            range(n),
            backend="dask",
            address=cluster.address,
            ordered=False,
            chunksize=1,
        ):
            assert ok, value
            assert value[0] == index
            seen.append(value)
            if len(seen) == 10 and not killed:
                cluster.kill_worker(0)  # SIGKILL, mid-run, with tasks running on it
                killed = True
        assert killed
        assert sorted(i for i, _ in seen) == list(range(n))  # every result, exactly once
        # The killed worker was working for us before it died.
        assert cluster.workers[0].pid in {pid for _, pid in seen[:10]}
        assert cluster.workers[0].poll() is not None
        assert len(cluster.alive_workers()) == 1


def test_shutdown_leaves_the_cluster_running(address, client):
    backend = DaskBackend(Options(address=address))
    assert backend.workers == 4
    backend.shutdown()
    backend.shutdown()  # twice is fine
    assert sum(client.nthreads().values()) == 4
    with pytest.raises(RuntimeError, match="after shutdown"):
        backend.submit(StreamJob(square, backend.options), 0, [1])


def test_unreachable_scheduler_says_where(monkeypatch):
    monkeypatch.setattr("gilfree.backends._dask.CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:9"):
        DaskBackend(Options(address="tcp://127.0.0.1:9"))

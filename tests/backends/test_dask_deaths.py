"""Dask workers that die under backend="dask": only the task that killed its worker fails.

One cluster for the module, started from the command line (``dask_cluster.py``) with a
nanny per worker, as ``dask worker`` runs by default: a worker that dies is replaced,
and the tests run back to back on whatever the previous one left. Every outcome is
checked against plain ``client.map`` on the same cluster.

The scheduler runs with ``allowed-failures=1`` (Dask's default is 3): a task is given
up with ``KilledWorker`` after two workers died under it. Same semantics, half the
worker restarts, which keeps this module affordable on a 2-core CI machine.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid

import pytest

pytest.importorskip("distributed")

import psutil
from dask_cluster import LocalDaskCluster
from distributed import Client, Event, Queue

import gilfree

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.slow,
    pytest.mark.skip_in_test_pythons(
        "Dask worker deaths: distributed's scheduler and gilfree's pure-Python Dask "
        "bookkeeping, the same on every interpreter; make test runs them (up to 31 s each)"
    ),
]

N_WORKERS = 2


@pytest.fixture(scope="module")
def cluster():
    with LocalDaskCluster(n_workers=N_WORKERS, nthreads=2, nanny=True, allowed_failures=1) as c:
        yield c


@pytest.fixture
def address(cluster, session_pids):
    """The cluster's address; afterwards, waits for the nannies to replace dead workers.

    The replacements are new processes under our nanny children: they are registered
    with the leak guard as the cluster's own, not counted as leaks of the test.
    """
    yield cluster.address
    cluster.wait_for_workers(N_WORKERS)
    for nanny in cluster.alive_workers():
        session_pids(proc.pid for proc in psutil.Process(nanny.pid).children(recursive=True))


@pytest.fixture
def client(address):
    with Client(address, set_as_default=False) as c:
        yield c


# -- functions that run on the workers ----------------------------------------------------
def exit_on_two(x):
    if x == 2:
        os._exit(1)
    return x * 10


def report_then_wait(arg):
    """Tells the test which worker process runs it, then waits for the test's go."""
    x, name = arg
    Queue(name).put(os.getpid())
    Event(name).wait(timeout=60)
    return x * 10


def exit_first_calls(arg):
    """Item 2 kills its worker on each of its first four calls; every call is counted."""
    path, x = arg
    if x == 2:
        with open(path, "a") as f:
            f.write("call\n")
        with open(path) as f:
            if sum(1 for _ in f) <= 4:
                os._exit(1)
    return x * 10


def square(x):
    return x * x


def exit_on_two_with_array(arg):
    x, array = arg
    if x == 2:
        os._exit(1)
    return x * 10 + int(array[0])


def _outcomes(values):
    """Each index as ("ok", value) or ("error", exception type name)."""
    return [
        ("error", type(v).__name__) if isinstance(v, BaseException) else ("ok", v) for v in values
    ]


def _client_map(client, fn, items):
    futures = client.map(fn, items, pure=False)
    out = []
    for future in futures:
        try:
            out.append(future.result(timeout=120))
        except Exception as exc:
            out.append(exc)
    return _outcomes(out)


def _check_against_client_map(got, plain, culprits):
    """gilfree fails exactly the culprits (WorkerDied); where client.map got a value,
    gilfree got the same one. (client.map may also fail an innocent task that happened
    to share its workers with the culprit: Dask blames every task running there.)"""
    failed = {i for i, (kind, _) in enumerate(got) if kind == "error"}
    assert failed == set(culprits), got
    for i in culprits:
        assert got[i] == ("error", "WorkerDied")
        assert plain[i] == ("error", "KilledWorker")
    for i, outcome in enumerate(plain):
        if outcome[0] == "ok":
            assert got[i] == outcome


# -- a task kills its worker -----------------------------------------------------------------
@pytest.mark.parametrize(("retries", "chunksize"), [(0, None), (1, 10)])
def test_task_that_exits_its_worker_fails_alone(address, client, retries, chunksize):
    """Automatic chunks, and all ten items in one task: its neighbours run again."""
    plain = _client_map(client, exit_on_two, range(10))
    out = gilfree.map(
        exit_on_two, range(10), backend="dask", address=address, errors="return",
        retries=retries, chunksize=chunksize,
    )  # fmt: skip
    _check_against_client_map(_outcomes(out), plain, culprits=[2])
    exc = out[2]
    assert exc.index == 2 and exc.item == "2"
    message = str(exc)
    assert message.startswith("task 2 (2): its Dask worker died")
    assert "Dask reported KilledWorker" in message or "Dask cancelled" in message
    # Right after, with the nannies perhaps still restarting workers: a clean run works.
    assert gilfree.map(square, range(20), backend="dask", address=address) == [
        x * x for x in range(20)
    ]


def test_culprit_is_found_while_a_large_array_is_scattered(address):
    """A suspect goes alone after the backend asks which scattered data the cluster
    still holds, large arrays included (their cache entries once failed that check:
    innocent suspects then failed as if their function could not be sent)."""
    np = pytest.importorskip("numpy")
    big = np.ones(1 << 18)  # 2 MiB, over share_threshold: scattered, not pickled
    out = gilfree.map(
        exit_on_two_with_array, [(x, big) for x in range(6)], backend="dask",
        address=address, errors="return", chunksize=1,
    )  # fmt: skip
    assert _outcomes(out) == [
        ("ok", 1), ("ok", 11), ("error", "WorkerDied"), ("ok", 31), ("ok", 41), ("ok", 51)
    ]  # fmt: skip


def test_errors_raise_gives_the_worker_death(address):
    with pytest.raises(gilfree.WorkerDied, match=r"^task 2 \(2\): its Dask worker died"):
        gilfree.map(exit_on_two, range(10), backend="dask", address=address, chunksize=10)


def test_executor_future_of_the_culprit_gets_worker_died(address):
    with gilfree.Executor(backend="dask", address=address) as ex:
        futures = [ex.submit(exit_on_two, x) for x in range(6)]
        outcomes = [f.exception(timeout=120) or f.result() for f in futures]
    assert isinstance(outcomes[2], gilfree.WorkerDied) and outcomes[2].index == 0
    assert outcomes[:2] + outcomes[3:] == [0, 10, 30, 40, 50]


def test_retries_rerun_a_task_whose_worker_died(address, tmp_path):
    """Item 2 kills its worker on four calls, then succeeds.

    Without retries it gets at most four calls: Dask runs its task on two workers
    (allowed-failures=1), then gilfree reruns it alone, on two more at most. retries=3
    adds three runs of at least one call each, so the fifth call comes."""
    path = str(tmp_path / "calls.txt")
    out = gilfree.map(
        exit_first_calls, [(path, x) for x in range(6)], backend="dask", address=address,
        retries=3, errors="return", chunksize=1,
    )  # fmt: skip
    assert out == [x * 10 for x in range(6)]
    with open(path) as f:
        assert sum(1 for _ in f) == 5  # four deaths, one success, no call after it


# -- a worker is killed from outside ---------------------------------------------------------
def _kill_a_worker_mid_run(client, name):
    """Once a task reports that it runs, SIGKILL the worker process running it, then let
    every task go on (in a thread: the caller is busy running the map)."""

    def kill():
        try:
            pid = Queue(name, client=client).get(timeout=60)
            os.kill(pid, signal.SIGKILL)
        finally:
            Event(name, client=client).set()

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


@pytest.mark.parametrize("retries", [0, 1])
def test_worker_killed_mid_run_loses_nothing(address, client, retries):
    name = f"plain-{uuid.uuid4().hex}"
    killer = _kill_a_worker_mid_run(client, name)
    plain = _client_map(client, report_then_wait, [(x, name) for x in range(10)])
    killer.join(timeout=60)

    name = f"gilfree-{uuid.uuid4().hex}"
    killer = _kill_a_worker_mid_run(client, name)
    out = gilfree.map(
        report_then_wait, [(x, name) for x in range(10)], backend="dask", address=address,
        retries=retries, errors="return", chunksize=3,
    )  # fmt: skip
    killer.join(timeout=60)

    # Dask reruns what ran on the killed worker elsewhere: no task of ours killed it.
    assert plain == [("ok", x * 10) for x in range(10)]
    assert _outcomes(out) == plain

"""``ScatteredData.scatter`` when a worker dies mid-scatter: it tries again, and
only the scheduler's error about that worker is taken for one."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("distributed")

from gilfree.backends._dask_data import ScatteredData


class FlakyClient:
    """Raises each of ``errors`` from one scatter in turn, then scatters."""

    status = "running"

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def scatter(self, obj, **_kw):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return ("future of", obj)


def scattered(client: FlakyClient) -> ScatteredData:
    return ScatteredData(client, threading.Lock(), {})


@pytest.mark.parametrize(
    "error",
    [KeyError("tcp://127.0.0.1:33981"), ConnectionResetError("closed"), OSError("gone")],
    ids=["scheduler-lost-the-worker", "connection-reset", "oserror"],
)
def test_a_worker_lost_mid_scatter_is_tried_again(error):
    client = FlakyClient(error)
    assert scattered(client).scatter(len) == ("future of", len)
    assert client.calls == 2


def test_other_key_errors_are_not_taken_for_a_lost_worker():
    client = FlakyClient(KeyError("some_field"))
    with pytest.raises(KeyError, match="some_field"):
        scattered(client).scatter(len)
    assert client.calls == 1

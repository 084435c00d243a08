"""Connecting the dask backend to a scheduler (and cleaning up when that fails)."""

from __future__ import annotations

from typing import Any

#: Environment variable naming the scheduler when ``address=`` is not given.
ADDRESS_ENV = "GILFREE_DASK_ADDRESS"
#: Seconds to wait for the scheduler to answer when connecting.
CONNECT_TIMEOUT_S = 10.0


def connect(address: str, timeout: float) -> Any:
    """A ``distributed.Client`` for ``address``, or ConnectionError naming it.

    Built in two steps so that a failed connection can still be cleaned up: the
    constructor starts the client's event-loop thread before it connects, and
    a plain ``Client(address)`` that fails leaves that thread running.
    """
    from distributed import Client

    client = Client.__new__(Client)
    try:
        Client.__init__(client, address, timeout=timeout, set_as_default=False)
    except BaseException as exc:
        _discard(client)
        if isinstance(exc, OSError):  # includes TimeoutError
            raise ConnectionError(
                f"could not reach the Dask scheduler at {address} "
                f"(from address= or {ADDRESS_ENV}): {exc}"
            ) from exc
        raise
    return client


def _discard(client: Any) -> None:
    """Close a client whose connection failed, including its event-loop thread."""
    try:
        client.close(timeout=CONNECT_TIMEOUT_S)
    finally:
        runner = getattr(client, "_loop_runner", None)  # close() skips it after a failure
        if runner is not None:
            runner.stop()

"""A job for driving ProcessPool directly: outcomes land in a queue, as the engine's do."""

from __future__ import annotations

import queue
from typing import Any

import pytest


class Sink:
    """Implements the pool's JobLike protocol; every outcome goes to ``outcomes``."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.cancelled = False
        self.input_done = True
        self.outcomes: queue.SimpleQueue[tuple[bool, int, Any]] = queue.SimpleQueue()

    def begin(self) -> bool:
        return not self.cancelled

    def deliver(self, start: int, values: list[Any]) -> None:
        for k, v in enumerate(values):
            self.outcomes.put((True, start + k, v))

    def fail(self, index: int, exc: BaseException) -> None:
        self.outcomes.put((False, index, exc))

    def record(self, n: int, seconds: float) -> None:
        pass

    def mean_task_seconds(self) -> float | None:
        return None

    def withdraw(self) -> bool:
        return False

    def take(self, n: int, timeout: float = 30.0) -> dict[int, tuple[bool, Any]]:
        """The next n outcomes, by index (raises queue.Empty if they are late)."""
        out = {}
        for _ in range(n):
            ok, index, value = self.outcomes.get(timeout=timeout)
            assert index not in out, f"index {index} got two outcomes"
            out[index] = (ok, value)
        return out


@pytest.fixture
def sink():
    return Sink

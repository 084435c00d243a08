"""The built-in workload suite: five shapes of work that favour different backends.

Every task function is a module-level function, so any pool can import it by
name in a worker (``multiprocessing``, joblib, mpire and pebble included:
``benchmarks/peers.py`` runs the same suite through them).

=============  ==========================================  ====================
workload       what a task does                            expected winner
=============  ==========================================  ====================
cpu            pure-Python arithmetic; holds the GIL        process
io             sleeps, as a network call would              thread (many)
hash           SHA-256 of a 16 MiB buffer; releases GIL     thread or process
tiny           ``x + 1``; overhead is everything            serial
array          sorts half of a 32 MiB NumPy argument       process, if the
                                                            array is not copied
=============  ==========================================  ====================

Sizes: ``quick`` makes each workload take about one second serially on a
2020s x86 core (the suite then runs in well under a minute on two cores);
the full sizes are about four times that.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SUITE",
    "Workload",
    "array_median",
    "cpu_bound",
    "hash_block",
    "sleepy_io",
    "tiny",
]


# ---------------------------------------------------------------- task functions


def cpu_bound(n: int) -> int:
    """Pure-Python arithmetic over ``range(n)``: holds the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def sleepy_io(seconds: float) -> float:
    """Wait ``seconds`` without using the CPU, as a network or disk call would."""
    time.sleep(seconds)
    return seconds


#: Size of the buffer :func:`hash_block` hashes. hashlib drops the GIL for
#: inputs over 2 KiB; 16 MiB makes each call a few milliseconds of C code.
HASH_BLOCK_BYTES = 16 << 20
_block: bytes | None = None


def hash_block(seed: int) -> str:
    """SHA-256 of ``seed`` followed by a 16 MiB buffer: C code that releases the GIL.

    The buffer is built once per process and is not part of the argument, so
    the workload measures GIL-free C code, not argument transport.
    """
    global _block
    if _block is None:
        _block = bytes(range(256)) * (HASH_BLOCK_BYTES // 256)
    digest = hashlib.sha256(seed.to_bytes(8, "little"))
    digest.update(_block)
    return digest.hexdigest()


def tiny(x: int) -> int:
    """Almost nothing: any per-task overhead dominates."""
    return x + 1


#: Task ``k`` of the array workload reads every ``ARRAY_STRIDE``-th element
#: from ``k % ARRAY_STRIDE``: half the array, some 20 ms of sorting.
ARRAY_STRIDE = 2


def array_median(arg: tuple[Any, int]) -> float:
    """Median of a strided half of a large NumPy array passed as the argument."""
    import numpy as np

    array, k = arg
    ordered = np.sort(array[k % ARRAY_STRIDE :: ARRAY_STRIDE])
    return float(ordered[len(ordered) // 2])


# ---------------------------------------------------------------- the suite


@dataclass(frozen=True)
class Workload:
    """One benchmark: a task function and how to make its inputs."""

    name: str
    description: str
    fn: Callable[[Any], Any]
    make_items: Callable[[bool], list[Any]]
    #: Module the workload needs beyond gilfree's dependencies, or None.
    needs: str | None = None

    def items(self, *, quick: bool) -> list[Any]:
        return self.make_items(quick)

    def missing(self) -> str | None:
        """Why this workload cannot run here (a missing module), or None."""
        if self.needs is None:
            return None
        import importlib.util

        if importlib.util.find_spec(self.needs) is None:
            return f"needs {self.needs}, which is not installed (pip install {self.needs})"
        return None


def _cpu_items(quick: bool) -> list[int]:
    return [400_000] * (48 if quick else 192)


def _io_items(quick: bool) -> list[float]:
    return [0.01] * (100 if quick else 400)


def _hash_items(quick: bool) -> list[int]:
    return list(range(96 if quick else 384))


def _tiny_items(quick: bool) -> list[int]:
    return list(range(20_000 if quick else 200_000))


#: Elements of the array workload's argument: 4 Mi float64 = 32 MiB.
ARRAY_ELEMENTS = 4 << 20


def _array_items(quick: bool) -> list[tuple[Any, int]]:
    import numpy as np

    array = np.random.default_rng(0).random(ARRAY_ELEMENTS)
    # The same array in every task, as when a model or table is an argument.
    return [(array, k) for k in range(32 if quick else 128)]


SUITE: tuple[Workload, ...] = (
    Workload("cpu", "CPU-bound pure Python", cpu_bound, _cpu_items),
    Workload("io", "sleeping I/O (10 ms)", sleepy_io, _io_items),
    Workload("hash", "GIL-free C (SHA-256, 16 MiB)", hash_block, _hash_items),
    Workload("tiny", "tiny tasks (x + 1)", tiny, _tiny_items),
    Workload("array", "32 MiB NumPy array argument", array_median, _array_items, "numpy"),
)

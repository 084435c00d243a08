"""gilfree's own process pool (see ``_pool`` for the design)."""

from ._pool import PoolState, ProcessPool

__all__ = ["PoolState", "ProcessPool"]

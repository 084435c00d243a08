"""gilfree's own process pool (see ``_pool`` for the design and the module map).

It depends on nothing above it: jobs are anything shaped like ``JobLike``.
"""

from ._pool import ProcessPool
from ._state import JobLike, PoolState

__all__ = ["JobLike", "PoolState", "ProcessPool"]

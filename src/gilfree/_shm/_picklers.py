"""Picklers that send large ndarrays through shared memory, and the results side."""

from __future__ import annotations

import copyreg
import io
import itertools
import os
import pickle
import sys
from collections import ChainMap
from typing import Any

from ._segments import _adopt, _bytes_of, _create

DEFAULT_THRESHOLD = 1 << 20


def _result_reduce(threshold: int, parent: int) -> Any:
    counter = itertools.count()

    def reduce(arr: Any) -> Any:
        if arr.nbytes < threshold or arr.dtype.hasobject:
            return arr.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        name = f"gilfree-{parent}-r{os.getpid()}-{next(counter)}"
        _create(name, _bytes_of(arr))
        return (_adopt, (name, arr.shape, arr.dtype))

    return reduce


def dumps(obj: Any, reduce_array: Any, *, by_value: bool = False) -> bytes:
    """Pickle with ndarray routed through ``reduce_array``; cloudpickle if asked or needed."""
    import numpy as np

    buf = io.BytesIO()
    if not by_value:
        p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
        table: ChainMap[type, Any] = ChainMap({np.ndarray: reduce_array}, copyreg.dispatch_table)
        p.dispatch_table = table
        try:
            p.dump(obj)
            return buf.getvalue()
        except Exception:
            buf = io.BytesIO()
    import cloudpickle

    cp = cloudpickle.CloudPickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    # Through the C Pickler's own descriptor: CloudPickler has a class attribute
    # ``dispatch_table`` that shadows it, so ``cp.dispatch_table = ...`` would only
    # set an instance attribute the C code never reads (arrays went inline).
    pickle.Pickler.dispatch_table.__set__(  # type: ignore[attr-defined]
        cp, ChainMap({np.ndarray: reduce_array}, cloudpickle.CloudPickler.dispatch_table)
    )
    cp.dump(obj)
    return buf.getvalue()


def numpy_loaded() -> bool:
    return "numpy" in sys.modules


class ResultPickler:
    """What a worker uses for its results: large arrays go home through shared memory."""

    def __init__(self, threshold: int, parent: int) -> None:
        self._reduce = _result_reduce(threshold, parent)

    def dumps(self, obj: Any) -> bytes:
        return dumps(obj, self._reduce)

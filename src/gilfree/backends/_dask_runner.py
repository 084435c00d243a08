"""The part of the dask backend that runs on Dask workers (see ``_dask``).

Everything here runs on the cluster and may use only the standard library and
cloudpickle (which Dask requires): this module is pickled *by value*, so the
workers need Dask, cloudpickle and the user's own code, but not gilfree.
"""

from __future__ import annotations

import contextvars
import io
import pickle
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle

# Outcome kinds produced by the runner on the worker (plain ints: no gilfree there).
_OK, _RAISED, _TIMEOUT, _BAD_RESULT = 0, 1, 2, 3
# First argument of the TimeoutError a one-item task raises so that Dask retries it.
_TIMEOUT_MARK = "gilfree-task-timeout"
# Names of the runner's frames, trimmed from the top of remote tracebacks.
_RUNNER = frozenset({"_run_chunk", "_run_one"})
# Attribute carrying the formatted traceback on an exception raised for Dask's retries.
_TB_ATTR = "_gilfree_remote_traceback"

# The runner must reach workers that do not have gilfree installed: pickle it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _run_chunk(
    fn: Any, payload: bytes, refs: list[Any], timeout: float | None, strict: bool
) -> bytes:
    """Call ``fn`` on each item of the pickled chunk; return pickled per-item outcomes.

    An outcome is ``(kind, value, text, seconds)``: ``value`` is the result (``_OK``) or
    the exception (``_RAISED``); ``text`` the formatted traceback or, for ``_TIMEOUT``,
    the stack of the call when it was given up. With ``strict`` (one-item tasks under
    ``retries=``) a failure is raised instead, so that Dask's own retries rerun it.
    """
    items = _RefUnpickler(io.BytesIO(payload), refs).load()
    outcomes = []
    for item in items:
        t0 = time.perf_counter()
        outcome = _run_one(fn, item) if timeout is None else _call_with_deadline(fn, item, timeout)
        seconds = time.perf_counter() - t0
        if strict and outcome[0] == _RAISED:
            exc = outcome[1]
            exc.__dict__[_TB_ATTR] = outcome[2]  # travels with it; the client pops it
            raise exc
        if strict and outcome[0] == _TIMEOUT:
            raise TimeoutError(_TIMEOUT_MARK, outcome[2])
        outcomes.append((*outcome, seconds))
    return _dump_outcomes(outcomes)


class _RefUnpickler(pickle.Unpickler):
    """Resolves the client's persistent ids to the large arrays it scattered.

    A method, not an instance attribute: Python 3.13 made that attribute read-only.
    """

    def __init__(self, file: io.BytesIO, refs: list[Any]) -> None:
        super().__init__(file)
        self._refs = refs

    def persistent_load(self, pid: Any) -> Any:
        return self._refs[pid]


def _run_one(fn: Any, item: Any) -> tuple[int, Any, str | None]:
    try:
        return (_OK, fn(item), None)
    except Exception as exc:
        return _raised(exc)


def _raised(exc: BaseException) -> tuple[int, Any, str]:
    text = _format_remote(exc, exc.__traceback__)
    # The text holds the traceback and the chained exceptions. Drop the objects: Dask
    # installs tblib's exception reducers, which would pickle the whole chain with its
    # frames, and one unpicklable link (a ContextVar in a LookupError, say) would fail it.
    exc.__traceback__ = exc.__context__ = exc.__cause__ = None
    try:  # the exception must survive the trip back, or the whole chunk would be lost
        pickle.loads(cloudpickle.dumps(exc))
    except Exception as why:
        exc = RuntimeError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
            f"(the original exception could not be pickled: {why!r})"
        )
    return (_RAISED, exc, text)


def _format_remote(exc: BaseException, tb: Any) -> str:
    """The traceback as text, without the runner's own frames above the user's code."""
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_name in _RUNNER:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _call_with_deadline(fn: Any, item: Any, timeout: float) -> tuple[int, Any, str | None]:
    """Run ``fn(item)`` in a daemon thread; give up on it after ``timeout`` seconds."""
    box: list[tuple[int, Any, str | None]] = []
    done = threading.Event()
    # Dask finds the current worker through context variables (get_worker, get_client):
    # run the call in a copy of this worker thread's context.
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box.append(context.run(_run_one, fn, item))
        finally:
            done.set()

    thread = threading.Thread(target=target, name="gilfree-dask-call", daemon=True)
    thread.start()
    if done.wait(timeout):
        return box[0]
    frame = sys._current_frames().get(thread.ident or -1)
    stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
    return (_TIMEOUT, None, stack)


def _dump_outcomes(outcomes: list[tuple[Any, ...]]) -> bytes:
    try:
        return _dumps(outcomes)
    except Exception:
        pass
    # Some result cannot be pickled: find which, and report those items alone.
    fixed = []
    for kind, value, text, seconds in outcomes:
        if kind == _OK:
            try:
                _dumps(value)
            except Exception as why:
                kind, value = _BAD_RESULT, f"{type(value).__qualname__}: {why!r}"
        fixed.append((kind, value, text, seconds))
    return _dumps(fixed)


def _dumps(obj: Any) -> bytes:
    try:  # plain pickle is faster; cloudpickle for lambdas and classes made at run time
        return pickle.dumps(obj, protocol=5)
    except Exception:
        return cloudpickle.dumps(obj, protocol=5)

"""When Executors stop: dropped without ``shutdown()``, and at interpreter exit.

CPython's executors shut down through a weakref when garbage-collected and
finish submitted work at exit; these hooks do the same for ``Executor``. A
program ended by Ctrl-C does not wait: its executors' queued tasks are
cancelled and running ones stopped (``ProcessPoolExecutor`` gets the same
from its workers, which the Ctrl-C reaches too; ours ignore it).
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any, Protocol

from .backends import Backend


class _Stoppable(Protocol):
    """What the exit hook needs of an ``Executor`` (named here, not imported:
    ``_executor`` imports this module)."""

    def shutdown(self, wait: bool = ...) -> None: ...

    def _close(self, *, wait: bool, cancel_futures: bool, kill: bool) -> None: ...


def _release(backends: dict[Any, Backend], lock: threading.Lock) -> None:
    """An Executor no one holds: its workers finish queued work, then stop."""
    with lock:
        found = list(backends.values())
    for backend in found:
        try:
            backend.shutdown(wait=False)
            _draining.add(backend)
        except Exception:  # a finalizer must not raise
            pass


#: Executors still open, and backends shut down without waiting, for the exit
#: hook (weak: it keeps none alive; a backend still working is kept by its threads).
_live: weakref.WeakSet[_Stoppable] = weakref.WeakSet()
_draining: weakref.WeakSet[Backend] = weakref.WeakSet()
_exiting = False
_hook_registered = False
_hook_pid = 0


def _register_exit_hook() -> None:
    """Once per process, before threads are stopped at interpreter exit: no new
    work, and work already submitted finishes (what concurrent.futures does).
    Threads abandoned after a timeout are not waited for."""
    global _hook_registered, _hook_pid
    if _hook_registered:
        return
    _hook_registered = True
    _hook_pid = os.getpid()
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_at_exit)
    else:  # pragma: no cover - CPython has had it since 3.9
        import atexit

        atexit.register(_at_exit)


def _at_exit() -> None:
    global _exiting
    if os.getpid() != _hook_pid:
        return  # a forked child (a worker): these executors are the parent's
    _exiting = True
    # The main script's uncaught exception, printed before this hook runs.
    ended_by = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    interrupted = isinstance(ended_by, KeyboardInterrupt)
    for ex in list(_live):
        try:
            if interrupted:
                ex._close(wait=False, cancel_futures=True, kill=True)
            else:
                ex.shutdown(wait=True)
        except Exception:
            pass
    for backend in list(_draining):
        try:
            backend.shutdown(wait=not interrupted, kill=interrupted)
        except Exception:
            pass

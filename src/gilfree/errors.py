"""Every exception gilfree raises, in one place.

::

    Exception
     └── GilfreeError                     anything gilfree itself reports
          ├── WorkerDied                  the process running the task exited
          ├── TaskTimeout (TimeoutError)  the task ran past ``timeout=``
          ├── SerializationError          a function, argument or result could not be pickled
          ├── DeadlockError               a lock request closed a wait-for cycle
          ├── PoolBroken (concurrent.futures.BrokenExecutor)
          │                               the process pool cannot go on: pending
          │                               and later work fail with it
          └── ConfigurationError (ValueError)
                                          bad options: names the option and the value

A task's own exception is never wrapped: it re-raises with its original type,
and on the process and dask backends the worker-side traceback hangs off it as
``__cause__`` (a :class:`RemoteTraceback`), the way ``concurrent.futures`` does.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

__all__ = [
    "ConfigurationError",
    "DeadlockError",
    "GilfreeError",
    "PoolBroken",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeout",
    "WorkerDied",
]


class GilfreeError(Exception):
    """Base class of every error gilfree raises on its own account."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword attributes (index, stack...) across pickling.
        return (_rebuild, (type(self), self.args, self.__dict__))


class WorkerDied(GilfreeError):
    """The worker process running a task exited before finishing it.

    Attributes: ``index`` (the task's position in the input, or None),
    ``item`` (a short repr of its input), ``exitcode`` (as
    ``multiprocessing`` gives it: negative for a signal), ``signal_name``
    and ``stack`` (the worker's Python stack when the crash was a fatal
    signal that faulthandler could report, else "").
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        item: str = "",
        exitcode: int | None = None,
        signal_name: str | None = None,
        stack: str = "",
    ) -> None:
        super().__init__(message)
        self.index = index
        self.item = item
        self.exitcode = exitcode
        self.signal_name = signal_name
        self.stack = stack


class TaskTimeout(GilfreeError, TimeoutError):
    """A task ran past its ``timeout=``.

    ``stack`` holds the Python stack of the worker (process or thread) at the
    moment it was stopped; it is also part of the message.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        timeout: float | None = None,
        stack: str = "",
    ) -> None:
        super().__init__(message)
        self.index = index
        self.timeout = timeout
        self.stack = stack


class SerializationError(GilfreeError):
    """A function, argument or result could not be sent between processes.

    ``what`` is ``"function"``, ``"argument"`` or ``"result"``; ``index`` the
    task's position when one task is concerned.
    """

    def __init__(self, message: str, *, what: str = "", index: int | None = None) -> None:
        super().__init__(message)
        self.what = what
        self.index = index


class DeadlockError(GilfreeError):
    """Raised in the thread whose lock request would close a wait-for cycle."""


class PoolBroken(GilfreeError, concurrent.futures.BrokenExecutor):
    """The process pool cannot go on (its fork server cannot be restarted, a
    worker's ``initializer`` failed, or its manager hit an internal error).

    Every task still pending fails with it, and every later ``submit`` raises
    it. It is a ``concurrent.futures.BrokenExecutor`` (a ``RuntimeError``), so
    code written for ``ProcessPoolExecutor``'s ``BrokenProcessPool`` catches it.
    The underlying error, when there is one, is its ``__cause__``.
    """


class ConfigurationError(GilfreeError, ValueError):
    """An option has a value gilfree cannot use; the message names both."""


class RemoteTraceback(Exception):
    """Carries a worker-side traceback as text; set as ``__cause__`` of a task error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def _rebuild(cls: type[GilfreeError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


def attempt_ended(exc: BaseException) -> str:
    """How one attempt of a task ended, in a few words: the error's type and
    first line (the notes of retried tasks list one per attempt)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if len(first) > 80:
        first = first[:77] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def task_renamed(exc: BaseException, task: int, name: str) -> str | None:
    """gilfree's own message of ``exc`` about ``task`` with "task N " said as
    ``name`` instead; None for any other exception (a user's message, which
    may say "task N" about something else, is never rewritten)."""
    text = exc.args[0] if exc.args else None
    if getattr(exc, "index", None) != task or not isinstance(text, str):
        return None
    if not isinstance(exc, GilfreeError) or f"task {task} " not in text:
        return None
    return text.replace(f"task {task} ", f"{name} ", 1)


def as_submitted_call(exc: BaseException) -> BaseException:
    """``exc`` for the future of one submitted call: gilfree's own message names
    it "the submitted call", not "task 0" (every submit is task 0 of its own
    job, which meant nothing to its caller)."""
    _rename(exc, 0, "the submitted call")
    return exc


def _rename(exc: BaseException, task: int, name: str) -> None:
    """``task_renamed``, applied to ``exc`` itself."""
    text = task_renamed(exc, task, name)
    if text is not None:
        exc.args = (text, *exc.args[1:])


def reindexed(exc: BaseException, old: int, new: int) -> BaseException:
    """``exc`` about task ``old`` made about task ``new``, its ``index`` and
    gilfree's own message alike: the probe numbers its samples, a job its
    inputs (a crash of input 10 was reported as "task 9" once the probe's
    second phase had numbered the samples after the first crash from 0)."""
    if old == new or getattr(exc, "index", None) != old:
        return exc
    _rename(exc, old, f"task {new}")
    if isinstance(exc, GilfreeError):
        setattr(exc, "index", new)  # noqa: B010 - set where a GilfreeError has one
    return exc

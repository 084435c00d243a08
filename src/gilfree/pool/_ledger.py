"""Every chunk the pool holds and where it is: queued, or sent to a worker.

The manager owns one ``Ledger``. It turns what workers report into outcomes
for jobs, re-pickles pieces of chunks that must run again, and releases a
chunk's shared-memory lease when no task of it can run any more. It does no
I/O with workers: the manager does the talking and tells it what happened.
"""

from __future__ import annotations

import collections
from typing import Any

from .. import _serialize, _shm
from ..errors import SerializationError, attempt_ended
from . import _recovery
from ._recovery import Cause, Fail, Held
from ._state import Chunk, Worker


class Ledger:
    def __init__(self, arena: _shm.Arena, stats: collections.Counter[str]) -> None:
        self.pending: collections.deque[Chunk] = collections.deque()
        self.sent: dict[int, Chunk] = {}  # chunks a worker holds, by seq
        self.fn_time: dict[int, tuple[int, float]] = {}  # fn key -> (tasks, seconds)
        self._arena = arena
        self._stats = stats

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.sent)

    def predicted_s(self, chunk: Chunk) -> float:
        """Seconds the rest of `chunk` should take: from its job, else from its function
        (Executor.submit makes a job per call, so the function is what repeats)."""
        mean = chunk.job.mean_task_seconds()
        if mean is None:
            n, s = self.fn_time.get(chunk.key, (0, 0.0))
            mean = s / n if n else None
        return float("inf") if mean is None else mean * (len(chunk.items) - chunk.done)

    def sent_to(self, w: Worker, chunk: Chunk) -> None:
        chunk.worker = w
        w.inflight.append(chunk)
        self.sent[chunk.seq] = chunk

    def settle(self, w: Worker, chunk: Chunk) -> None:
        """`chunk` left `w` with every task accounted for (or re-queued as new chunks)."""
        try:
            w.inflight.remove(chunk)
        except ValueError:
            pass
        self.sent.pop(chunk.seq, None)
        chunk.release()

    # -- what workers report ---------------------------------------------------------------
    def results(
        self,
        chunk: Chunk,
        offset: int,
        values: list[Any],
        failures: list[tuple[int, BaseException, str]],
        elapsed: float,
    ) -> None:
        """Outcomes of tasks ``offset ..`` of `chunk`: runs of results delivered whole."""
        job = chunk.job
        job.record(len(values), elapsed)
        n, s = self.fn_time.get(chunk.key, (0, 0.0))
        self.fn_time[chunk.key] = (n + len(values), s + elapsed)
        chunk.done = offset + len(values)  # first: a delivered list is the reader's
        if not failures:
            job.deliver(chunk.start + offset, values)
        else:
            bad = {pos: (exc, tb) for pos, exc, tb in failures}
            run = offset
            for pos in sorted(bad):
                if pos > run:
                    job.deliver(chunk.start + run, values[run - offset : pos - offset])
                exc, tb = bad[pos]
                self.task_failed(chunk, pos, _serialize.with_remote_traceback(exc, tb))
                run = pos + 1
            if run < offset + len(values):
                job.deliver(chunk.start + run, values[run - offset :])

    def task_failed(self, chunk: Chunk, pos: int, exc: BaseException) -> None:
        """Task `pos` of `chunk` failed: retry it if its budget allows, else report it."""
        if chunk.attempt < chunk.retries and not isinstance(exc, SerializationError):
            retry = self.piece(chunk, pos, pos + 1)
            retry.history = (*chunk.history, attempt_ended(exc))
            self.pending.appendleft(retry)
            self._stats["retries"] += 1
            return
        if chunk.history:
            attempts = [*chunk.history, attempt_ended(exc)]
            exc.add_note(
                f"gilfree: {len(attempts)} attempts were made (retries={chunk.retries}): "
                + "; ".join(f"{k}. {how}" for k, how in enumerate(attempts, 1))
            )
        chunk.job.fail(chunk.start + pos, exc)

    def load_failed(self, w: Worker, chunk: Chunk, message: str) -> None:
        """The worker could not unpickle `chunk`'s items."""
        if not chunk.by_value:
            # Pickled by reference but not importable there (a __main__ class
            # in a spawned worker): send it by value.
            again = [self.piece(chunk, 0, len(chunk.items), by_value=True)]
        elif len(chunk.items) > 1:  # find the one that fails
            again = [self.piece(chunk, k, k + 1) for k in range(len(chunk.items))]
        else:
            again = []
            chunk.job.fail(
                chunk.start,
                SerializationError(
                    f"argument of task {chunk.start} ({_serialize.describe(chunk.items[0])}) "
                    f"could not be unpickled in the worker: {message}",
                    what="argument",
                    index=chunk.start,
                ),
            )
        self.settle(w, chunk)  # after the re-pickling: its segments were still needed
        self.pending.extendleft(reversed(again))

    def unloadable(self, w: Worker, chunk: Chunk, exc: BaseException) -> None:
        """What the worker sent about `chunk` could not be unpickled here."""
        for pos in range(chunk.done, len(chunk.items)):
            err = SerializationError(
                f"the result of task {chunk.start + pos} could not be unpickled in the parent: "
                f"{type(exc).__name__}: {exc}",
                what="result",
                index=chunk.start + pos,
            )
            err.__cause__ = exc
            chunk.job.fail(chunk.start + pos, err)
        self.settle(w, chunk)

    def piece(self, chunk: Chunk, a: int, b: int, by_value: bool | None = None) -> Chunk:
        """Items a..b-1 of `chunk` as a fresh chunk with its own pickle and lease."""
        items = chunk.items[a:b]
        by_value = chunk.by_value if by_value is None else by_value
        try:
            blob, lease = self._arena.dumps(items, by_value=by_value)
        except Exception:  # pickled before, so this does not happen; be safe
            by_value = True
            blob, lease = self._arena.dumps(items, by_value=True)
        new = Chunk(
            chunk.job,
            chunk.start + a,
            items,
            blob,
            lease,
            chunk.fn,
            timeout=chunk.timeout,
            retries=chunk.retries,
            history=chunk.history,
            by_value=by_value,
        )
        new.deaths = chunk.deaths
        return new

    # -- deaths ------------------------------------------------------------------------------
    def recover(
        self,
        w: Worker,
        cause: Cause,
        culprit: tuple[int, int] | None,
        exitcode: int | None,
        stack: str,
    ) -> None:
        """Apply ``_recovery.recover`` to the chunks the dead worker `w` held."""
        held = [Held(c.seq, c.done, len(c.items), c.deaths) for c in w.inflight]
        by_seq = {c.seq: c for c in w.inflight}
        requeue: list[Chunk] = []
        for step in _recovery.recover(cause, culprit, held):
            chunk = by_seq[step.seq]
            if isinstance(step, Fail):
                index = chunk.start + step.pos
                item = _serialize.describe(chunk.items[step.pos])
                err: BaseException
                if step.why == "timeout":
                    err = _recovery.timeout_error(index, item, chunk.timeout, stack)
                    self._stats["timeouts"] += 1
                else:
                    err = _recovery.death_error(
                        w.pid, exitcode, index, item, stack, loading=step.why == "loading"
                    )
                self.task_failed(chunk, step.pos, err)
            else:
                again = self.piece(chunk, step.a, step.b)
                again.deaths = step.deaths
                requeue.append(again)
        for chunk in w.inflight:
            self.sent.pop(chunk.seq, None)
            chunk.release()
        w.inflight.clear()
        self.pending.extendleft(reversed(requeue))

    def withdraw_pending(self) -> None:
        """Drop the queued chunks whose jobs agree to it (shutdown with cancel_pending)."""
        queued = list(self.pending)
        self.pending.clear()
        for chunk in queued:
            if chunk.job.withdraw():
                chunk.release()
            else:
                self.pending.append(chunk)

    def fail_all(self, exc: BaseException) -> None:
        """Every task not yet done fails with `exc` (the pool broke or was killed)."""
        for chunk in [*self.sent.values(), *self.pending]:
            for pos in range(chunk.done, len(chunk.items)):
                try:
                    chunk.job.fail(chunk.start + pos, exc)
                except Exception:  # one job's sink must not keep the others waiting
                    pass
            chunk.release()
            if chunk.worker is not None:
                chunk.worker.inflight.clear()
        self.sent.clear()
        self.pending.clear()

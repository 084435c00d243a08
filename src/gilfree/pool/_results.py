"""The manager's handling of what workers send back: results, failures, load errors.

A mixin of ``ProcessPool`` (see ``_pool``): every method runs in the manager
thread and works on the pool's state.
"""

from __future__ import annotations

import pickle
from typing import Any

from .. import _serialize
from ..errors import SerializationError
from . import _wire
from ._procs import WorkerState
from ._records import Chunk, Worker


class ResultHandling:
    def _on_readable(self, w: Worker) -> None:
        for raw in w.reader.read():
            self._handle(w, raw)
        if w.reader.eof:  # it is exiting; its sentinel will say so
            self._unwatch(w.result_fd)

    def _handle(self, w: Worker, raw: bytes | bytearray) -> None:
        try:
            msg = pickle.loads(raw)
        except Exception as exc:
            self._unloadable_results(w, exc)
            return
        kind = msg[0]
        if kind == _wire.RESULT:
            self._on_result(w, *msg[1:])
        elif kind == _wire.LOADFAIL:
            self._on_loadfail(w, msg[1], msg[2])
        elif kind == _wire.RETIRE:
            w.state = WorkerState.RETIRING
            self.stats["recycled"] += 1

    def _on_result(
        self,
        w: Worker,
        seq: int,
        offset: int,
        values: list[Any],
        failures: list[tuple[int, BaseException, str]],
        elapsed: float,
        final: bool,
    ) -> None:
        chunk = self._chunks.get(seq)
        if chunk is None:
            return
        job = chunk.job
        job.record(len(values), elapsed)
        n, s = self._fn_time.get(chunk.key, (0, 0.0))
        self._fn_time[chunk.key] = (n + len(values), s + elapsed)
        if not failures:
            job.deliver(chunk.start + offset, values)
        else:
            bad = {pos: (exc, tb) for pos, exc, tb in failures}
            run_start = offset
            for pos in range(offset, offset + len(values)):
                if pos in bad:
                    if pos > run_start:
                        job.deliver(
                            chunk.start + run_start, values[run_start - offset : pos - offset]
                        )
                    exc, tb = bad[pos]
                    self._task_failed(chunk, pos, _serialize.with_remote_traceback(exc, tb))
                    run_start = pos + 1
            if run_start < offset + len(values):
                job.deliver(chunk.start + run_start, values[run_start - offset :])
        chunk.done = offset + len(values)
        if final:
            self._complete(w, chunk)

    def _complete(self, w: Worker, chunk: Chunk) -> None:
        try:
            w.inflight.remove(chunk)
        except ValueError:
            pass
        self._chunks.pop(chunk.seq, None)
        if w.state is WorkerState.RUNNING:
            self._free.append(w)

    def _task_failed(self, chunk: Chunk, pos: int, exc: BaseException) -> None:
        """Task `pos` of `chunk` failed: retry it if allowed, else report it."""
        job = chunk.job
        if chunk.attempt < job.options.retries and not isinstance(exc, SerializationError):
            retry = self._rechunk(chunk, pos, pos + 1)
            if retry is not None:
                retry.attempt = chunk.attempt + 1
                self._pending.appendleft(retry)
                self.stats["retries"] += 1
                return
        job.fail(chunk.start + pos, exc)

    def _rechunk(self, chunk: Chunk, a: int, b: int, by_value: bool | None = None) -> Chunk | None:
        """Items a..b-1 of `chunk` as a fresh chunk (for requeueing elsewhere)."""
        if a >= b:
            return None
        items = chunk.items[a:b]
        by_value = chunk.by_value if by_value is None else by_value
        try:
            blob = self._dumps(items, by_value=by_value)
        except Exception:  # pickled before, so this does not happen; be safe
            by_value = True
            blob = self._dumps(items, by_value=True)
        new = Chunk(chunk.job, chunk.start + a, items, blob, chunk.key, chunk.attempt, by_value)
        new.deaths = chunk.deaths
        return new

    def _on_loadfail(self, w: Worker, seq: int, message: str) -> None:
        chunk = self._chunks.get(seq)
        if chunk is None:
            return
        self._complete(w, chunk)
        if not chunk.by_value:
            # Pickled by reference but not importable there (a __main__ class
            # in a spawned worker): send it by value.
            again = self._rechunk(chunk, 0, len(chunk.items), by_value=True)
            assert again is not None
            self._pending.appendleft(again)
        elif len(chunk.items) > 1:
            for k in reversed(range(len(chunk.items))):
                single = self._rechunk(chunk, k, k + 1)
                assert single is not None
                self._pending.appendleft(single)
        else:
            chunk.job.fail(
                chunk.start,
                SerializationError(
                    f"argument of task {chunk.start} ({_serialize.describe(chunk.items[0])}) "
                    f"could not be unpickled in the worker: {message}",
                    what="argument",
                    index=chunk.start,
                ),
            )

    def _unloadable_results(self, w: Worker, exc: Exception) -> None:
        if not w.inflight:
            return
        chunk = w.inflight[0]
        for pos in range(chunk.done, len(chunk.items)):
            chunk.job.fail(
                chunk.start + pos,
                SerializationError(
                    f"the result of task {chunk.start + pos} could not be unpickled in the parent: "
                    f"{type(exc).__name__}: {exc}",
                    what="result",
                    index=chunk.start + pos,
                ),
            )
        self._complete(w, chunk)

"""Which of the dask backend's tasks are on the cluster, which wait, which go alone.

``workers=N`` below the cluster's threads caps how many of our tasks are on the
cluster at once (it cannot resize the cluster); chunks over the cap wait, in order. At
or above the cluster's size a cap would only stop the scheduler from queueing the next
tasks (as "auto" passes ``workers=threads``): no cap then.

One-item tasks suspected of killing their worker (see "Worker deaths" in
``_dask_work``) each go alone: while there are any, new work waits; once none of our
tasks is left on the cluster, the first suspect goes by itself, and ordinary work
resumes after the last.

A ``Flight`` holds that state and no Dask object: every method is called with the
backend's lock held, and does no I/O.
"""

from __future__ import annotations

import threading
from collections import deque

from ._base import Job
from ._dask_work import _Chunk, _Work


class Flight:
    def __init__(self, lock: threading.Lock, cap: int | None) -> None:
        self.idle = threading.Condition(lock)  # notified when nothing is left
        self.chunks: dict[str, _Chunk] = {}  # key -> chunk on the cluster
        self._cap = cap
        self.waiting: deque[_Work] = deque()
        self._active = 0  # tasks on the cluster or being sent, counted against the cap
        # One-item tasks suspected of killing their worker, each to be rerun alone; while
        # there are any, new work waits in waiting. isolating: one is on the cluster.
        self.suspects: deque[_Work] = deque()
        self.isolating = False
        self.sends = 0  # tasks sent so far (see _Chunk)

    def empty(self) -> bool:
        return not (self.chunks or self.waiting or self.suspects)

    def take_slot(self, work: _Work) -> bool:
        """A slot for ``work`` (True: send it now), or it waits in line (False)."""
        held = self.suspects or self.isolating
        if held or (self._cap is not None and self._active >= self._cap):
            self.waiting.append(work)
            return False
        self._active += 1
        return True

    def release(self, n: int = 1) -> list[_Work]:
        """Give back ``n`` slots of the cap; return the work to send into them now (each
        with its slot taken)."""
        self._active -= n
        ready = []
        if self.suspects or self.isolating:
            if not self.isolating and self._active == 0:
                ready.append(self.suspects.popleft())
                self.isolating = True
                self._active += 1
        else:
            while self.waiting and (self._cap is None or self._active < self._cap):
                ready.append(self.waiting.popleft())
                self._active += 1
        if self.empty():
            self.idle.notify_all()
        return ready

    def sent(self, chunk: _Chunk) -> None:
        """``chunk`` is going out now (its slot is taken)."""
        chunk.first = not self.chunks
        self.sends += 1
        chunk.sends = self.sends
        self.chunks[chunk.key] = chunk

    def alone(self, chunk: _Chunk) -> bool:
        """No other task of ours was on the cluster while ``chunk`` was."""
        return chunk.first and chunk.sends == self.sends

    def forget(self, chunk: _Chunk) -> bool:
        """``chunk`` settled. False: it was already forgotten (cancelled), its slot given
        back; True: its slot is to be released."""
        if self.chunks.pop(chunk.key, None) is None:
            return False
        if chunk.work.isolated:
            self.isolating = False
        return True

    def drop(self, job: Job) -> list[_Chunk]:
        """Forget ``job`` (cancelled): its waiting work, and its chunks on the cluster,
        whose slots are to be released."""
        chunks = [c for c in self.chunks.values() if c.job is job]
        for c in chunks:
            del self.chunks[c.key]
            if c.work.isolated:
                self.isolating = False
        self.waiting = deque(w for w in self.waiting if w.job is not job)
        self.suspects = deque(w for w in self.suspects if w.job is not job)
        return chunks

    def take_all(self) -> list[_Chunk | _Work]:
        """Forget everything, in flight or waiting, and return it."""
        held: list[_Chunk | _Work] = [*self.chunks.values(), *self.waiting, *self.suspects]
        self.chunks.clear()
        self.waiting.clear()
        self.suspects.clear()
        self.isolating = False
        self._active = 0
        self.idle.notify_all()
        return held

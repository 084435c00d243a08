"""The dask backend's units of work, and what their outcomes turn into.

Errors, retries and timeouts:

* A task's exception keeps its original type; the worker-side traceback (text) is its
  ``__cause__``, a :class:`gilfree.errors.RemoteTraceback`.
* ``retries=N`` is Dask's own ``retries=``: a chunk of one item is submitted with
  ``retries=N`` and raises on failure, so Dask reruns it (on any worker). In a chunk of
  several items a failed item is resubmitted alone, as such a one-item task with
  ``retries=N-1``, so its neighbours never run twice.
* ``timeout=`` is per item and measured on the worker, from the moment the call starts
  (time queued on the cluster does not count): with a timeout the runner calls ``fn`` in
  a helper thread and waits on it. Past the timeout the item fails with
  :class:`gilfree.TaskTimeout` carrying that thread's stack, and the chunk goes on with
  its next item. **Dask cannot interrupt a running Python call in a worker thread: the
  timed-out call runs on in its abandoned (daemon) thread on the worker, using CPU, and
  its result is discarded.** Each call under a timeout costs one thread start on the
  worker (~0.1 ms). A call that holds the GIL forever (a C loop that never releases it)
  stalls the whole worker process, timeouts included.

Worker deaths. Dask reruns a task whose worker died on another worker, and gives up with
``KilledWorker`` once ``distributed.scheduler.allowed-failures`` (3) + 1 workers died
under it. Two things make that unfit to blame one item:

* ``KilledWorker`` blames every task that was running on each dead worker: an innocent
  task that shared workers with the culprit (one worker runs several tasks at once)
  gets it too, and a chunk holds many items.
* The runner, the function and large arrays are *scattered* data: they live only in
  the memory of the workers that got them. A culprit that kills one worker after
  another kills every holder; the scheduler then forgets the data and *cancels* every
  task that needs it, queued or running. (That is where innocent items failed with
  "Dask cancelled the task".)

So: each scattered future is used only while Dask says it is held, and scattered
again otherwise. A task given up with ``KilledWorker``, or cancelled by the cluster, is
split: every item of a chunk goes again as a one-item task; a one-item task that shared
the cluster with other tasks of ours becomes a *suspect* and runs again *alone* (new
work waits until no task of ours is out there, then each suspect goes by itself). A
one-item task that died alone killed its workers: it fails with :class:`gilfree
.WorkerDied`, or runs alone again while it has ``retries`` left (``after_death``).
Innocent items thus never fail, and the culprit is found after a few worker restarts
more than plain ``client.map`` needs. Items of a chunk that ran before the death run
again.
"""

from __future__ import annotations

from typing import Any

from ..errors import RemoteTraceback, SerializationError, TaskTimeout, WorkerDied
from ._base import Job
from ._dask_runner import _BAD_RESULT, _OK, _RAISED, _TIMEOUT, _TIMEOUT_MARK

# A future in one of these states has settled: it will not change again by itself.
_SETTLED = ("finished", "error", "cancelled")


class _Work:
    """Consecutive items of one job, to be sent as one Dask task.

    ``retries``: Dask reruns left for a task that raises (``strict`` one-item tasks
    raise; see ``_run_chunk``), and the reruns left after its worker died.
    ``isolated``: sent only when no other task of ours is on the cluster (a suspect,
    see "Worker deaths" above).
    """

    __slots__ = ("isolated", "items", "job", "retries", "start", "strict")

    def __init__(
        self,
        job: Job,
        start: int,
        items: list[Any],
        *,
        retries: int,
        strict: bool,
        isolated: bool = False,
    ) -> None:
        self.job = job
        self.start = start
        self.items = items
        self.retries = retries
        self.strict = strict
        self.isolated = isolated

    def part(self, k: int, **changes: Any) -> _Work:
        """Item ``k`` alone, as a one-item task."""
        fields = {
            "retries": self.retries,
            "strict": self.retries > 0,
            "isolated": self.isolated,
            **changes,
        }
        return _Work(self.job, self.start + k, [self.items[k]], **fields)


class _Chunk:
    """One Dask task in flight.

    ``first``: no other task of ours was in flight when it was sent; ``sends``: the
    backend's count of sent tasks just after it went. Both still true when it settles:
    it was alone on the cluster (see "Worker deaths" above).
    """

    __slots__ = ("first", "future", "key", "sends", "work")

    def __init__(self, key: str, work: _Work) -> None:
        self.key = key
        self.work = work
        self.first = False
        self.sends = 0
        self.future: Any = None

    @property
    def job(self) -> Job:
        return self.work.job

    @property
    def start(self) -> int:
        return self.work.start

    @property
    def items(self) -> list[Any]:
        return self.work.items


def after_death(work: _Work, killed: BaseException | None, alone: bool) -> list[_Work] | WorkerDied:
    """Workers died under ``work``: Dask gave up on it (``killed``, a KilledWorker)
    or dropped it with lost scattered data (``killed`` is None); ``alone``: no other
    task of ours was on the cluster meanwhile. What to send again, or the error that
    blames it.

    Several items: each is sent again as a one-item task. One item that was not
    alone on the cluster, or whose data was lost (perhaps before it started): a
    suspect, sent again alone. One item that Dask gave up on while it was alone, or
    a suspect whose workers died again: it killed them. It fails with WorkerDied,
    or is sent alone again while it has retries left.
    """
    if len(work.items) > 1:
        return [work.part(k, isolated=False) for k in range(len(work.items))]
    if not work.isolated and (killed is None or not alone):
        return [work.part(0, isolated=True)]
    if work.retries > 0:
        return [work.part(0, isolated=True, retries=work.retries - 1)]
    index = work.start
    reported = (
        f"Dask reported {type(killed).__name__}: {killed}"
        if killed is not None
        else "Dask cancelled its task: every worker holding data it needed died with it"
    )
    err = WorkerDied(
        f"task {index} ({_short(work.items[0])}): its Dask worker died while running "
        f"it, with no other task of this map on the cluster; {reported}",
        index=index,
        item=_short(work.items[0]),
    )
    err.__cause__ = killed
    return err


def deliver(chunk: _Chunk, outcomes: list[tuple[Any, ...]]) -> list[_Work]:
    """Hand a chunk's per-item outcomes to its job; return the failed items that have
    retries left, each to be sent again alone (Dask's retries take the remaining
    attempts)."""
    job, start = chunk.job, chunk.start
    again: list[_Work] = []
    run: list[Any] = []
    first = start
    seconds = 0.0
    for k, (kind, value, text, took) in enumerate(outcomes):
        seconds += took
        if kind == _OK:
            run.append(value)
            continue
        if run:
            job.deliver(first, run)
            run = []
        first = start + k + 1
        if kind != _BAD_RESULT and chunk.work.retries > 0 and not chunk.work.strict:
            again.append(chunk.work.part(k, retries=chunk.work.retries - 1, strict=True))
            continue
        job.fail(start + k, outcome_error(kind, value, text, start + k, job))
    if run:
        job.deliver(first, run)
    job.record(len(outcomes), seconds)
    return again


def outcome_error(kind: int, value: Any, text: str, index: int, job: Job) -> BaseException:
    """The exception for item ``index``'s failed outcome (``kind`` from the runner)."""
    if kind == _TIMEOUT:
        timeout = job.options.timeout
        return TaskTimeout(
            f"task {index} ran past its timeout of {timeout} s on a Dask worker. Dask "
            "cannot interrupt a running call: it runs on in an abandoned thread on the "
            f"worker and its result will be dropped. Its stack when given up:\n{text}",
            index=index,
            timeout=timeout,
            stack=text,
        )
    if kind == _BAD_RESULT:
        return SerializationError(
            f"the result of task {index} could not be pickled on the worker: {value}",
            what="result",
            index=index,
        )
    value.__cause__ = RemoteTraceback(text)
    return value


def fail_chunk(chunk: _Chunk, exc: BaseException, text: str) -> None:
    """The task as a whole failed: every item of it fails with ``exc``."""
    job = chunk.job
    for k in range(len(chunk.items)):
        index = chunk.start + k
        if isinstance(exc, TimeoutError) and exc.args[:1] == (_TIMEOUT_MARK,):
            err = outcome_error(_TIMEOUT, None, exc.args[1], index, job)
        elif text:
            err = outcome_error(_RAISED, exc, text, index, job)
        else:
            err = exc
        job.fail(index, err)


def _short(item: Any, limit: int = 80) -> str:
    try:
        text = repr(item)
    except Exception:
        text = f"<{type(item).__qualname__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Running one chunk in this process: shared by the serial and thread backends."""

from __future__ import annotations

import time
from typing import Any

from ._base import Job


def run_items(job: Job, start: int, items: list[Any], attempt: int = 0) -> None:
    """Call job.fn on each item, delivering runs of successes and failing the rest.

    A task that raises is retried here up to ``options.retries`` more times.
    KeyboardInterrupt and SystemExit are not task failures in-process: they
    propagate to the caller, as they would from a plain loop.
    """
    fn = job.fn
    retries = job.options.retries
    values: list[Any] = []
    first = start  # index of values[0]
    t0 = time.perf_counter()
    for k, item in enumerate(items):
        tries = attempt
        while True:
            try:
                values.append(fn(item))
                break
            except Exception as exc:
                if tries < retries:
                    tries += 1
                    continue
                if values:
                    job.deliver(first, values)
                    values = []
                job.fail(start + k, exc)
                first = start + k + 1
                break
    if values:
        job.deliver(first, values)
    job.record(len(items), time.perf_counter() - t0)

"""``gilfree advise MODULE:FUNC [INPUT] [--json]``: the plan for a function, explained.

The samples are the first few items of INPUT (default: stdin). The probe
calls the function on them for real, in order, as many as it needs within
``--budget`` seconds, in a child process (``_probe``): a sample that crashes
or hangs is reported in the output, and the command lives on.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from typing import Any

from . import UsageError
from ._jsonl import count_lines, iter_lines, parse_item
from ._placement import ADDRESS_ENV, WHY, Placement, check_dask, from_plan
from ._probe import probe


def advise(
    target: str,
    *,
    input_path: str | None,
    samples: int,
    budget: float,
    workers: int | None,
    address: str | None,
    as_json: bool,
) -> int:
    items, total = _read_samples(input_path, samples)
    if not items:
        where = input_path or "stdin"
        raise UsageError(f"no items to probe with: {where} has no JSON lines")

    address = address or os.environ.get(ADDRESS_ENV) or None
    if address is not None:
        check_dask(address)
    probed = probe(
        target,
        list(enumerate(items)),
        budget=budget,
        total=total,
        workers=workers,
        address=address,
    )
    if probed.failure is not None or probed.plan is None:
        plan, text = _crashed(target, len(items), probed.failure or "no plan came back", workers)
    else:
        plan, text = probed.plan, probed.explanation
        placed = from_plan(plan["backend"], plan["workers"], Placement("auto", workers, address))
        if placed.backend != plan["backend"]:
            plan["gilfree_run"] = {"backend": placed.backend, "workers": placed.workers}
            text += (
                f"\n\ngilfree run runs it on {placed.workers} worker "
                f"process{'es' if placed.workers != 1 else ''} instead: {WHY}."
            )
    print(json.dumps(plan, indent=2, default=str) if as_json else text)
    return 0


def _crashed(target: str, n: int, failure: str, workers: int | None) -> tuple[dict[str, Any], str]:
    """The plan when probing did not come back: processes, which survive what happened."""
    from .._options import usable_cpus

    workers = workers or usable_cpus()
    reasons = [
        f"Probing {target} on the first {n} items failed: {failure}.",
        "On process workers a call that crashes or hangs fails alone (WorkerDied, or "
        "TaskTimeout with a timeout) and the other items still run.",
    ]
    plan = {
        "function": target,
        "backend": "process",
        "workers": workers,
        "chunksize": None,
        "reasons": reasons,
        "probe_error": failure,
        "probe_calls": 0,
    }
    text = "\n".join(
        [f"Plan for {target}: processes ({workers} workers).", "", "Why:"]
        + [f"  - {r}" for r in reasons]
    )
    return plan, text


def _read_samples(input_path: str | None, n: int) -> tuple[list[Any], int | None]:
    if input_path is None or input_path == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(
                "advise needs sample items: give INPUT (a JSON Lines file) or pipe lines on stdin"
            )
        source = open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115
        total = None
    else:
        try:
            source = open(input_path, "rb")  # noqa: SIM115 - closed below
            total = count_lines(input_path) if os.path.isfile(input_path) else None
        except (OSError, IsADirectoryError) as exc:
            raise UsageError(f"cannot read input {input_path!r}: {exc.strerror}")
    items = []
    with source:
        for index, raw in itertools.islice(iter_lines(source), n):
            ok, value = parse_item(raw)
            if not ok:
                raise UsageError(f"line {index + 1} of {input_path or 'stdin'}: {value}")
            items.append(value)
    return items, total

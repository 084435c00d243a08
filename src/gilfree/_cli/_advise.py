"""``gilfree advise MODULE:FUNC [INPUT] [--json]``: the plan for a function, explained.

The samples are the first few items of INPUT (default: stdin). The probe
calls the function on them for real, within ``--budget`` seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from . import UsageError
from ._jsonl import count_lines, iter_lines, parse_item


def advise(
    fn: Callable[[Any], Any],
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

    from ..planner import advise as plan_for

    plan = plan_for(fn, items, budget=budget, total=total, address=address, workers=workers)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2, default=str))
    else:
        print(plan.explain())
    return 0


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

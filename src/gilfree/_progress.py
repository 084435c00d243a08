"""The progress bar: ``progress=True`` in the API, and ``gilfree run`` on a terminal.

``gilfree run`` shows it only when stderr is a terminal (``make_bar``), so logs
and pipes never collect carriage returns and escape codes; ``progress=True``
always shows it, since the caller asked.
"""

from __future__ import annotations

import sys
from typing import Any


class Silent:
    """Stands in for the bar when stderr is not a terminal."""

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None


class Bar:
    """A rich progress bar: done/total, rate, elapsed and time left."""

    def __init__(self, total: int | None, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                if speed is None:
                    return Text("-- items/s", style="progress.data.speed")
                return Text(f"{speed:,.1f} items/s", style="progress.data.speed")

        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("\u2022"),
            RateColumn(),
            TextColumn("\u2022"),
            TimeElapsedColumn(),
            TextColumn("elapsed \u2022"),
            TimeRemainingColumn(),
            TextColumn("left"),
            console=Console(file=sys.stderr),
            transient=False,
            # Rate over the last minute, so the estimate follows a run that speeds up.
            speed_estimate_period=60.0,
        )
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self) -> Bar:
        return self.__enter__()

    def close(self) -> None:
        self.__exit__()

    def advance(self, n: int = 1) -> None:
        # rich's Progress takes its own lock: safe from the input-feeding thread.
        self._progress.advance(self._task, n)


def make_bar(total: int | None, description: str) -> Bar | Silent:
    if sys.stderr is not None and sys.stderr.isatty():
        return Bar(total, description)
    return Silent()

"""Show bench results: a rich table, JSON, or a matplotlib chart of speedups."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .._usage import UsageError
from .runner import BACKENDS, WorkloadResult

#: The multiplication sign of speedups ("2.5" + TIMES), escaped for ruff's RUF001.
TIMES = "\u00d7"

#: Colours per backend, shared by the plot (colour-blind-safe Okabe-Ito hues).
COLOURS = {"thread": "#0072B2", "process": "#E69F00", "auto": "#009E73"}


class Status:
    """A one-line 'now running' spinner on stderr when it is a terminal."""

    def __init__(self) -> None:
        self._status: Any = None
        if sys.stderr.isatty():
            from rich.console import Console

            self._status = Console(stderr=True).status("starting")

    def __enter__(self) -> Status:
        if self._status is not None:
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"bench {text}")


def _load(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    return "" if load is None else f", load average {load:.1f}"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}{TIMES}" if ratio < 10 else f"{ratio:.0f}{TIMES}"


def _cell(result: WorkloadResult, backend: str, notes: list[str]) -> str:
    timing = result.timings.get(backend)
    if timing is None:
        return ""
    if timing.error:
        note = f"{backend}: {timing.error}"
        if note not in notes:  # the same failure on every workload is one note
            notes.append(note)
        return f"[red]failed ({notes.index(note) + 1})[/red]"
    if timing.seconds is None:
        return ""
    text = format_seconds(timing.seconds)
    if backend == "serial":
        return text
    gain = result.speedup(backend)
    if gain is None:
        return text
    style = "green" if gain >= 1.2 else "red" if gain < 0.8 else ""
    ratio = format_ratio(gain)
    return f"{text} [{style}]{ratio}[/{style}]" if style else f"{text} {ratio}"


def print_table(
    results: Sequence[WorkloadResult], machine: dict[str, Any], *, quick: bool, repeat: int
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="gilfree bench" + (" --quick" if quick else ""),
        caption=(
            f"time of one map (best of {repeat}); {TIMES} = speedup over serial. "
            f"{machine['cpus']} CPUs, {machine['cpu_model']}, {machine['python']}"
            f"{_load(machine)}"
        ),
    )
    table.add_column("workload", no_wrap=True)
    table.add_column("tasks", justify="right")
    for backend in BACKENDS:
        table.add_column(backend, justify="right")
    table.add_column("auto ran on")
    notes: list[str] = []
    for r in results:
        if r.skipped:
            table.add_row(r.description, "", f"[dim]skipped: {r.skipped}[/dim]")
            continue
        auto = r.timings.get("auto")
        used = ""
        if auto is not None and auto.used:
            used = auto.used
            if auto.workers and auto.used != "serial":
                used += f", {auto.workers} workers"
        table.add_row(r.description, str(r.tasks), *(_cell(r, b, notes) for b in BACKENDS), used)
    # Off a terminal rich assumes 80 columns, which would wrap every cell.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    console.print(table)
    for number, note in enumerate(notes, 1):
        console.print(f"({number}) {note}", highlight=False, markup=False)


def to_json(
    results: Sequence[WorkloadResult], machine: dict[str, Any], *, quick: bool, repeat: int
) -> dict[str, Any]:
    return {
        "quick": quick,
        "repeat": repeat,
        "machine": machine,
        "workloads": [r.to_dict() for r in results],
    }


def print_json(
    results: Sequence[WorkloadResult], machine: dict[str, Any], *, quick: bool, repeat: int
) -> None:
    print(json.dumps(to_json(results, machine, quick=quick, repeat=repeat), indent=2))


def check_plot_target(path: str) -> None:
    """Fail before the (long) run, not after it, when the plot cannot be written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'gilfree[plot]'")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write plot {path!r}: no folder {folder!r}")
    if not path.lower().endswith((".png", ".svg", ".pdf")):
        raise UsageError(f"--plot {path!r}: use a .png, .svg or .pdf file name")


def plot(
    results: Sequence[WorkloadResult], machine: dict[str, Any], path: str, *, quick: bool
) -> None:
    """Grouped horizontal bars: speedup over serial per workload, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if not r.skipped and r.serial]
    backends = [b for b in BACKENDS if b != "serial"]
    height = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(9, 1.0 + 1.05 * max(1, len(shown))), dpi=150)
    speedups: list[float] = []
    for j, backend in enumerate(backends):
        for i, r in enumerate(shown):
            y = i + (j - (len(backends) - 1) / 2) * height
            gain = r.speedup(backend)
            timing = r.timings.get(backend)
            if gain is None:
                why = "failed" if timing and timing.error else "not run"
                ax.text(1.0, y, f"  {backend} {why}", va="center", fontsize=7.5, color="#b00")
                continue
            speedups.append(gain)
            # Bars grow from 1x: right is faster than the loop, left is slower.
            ax.barh(y, gain - 1, height=height * 0.92, left=1, color=COLOURS[backend])
            note = format_ratio(gain)
            if backend == "auto" and timing is not None and timing.used:
                note += f" ({timing.used})"
            if gain >= 1:
                ax.text(gain * 1.04, y, note, va="center", ha="left", fontsize=7.5)
            else:
                ax.text(gain / 1.04, y, note, va="center", ha="right", fontsize=7.5)
    ax.set_xscale("log")
    low = min([*speedups, 0.5]) / 3.0
    high = max([*speedups, 2.0]) * 2.2
    ax.set_xlim(low, high)
    ax.axvline(1.0, color="#333", linewidth=1, linestyle="--")
    ax.text(1.0, len(shown) - 0.45, f" serial = 1{TIMES}", fontsize=8, color="#333", va="bottom")
    ax.text(
        0.01, 0.01, "\u2190 slower than a loop", transform=ax.transAxes, fontsize=8, color="#666"
    )
    ax.text(
        0.99, 0.01, "faster \u2192", transform=ax.transAxes, fontsize=8, color="#666", ha="right"
    )
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([_label(r) for r in shown], fontsize=8.5)
    ax.invert_yaxis()
    ax.set_ylim(len(shown) - 0.4, -0.6)
    ax.set_xlabel("speedup over serial (log scale)")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}{TIMES}"))
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    title = "gilfree bench" + (" --quick" if quick else "")
    ax.set_title(
        f"{title}: speedup over a plain loop\n"
        f"{machine['cpus']} CPUs, {machine['cpu_model']}, {machine['python']}, {machine['date']}"
        f"{_load(machine)}",
        fontsize=10,
    )
    from matplotlib.patches import Patch

    handles = [Patch(color=COLOURS[b], label=b) for b in backends]
    ax.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _label(result: WorkloadResult) -> str:
    """A workload's label on the plot's axis: what it is, its size, its serial time."""
    serial = result.serial
    timed = "not run" if serial is None else format_seconds(serial)
    return f"{result.description}\n{result.tasks} tasks, serial {timed}"

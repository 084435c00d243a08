"""``gilfree bench``: run the suite, then report it (the runner times, the report prints)."""

from __future__ import annotations

import sys

from . import report
from .runner import machine_info, run_suite, select


def main(
    *, quick: bool, plot: str | None, as_json: bool, repeat: int | None, only: str | None = None
) -> int:
    """``gilfree bench``: run the suite, print a table (or JSON), draw the plot."""
    workloads = select(only)
    if plot is not None:
        report.check_plot_target(plot)
    runs = repeat or (1 if quick else 3)
    status = report.Status()
    with status:
        results = run_suite(quick=quick, repeat=runs, workloads=workloads, report=status.update)
    machine = machine_info()
    if as_json:
        report.print_json(results, machine, quick=quick, repeat=runs)
    else:
        report.print_table(results, machine, quick=quick, repeat=runs)
    if plot is not None:
        report.plot(results, machine, plot, quick=quick)
        print(f"gilfree: plot written to {plot}", file=sys.stderr)
    failed = any(t.error for r in results for t in r.timings.values())
    return 1 if failed else 0

"""The built-in benchmark suite behind ``gilfree bench``.

* ``workloads`` -- the task functions and the suite (importable by other scripts)
* ``runner``    -- times each workload on serial, thread, process and auto
* ``report``    -- the table, the JSON and the plot
* ``command``   -- ``gilfree bench``: run the suite, then report it
"""

from __future__ import annotations

from .runner import BACKENDS, machine_info, run_suite
from .workloads import SUITE, Workload

__all__ = ["BACKENDS", "SUITE", "Workload", "machine_info", "run_suite"]

"""The planner: read a function's bytecode, probe it on real samples, and choose
serial, threads, processes or Dask by predicting each one's time.

* ``_bytecode`` -- what the code calls (I/O, GIL-releasing C, pure-Python loops),
  from the calls named in ``_calls`` and the instructions read by ``_opcodes``;
* ``_probe`` -- what a few real calls measure (time, CPU share, 2-thread scaling, sizes),
  in parts: ``_probe_result``, ``_probe_phases``, ``_probe_sizes``, ``_probe_worker``;
* ``_machine`` -- what processes cost on this machine (measured once, cached on disk);
* ``_features`` -- what the policy looks at;
* ``_costs`` -- predicted time of a job on each backend;
* ``_model`` -- the policy, a pure function ``choose(Features) -> Plan``;
* ``_plan`` -- the Plan and its explanation;
* ``_advise`` -- ``advise``: all of the above, with measurements cached per function.
"""

from ._advise import advise, clear_cache, sample_indices
from ._bytecode import Finding
from ._features import Features
from ._model import choose
from ._plan import Plan, Profile

__all__ = [
    "Features",
    "Finding",
    "Plan",
    "Profile",
    "advise",
    "choose",
    "clear_cache",
    "sample_indices",
]

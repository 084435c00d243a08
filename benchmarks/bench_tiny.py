"""200,000 tiny tasks (``x * x``): gilfree against a plain loop, first call included.

    python benchmarks/bench_tiny.py [--repeat N] [--items N]

Issue 11's target: ``backend="auto"`` at most 1.5x the plain loop *including
the probe*, which only a fresh process shows (the planner caches what it
measured of a function). So each repetition is a fresh interpreter that
imports gilfree (not timed: ``import gilfree`` is what every user pays
anyway), builds the input, then times, in turn:

* ``loop``     ``[sq(x) for x in data]``, the plain loop (the reference: timed
               first and again last, the better of the two);
* ``auto 1st`` ``gilfree.map(sq, data)``: lazy imports, probe, plan, the job;
* ``auto 2nd`` the same call again (the plan now comes from the cache);
* ``serial``   ``gilfree.map(sq, data, backend="serial")``;
* ``mp.Pool``  ``multiprocessing.Pool().map(sq, data)``, opened and closed;
* ``joblib``   ``Parallel(n_jobs=-1)(delayed(sq)(x) for x in data)`` (if installed).

The order of the contenders after ``auto 1st`` (which must come first) rotates
from one repetition to the next. Prints each contender's time over the loop's
in the same interpreter: the median and the min over the repetitions, and the
load average. Run it with .pyc files present (not under PYTHONDONTWRITEBYTECODE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import gilfree

N, ORDER = int(sys.argv[1]), sys.argv[2].split(",")


def sq(x):
    return x * x


data = list(range(N))
expected = [x * x for x in data]


def loop():
    return [sq(x) for x in data]


def auto():
    return gilfree.map(sq, data)


def serial():
    return gilfree.map(sq, data, backend="serial")


def mp_pool():
    import multiprocessing

    with multiprocessing.Pool() as pool:
        return pool.map(sq, data)


def joblib_parallel():
    from joblib import Parallel, delayed

    return Parallel(n_jobs=-1)(delayed(sq)(x) for x in data)


RUN = {"loop": loop, "loop again": loop, "auto 1st": auto, "auto 2nd": auto, "serial": serial,
       "mp.Pool": mp_pool, "joblib": joblib_parallel}
times = {}
for name in ORDER:
    t0 = time.perf_counter()
    out = RUN[name]()
    times[name] = time.perf_counter() - t0
    assert out == expected, name
print(json.dumps(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=9, help="fresh interpreters (>= 7)")
    parser.add_argument("--items", type=int, default=200_000)
    args = parser.parse_args()
    try:
        import joblib  # noqa: F401

        peers = ["auto 2nd", "serial", "mp.Pool", "joblib"]
    except ImportError:
        peers = ["auto 2nd", "serial", "mp.Pool"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    ratios: dict[str, list[float]] = {}
    loops: list[float] = []
    loads = []
    for rep in range(args.repeat):
        # auto's first call has to be the first gilfree call of the process;
        # the loop runs once before it too, so that both find the list warm.
        k = rep % len(peers)
        order = ["loop", "auto 1st", *peers[k:], *peers[:k], "loop again"]
        loads.append(os.getloadavg()[0])
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.items), ",".join(order)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        times = json.loads(out.stdout.strip().splitlines()[-1])
        # The reference: the better of the loop before and after the others
        # (one reading alone caught a busy moment of a shared machine too often).
        loop = times["loop"] = min(times["loop"], times.pop("loop again"))
        loops.append(loop)
        for name, t in times.items():
            ratios.setdefault(name, []).append(t / loop)
    print(
        f"{args.items:,} x*x, {args.repeat} fresh interpreters, Python "
        f"{sys.version.split()[0]}, load average {min(loads):.1f}-{max(loads):.1f}; "
        f"plain loop median {statistics.median(loops) * 1e3:.1f} ms"
    )
    print(f"{'':10} {'median':>8} {'min':>8}   (time / plain loop in the same interpreter)")
    for name in ["loop", "auto 1st", "auto 2nd", "serial", "mp.Pool", "joblib"]:
        if name in ratios:
            r = ratios[name]
            print(f"{name:10} {statistics.median(r):7.2f}x {min(r):7.2f}x")


if __name__ == "__main__":
    main()

"""The gilfree bench suite through other pools, side by side, in one run.

    python benchmarks/peers.py [--quick] [--repeat N] [--only cpu,io] [--out FILE.md]

Runs every workload of ``gilfree.bench.workloads`` through gilfree (``auto``,
and each of serial/thread/process so that the best gilfree backend is known)
and through multiprocessing.Pool, ProcessPoolExecutor, ThreadPoolExecutor,
joblib, mpire and pebble, each used the way its documentation shows, with its
defaults: no peer is tuned by hand, and neither is gilfree. Each time is
one pool opened, mapped over the whole input and closed: the best of --repeat
rounds, each round running every contender once.
Every result list is checked against a plain loop's.

Prints a Markdown table of times and ratios (peer time / gilfree time: above
1 means gilfree was faster) and writes it, with the date and the machine, to
``benchmarks/peers_results.md`` (or --out).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gilfree.bench.runner import machine_info, time_gilfree
from gilfree.bench.workloads import SUITE, Workload

Runner = Callable[[Callable[[Any], Any], list[Any], int], list[Any]]

GILFREE_BACKENDS = ("serial", "thread", "process")


# ---------------------------------------------------------------- the peers


def mp_pool(fn: Callable[[Any], Any], items: list[Any], cpus: int) -> list[Any]:
    with multiprocessing.Pool(cpus) as pool:
        return pool.map(fn, items)  # chunksize: its own heuristic (len / 4 / workers)


def process_pool_executor(fn: Callable[[Any], Any], items: list[Any], cpus: int) -> list[Any]:
    with concurrent.futures.ProcessPoolExecutor(cpus) as executor:
        return list(executor.map(fn, items))  # chunksize=1, the default


def thread_pool_executor(fn: Callable[[Any], Any], items: list[Any], cpus: int) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor() as executor:  # min(32, cpus + 4) threads
        return list(executor.map(fn, items))


def joblib_parallel(fn: Callable[[Any], Any], items: list[Any], cpus: int) -> list[Any]:
    from joblib import Parallel, delayed

    # loky processes, automatic batching, large arrays memory-mapped.
    return Parallel(n_jobs=cpus)(delayed(fn)(x) for x in items)


def mpire_pool(fn: Callable[[Any], Any], items: list[Any], cpus: int) -> list[Any]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=cpus) as pool:
        # mpire unpacks tuple items into arguments: wrap each in a 1-tuple.
        return pool.map(fn, [(x,) for x in items], progress_bar=False)


def pebble_pool(fn: Callable[[Any], Any], items: list[Any], cpus: int) -> list[Any]:
    from pebble import ProcessPool

    with ProcessPool(max_workers=cpus) as pool:
        return list(pool.map(fn, items).result())  # chunksize=1, the default


PEERS: dict[str, Runner] = {
    "multiprocessing.Pool": mp_pool,
    "ProcessPoolExecutor": process_pool_executor,
    "ThreadPoolExecutor": thread_pool_executor,
    "joblib": joblib_parallel,
    "mpire": mpire_pool,
    "pebble": pebble_pool,
}


# ---------------------------------------------------------------- measuring


def timed(run: Callable[[], list[Any]], expected: list[Any]) -> float | str:
    """Seconds for one run, or why it does not count (an error, wrong results)."""
    gc.collect()
    start = time.perf_counter()
    try:
        values = run()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    seconds = time.perf_counter() - start
    return seconds if values == expected else "wrong results"


def measure(workload: Workload, *, quick: bool, repeat: int, cpus: int) -> dict[str, Any]:
    items = workload.items(quick=quick)
    row: dict[str, Any] = {"name": workload.name, "description": workload.description}
    row["tasks"] = len(items)
    expected = [workload.fn(x) for x in items]  # a plain loop, also the reference
    used: dict[str, str] = {}

    def via_gilfree(backend: str) -> Callable[[], list[Any]]:
        def run() -> list[Any]:
            _s, values, stats = time_gilfree(workload.fn, items, backend)
            used[backend] = stats.get("backend", backend)
            return values

        return run

    contenders: dict[str, Callable[[], list[Any]]] = {
        f"gilfree {b}": via_gilfree(b) for b in (*GILFREE_BACKENDS, "auto")
    }
    for name, runner in PEERS.items():
        contenders[name] = lambda r=runner: r(workload.fn, items, cpus)
    # Rounds, not one contender's runs back to back: on a shared machine the
    # load drifts, and each contender's best time should see the same drift.
    times: dict[str, Any] = {}
    for round_ in range(repeat):
        for name, run in contenders.items():
            if isinstance(times.get(name), str):
                continue  # failed once: that is its answer
            print(f"  {workload.name} round {round_ + 1}: {name}", file=sys.stderr, flush=True)
            t = timed(run, expected)
            times[name] = t if isinstance(t, str) or name not in times else min(times[name], t)
    ok = {b: times[f"gilfree {b}"] for b in GILFREE_BACKENDS}
    ok = {b: t for b, t in ok.items() if isinstance(t, float)}
    row["best_backend"] = min(ok, key=ok.__getitem__) if ok else None
    row["auto_used"] = used.get("auto")
    row["times"] = times
    return row


# ---------------------------------------------------------------- reporting


def _seconds(value: Any) -> str:
    if not isinstance(value, float):
        return f"failed: {value}"
    return f"{value:.2f} s" if value >= 0.1 else f"{value * 1000:.1f} ms"


def _ratio(peer: Any, ours: Any) -> str:
    if not isinstance(peer, float) or not isinstance(ours, float):
        return "n/a"
    r = peer / ours
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    peers = list(PEERS)
    out = [
        "# gilfree beside other pools",
        "",
        f"Measured {machine['date']} on {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['python']}, {machine['platform']}, gilfree {machine['gilfree']}; "
        f"load average {args.load_before:.1f} before the run, {args.load_after:.1f} after.",
        f"Command: `python benchmarks/peers.py{' --quick' if args.quick else ''} "
        f"--repeat {args.repeat}`; each cell is the best of {args.repeat} rounds (every "
        "contender runs once per round) of one whole map, pool start and shutdown included.",
        "",
        "## Time, and ratio to gilfree auto",
        "",
        "Ratio = peer time / `gilfree auto` time: above 1 means gilfree (on its own, with no "
        "backend named) was faster.",
        "",
        "| workload | tasks | gilfree auto | " + " | ".join(peers) + " |",
        "|---|---:|---:|" + "---:|" * len(peers),
    ]
    for row in rows:
        auto = row["times"]["gilfree auto"]
        used = f" ({row['auto_used']})" if row.get("auto_used") else ""
        cells = [f"{_seconds(row['times'][p])} ({_ratio(row['times'][p], auto)})" for p in peers]
        out.append(
            f"| {row['description']} | {row['tasks']} | {_seconds(auto)}{used} | "
            + " | ".join(cells)
            + " |"
        )
    out += [
        "",
        "## Ratio to the best gilfree backend",
        "",
        "The best of gilfree serial/thread/process in the same run, i.e. gilfree told the "
        "right backend; the ratio isolates the pools themselves from the choice.",
        "",
        "| workload | best gilfree | " + " | ".join(peers) + " |",
        "|---|---:|" + "---:|" * len(peers),
    ]
    for row in rows:
        best = row["best_backend"]
        ours = row["times"].get(f"gilfree {best}") if best else None
        cells = [_ratio(row["times"][p], ours) for p in peers]
        out.append(
            f"| {row['description']} | {_seconds(ours)} ({best}) | " + " | ".join(cells) + " |"
        )
    out += [
        "",
        "All gilfree times in this run:",
        "",
        "| workload | serial | thread | process | auto |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [_seconds(row["times"][f"gilfree {b}"]) for b in (*GILFREE_BACKENDS, "auto")]
        out.append(f"| {row['description']} | " + " | ".join(cells) + " |")
    out += [
        "",
        "How each peer was called (defaults throughout, workers = usable CPUs for process pools):",
        "`multiprocessing.Pool(n).map` (its own chunksize heuristic), "
        "`ProcessPoolExecutor(n).map` (chunksize 1), `ThreadPoolExecutor().map`, "
        "`joblib.Parallel(n_jobs=n)` (loky, auto-batching, memmapped arrays), "
        "`mpire.WorkerPool(n).map`, `pebble.ProcessPool(n).map` (chunksize 1); "
        "gilfree through `gilfree.Executor(backend=...).map`. joblib keeps its loky workers "
        "alive between calls by default, so after the first round it skips worker start-up; "
        "every other pool starts its workers in every run.",
        "A 2-CPU machine shared with other jobs gives noisy absolute times; compare within a row.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the bench --quick sizes")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).with_name("peers_results.md")),
        help="Markdown file to write ('-' for none)",
    )
    args = parser.parse_args(argv)
    from gilfree._options import usable_cpus

    cpus = usable_cpus()
    names = set(args.only.split(",")) if args.only else {w.name for w in SUITE}
    args.load_before = os.getloadavg()[0]
    rows = []
    for workload in SUITE:
        if workload.name not in names:
            continue
        missing = workload.missing()
        if missing:
            print(f"skipping {workload.name}: {missing}", file=sys.stderr)
            continue
        rows.append(measure(workload, quick=args.quick, repeat=args.repeat, cpus=cpus))
    args.load_after = os.getloadavg()[0]
    text = markdown(rows, machine_info(), args)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

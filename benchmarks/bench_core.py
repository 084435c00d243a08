"""Core engine against its peers, side by side in one run (issues 2 and 12's targets).

    .venv/bin/python benchmarks/bench_core.py [--repeat N] [--only tiny,cpu,many,submit,...]
                                              [--extra] [--warm]

Each case times the whole call, pool start-up and teardown included, and
repeats every runner ``--repeat`` times (at least 5), one after the other in
turn, so a slow stretch of this shared machine lands on all of them. It
prints the minimum and the median of each runner, the ratios gilfree / peer
(below 1: gilfree is faster) and the load average at the start and end.

gilfree's process pool has two ways to start workers (``gilfree/pool/_procs.py``):

* the **fork path**: a plain single-threaded script forks its first workers
  itself. It is measured as a user meets it: each repetition runs in a fresh
  interpreter, a script that imports only what it uses (gilfree with no
  ``start_method``: it must pick fork), against the peer in a fresh
  interpreter too. Only the call is timed, not the interpreter's start-up or
  the script's imports; what a library imports during the call counts.
* the **fork-server path**: a process that already has threads (this one:
  peers leave theirs) gets workers from gilfree's zygote, started once per
  process. It is measured in this long-lived process against the peer in
  this process.

``--warm`` runs the tiny case's fork path again with each side's modules
imported before the timer: the pool's own work, without first-call imports.

``--extra`` adds peers that are context only (mpire, joblib, ProcessPoolExecutor
with chunksize=1 on 200,000 tasks), run in this process.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import gilfree
from gilfree.bench.workloads import cpu_bound as spin  # pure-Python CPU work


def square(x):
    return x * x


def nap(s):
    time.sleep(s)
    return s


def best(fn, repeat):
    """Seconds of the fastest of `repeat` calls of `fn` (bench_dask uses it too)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def calibrate(target_s=0.05):
    n = 100_000
    t0 = time.perf_counter()
    spin(n)
    dt = time.perf_counter() - t0
    return int(n * target_s / dt)


def load():
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


# -- the runners ------------------------------------------------------------------------
# A runner is (name, where, make): `make(params)` returns the call to time;
# where is "fresh" (a new interpreter per repetition) or "here" (this process).


def gilfree_map(fn, start_method=None):
    def make(p):
        items, kw = p["items"], p.get("kw", {})
        opts = dict(backend="process", **kw)
        if start_method is not None:
            opts["start_method"] = start_method
        return lambda: gilfree.map(fn, items, **opts)

    return make


def pool_map(fn):
    def make(p):
        items, kw = p["items"], {**p.get("kw", {}), **p.get("peer_kw", {})}
        workers = kw.get("workers")

        def run():
            with multiprocessing.Pool(workers) as pool:
                return pool.map(fn, items, chunksize=kw.get("chunksize"))

        return run

    return make


def ppe_map(fn):
    def make(p):
        items, kw = p["items"], {**p.get("kw", {}), **p.get("peer_kw", {})}

        def run():
            with cf.ProcessPoolExecutor(kw.get("workers")) as ex:
                return list(ex.map(fn, items, chunksize=kw.get("chunksize") or 1))

        return run

    return make


def mpire_map(fn):
    def make(p):
        from mpire import WorkerPool

        def run():
            with WorkerPool() as pool:
                return pool.map(fn, p["items"])

        return run

    return make


def joblib_map(fn):
    def make(p):
        from joblib import Parallel, delayed

        return lambda: Parallel(n_jobs=-1)(delayed(fn)(i) for i in p["items"])

    return make


FUNCTIONS = {"square": square, "nap": nap, "spin": spin}
MAKERS = {
    "gilfree": gilfree_map,
    "gilfree-zygote": lambda fn: gilfree_map(fn, "zygote"),
    "pool": pool_map,
    "ppe": ppe_map,
    "mpire": mpire_map,
    "joblib": joblib_map,
}


def params(case, arg):
    """Inputs of one case; `arg` is the calibrated loop count for "cpu"."""
    if case == "tiny":
        return {"fn": "square", "items": list(range(200_000))}
    if case == "cpu":
        # gilfree sizes its chunks itself; the peers get their best, chunksize=1.
        return {"fn": "spin", "items": [arg] * 48, "peer_kw": {"chunksize": 1}}
    if case == "many":
        return {"fn": "nap", "items": [0.001] * 20_000, "kw": {"workers": 64, "chunksize": 1}}
    raise ValueError(case)


#: A fresh interpreter's script, as a user writes one: it imports only what it
#: uses, so both sides pay for what they import lazily during the call.
CHILD = """
import time
{imports}

def square(x):
    return x * x


def nap(s):
    time.sleep(s)
    return s


def spin(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


items = {items}
t0 = time.perf_counter()
{call}
print(time.perf_counter() - t0)
"""

CHILD_CALLS = {
    "gilfree": (
        "import threading\nimport gilfree",
        "assert threading.active_count() == 1  # the fork path: a single-threaded parent\n"
        "gilfree.map({fn}, items, backend='process'{kw})",
    ),
    "pool": (
        "import multiprocessing",
        "with multiprocessing.Pool({workers}) as pool:\n    pool.map({fn}, items{peer_kw})",
    ),
    "ppe": (
        "import concurrent.futures as cf",
        "with cf.ProcessPoolExecutor({workers}) as ex:\n"
        "    list(ex.map({fn}, items, chunksize={chunksize}))",
    ),
}
# Context only (--warm): each side's modules imported before the timer, so the
# call is the pool's own work. gilfree's fork path imports ~30 ms of modules in
# its first call (multiprocessing with socket and signal, cloudpickle with
# platform, ctypes), where a Pool script has imported multiprocessing before
# its timer.
CHILD_CALLS |= {
    "gilfree-warm": (
        "import threading\nimport gilfree, gilfree.pool, gilfree.backends._process",
        CHILD_CALLS["gilfree"][1],
    ),
    "pool-warm": ("import multiprocessing, multiprocessing.pool", CHILD_CALLS["pool"][1]),
}

ITEMS = {
    "tiny": "list(range(200_000))",
    "cpu": "[{arg}] * 48",
    "many": "[0.001] * 20_000",
}


def child_script(case, runner, arg):
    p = params(case, arg)
    kw = p.get("kw", {})
    peer_kw = {**kw, **p.get("peer_kw", {})}
    imports, call = CHILD_CALLS[runner]
    call = call.format(
        fn=p["fn"],
        kw="".join(f", {k}={v!r}" for k, v in kw.items()),
        workers=peer_kw.get("workers"),
        peer_kw=", chunksize={}".format(peer_kw["chunksize"]) if "chunksize" in peer_kw else "",
        chunksize=peer_kw.get("chunksize") or 1,
    )
    return CHILD.format(imports=imports, items=ITEMS[case].format(arg=arg), call=call)


def run_fresh(case, runner, arg):
    out = subprocess.run(
        [sys.executable, "-c", child_script(case, runner, arg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{runner} ({case}) failed in its child:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


_calls = {}  # (case, runner) -> the call, made once: its inputs are built once


def run_here(case, runner, arg):
    key = (case, runner)
    if key not in _calls:
        p = params(case, arg)
        _calls[key] = MAKERS[runner](FUNCTIONS[p["fn"]])(p)
    t0 = time.perf_counter()
    _calls[key]()
    return time.perf_counter() - t0


def interleaved(case, runners, repeat, arg=None, extra=None):
    """{label: [seconds]}: every runner once per round, rounds `repeat` times."""
    times = {label: [] for label, *_ in runners}
    extra = extra or {}
    for label in extra:
        times[label] = []
    for k in range(repeat):
        # Every other round in reverse, so that no runner always goes first
        # (after the serial loop, say) or right after the same neighbour.
        for label, runner, where in runners if k % 2 == 0 else runners[::-1]:
            run = run_fresh if where == "fresh" else run_here
            times[label].append(run(case, runner, arg))
        for label, fn in extra.items():
            times[label].append(best(fn, 1))
    return times


def table(title, times, note=""):
    print(f"\n### {title}\n")
    if note:
        print(note + "\n")
    print("| runner | min s | median s |")
    print("|---|---:|---:|")
    for label, ts in times.items():
        print(f"| {label} | {min(ts):.4f} | {statistics.median(ts):.4f} |")


def ratio(times, ours, peer, what):
    """gilfree / peer for the minimum and the median (below 1: gilfree is faster),
    and the median of the ratios round by round: the two ran side by side in
    each round, so a slow stretch of this shared machine cancels out there."""
    lo = min(times[ours]) / min(times[peer])
    med = statistics.median(times[ours]) / statistics.median(times[peer])
    paired = sorted(a / b for a, b in zip(times[ours], times[peer], strict=True))
    q1, q3 = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
    print(
        f"- {what}: {ours} / {peer} = {lo:.3f}x (min), {med:.3f}x (median); "
        f"round by round {statistics.median(paired):.3f}x (quartiles {q1:.3f}-{q3:.3f})"
    )
    return lo, med


FORK = "gilfree, fork path (fresh interpreter)"
ZYG = "gilfree, fork-server path (this process)"
WARM = "gilfree, fork path, its modules imported first (fresh interpreter)"
WARM_POOL = "Pool.map, multiprocessing.pool imported first (fresh interpreter)"


def case_tiny(repeat, extra, warm=False):
    before = load()
    runners = [
        (FORK, "gilfree", "fresh"),
        ("Pool.map (fresh interpreter)", "pool", "fresh"),
        (ZYG, "gilfree-zygote", "here"),
        ("Pool.map (this process)", "pool", "here"),
    ]
    others = {}
    if warm:
        runners += [
            (WARM, "gilfree-warm", "fresh"),
            (WARM_POOL, "pool-warm", "fresh"),
        ]
    if extra:
        items = params("tiny", None)["items"]
        others = {
            "mpire WorkerPool.map (this process)": mpire_map(square)({"items": items}),
            "ProcessPoolExecutor.map chunksize=1 (this process)": ppe_map(square)({"items": items}),
        }
    times = interleaved("tiny", runners, repeat, extra=others)
    table("200,000 tiny tasks (x*x), pool start-up and teardown included", times)
    print(f"\n{before} -> {load()}\n")
    ratio(times, FORK, "Pool.map (fresh interpreter)", "fork path")
    ratio(times, ZYG, "Pool.map (this process)", "fork-server path")
    if warm:
        ratio(times, WARM, WARM_POOL, "fork path, modules imported before the timer")


def case_cpu(repeat, extra):
    before = load()
    n = calibrate()
    items = [n] * 48
    runners = [
        (FORK, "gilfree", "fresh"),
        ("Pool.map chunksize=1 (fresh interpreter)", "pool", "fresh"),
        (ZYG, "gilfree-zygote", "here"),
        ("Pool.map chunksize=1 (this process)", "pool", "here"),
    ]
    others = {"serial loop (this process)": lambda: [spin(i) for i in items]}
    if extra:
        others["joblib Parallel (this process)"] = joblib_map(spin)({"items": items})
    times = interleaved("cpu", runners, repeat, arg=n, extra=others)
    table("48 pure-Python CPU tasks of ~50 ms, start-up and teardown included", times)
    print(f"\n{before} -> {load()}\n")
    ratio(times, FORK, "Pool.map chunksize=1 (fresh interpreter)", "fork path")
    ratio(times, ZYG, "Pool.map chunksize=1 (this process)", "fork-server path")
    loop = times["serial loop (this process)"]
    for label in (FORK, ZYG):
        print(
            f"- speedup over the serial loop, {label}: "
            f"{min(loop) / min(times[label]):.2f}x (min), "
            f"{statistics.median(loop) / statistics.median(times[label]):.2f}x (median) "
            f"on {os.cpu_count()} CPUs"
        )


def case_many(repeat, extra):
    before = load()
    runners = [
        (FORK, "gilfree", "fresh"),
        ("Pool(64) (fresh interpreter)", "pool", "fresh"),
        ("ProcessPoolExecutor(64) (fresh interpreter)", "ppe", "fresh"),
        (ZYG, "gilfree-zygote", "here"),
        ("Pool(64) (this process)", "pool", "here"),
        ("ProcessPoolExecutor(64) (this process)", "ppe", "here"),
    ]
    times = interleaved("many", runners, repeat)
    table(
        "64 workers x 20,000 tasks of time.sleep(0.001), chunksize=1, "
        "start-up and teardown included",
        times,
    )
    print(f"\n{before} -> {load()}\n")
    ratio(times, FORK, "Pool(64) (fresh interpreter)", "fork path")
    ratio(times, FORK, "ProcessPoolExecutor(64) (fresh interpreter)", "fork path")
    ratio(times, ZYG, "Pool(64) (this process)", "fork-server path")
    ratio(times, ZYG, "ProcessPoolExecutor(64) (this process)", "fork-server path")
    print()
    for workers in (64, 8):
        fresh = [run_cpu_per_task(workers) for _ in range(3)]
        here = [manager_cpu_per_task(nap, [0.001] * 20_000, workers) for _ in range(3)]
        print(
            f"- manager thread CPU per task, {workers} workers: "
            f"fork path {statistics.median(fresh) * 1e6:.1f} us, "
            f"fork-server path {statistics.median(here) * 1e6:.1f} us (median of 3)"
        )


def manager_cpu_per_task(fn, items, workers, **options):
    """Seconds of the pool manager thread's CPU per task (an Executor.map run)."""
    with gilfree.Executor(backend="process", workers=workers, **options) as ex:
        (manager,) = [t for t in threading.enumerate() if t.name == "gilfree-pool-manager"]
        before = _thread_cpu(manager.native_id)
        for _ in ex.map(fn, items, chunksize=1):
            pass
        return (_thread_cpu(manager.native_id) - before) / len(items)


def _thread_cpu(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cpu_per_task(workers):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_core as b; "
        f"print(b.manager_cpu_per_task(b.nap, [0.001] * 20_000, {workers}))"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code, here], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def case_submit(repeat, n=20_000):
    """Caller's CPU per Executor.submit (the call only), and the whole batch's wall time."""
    before = load()
    rows = {}

    def ours():
        return gilfree.Executor(backend="process", workers=2)

    def ppe():
        return cf.ProcessPoolExecutor(2)

    cpu = {"gilfree Executor.submit": [], "ProcessPoolExecutor.submit": []}
    wall = {"gilfree Executor.submit": [], "ProcessPoolExecutor.submit": []}
    for _ in range(repeat):
        for label, make in (("gilfree Executor.submit", ours), ("ProcessPoolExecutor.submit", ppe)):
            with make() as ex:
                ex.submit(square, 0).result()  # workers up
                t0, c0 = time.perf_counter(), time.thread_time()
                futures = [ex.submit(square, i) for i in range(n)]
                c1 = time.thread_time()
                for f in futures:
                    f.result()
                t1 = time.perf_counter()
            cpu[label].append((c1 - c0) / n)
            wall[label].append(t1 - t0)
    rows = {k: v for k, v in wall.items()}
    table(f"{n:,} submits of x*x on 2 workers, then every result (pool already up)", rows)
    print(f"\n{before} -> {load()}\n")
    for label, ts in cpu.items():
        print(
            f"- {label}: caller CPU per submit {min(ts) * 1e6:.1f} us (min), "
            f"{statistics.median(ts) * 1e6:.1f} us (median)"
        )
    ratio(wall, "gilfree Executor.submit", "ProcessPoolExecutor.submit", "submit + results")


def case_first(repeat):
    def ours():
        with gilfree.Executor(backend="process") as ex:
            return ex.submit(square, 3).result()

    def ppe():
        with cf.ProcessPoolExecutor() as ex:
            return ex.submit(square, 3).result()

    def mp_pool():
        with multiprocessing.Pool() as p:
            return p.apply(square, (3,))

    before = load()
    extra = {"gilfree Executor": ours, "ProcessPoolExecutor": ppe, "Pool.apply": mp_pool}
    times = interleaved("first", [], repeat, extra=extra)
    table(
        "start-up to first result (one tiny task, pool created and shut down, this process)", times
    )
    print(f"\n{before} -> {load()}\n")
    ratio(times, "gilfree Executor", "ProcessPoolExecutor", "first result")
    ratio(times, "gilfree Executor", "Pool.apply", "first result")


def case_thread(repeat):
    sleeps = [0.01] * 400

    def tpe():
        with cf.ThreadPoolExecutor(32) as ex:
            return list(ex.map(nap, sleeps))

    before = load()
    extra = {
        "gilfree thread": lambda: gilfree.map(nap, sleeps, backend="thread"),
        "ThreadPoolExecutor(32)": tpe,
    }
    times = interleaved("thread", [], repeat, extra=extra)
    table("400 tasks sleeping 10 ms, thread backend", times)
    print(f"\n{before} -> {load()}\n")
    ratio(times, "gilfree thread", "ThreadPoolExecutor(32)", "thread backend")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="tiny,cpu,many,submit,first,thread", help="cases to run")
    ap.add_argument("--extra", action="store_true", help="context-only peers too (slow)")
    ap.add_argument(
        "--warm",
        action="store_true",
        help="tiny: the fork path again with each side's modules imported before the timer",
    )
    args = ap.parse_args()
    r = max(args.repeat, 5)
    only = args.only.split(",")
    print(
        f"# gilfree core benchmark -- {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {r} rounds, {load()}"
    )
    for case in only:
        if case == "tiny":
            case_tiny(r, args.extra, args.warm)
        elif case == "cpu":
            case_cpu(r, args.extra)
        elif case == "many":
            case_many(r, args.extra)
        elif case == "submit":
            case_submit(r)
        elif case == "first":
            case_first(r)
        elif case == "thread":
            case_thread(r)
        else:
            raise SystemExit(f"unknown case {case!r}")


if __name__ == "__main__":
    main()

"""Uncontended cost of gilfree's deadlock-detecting locks against threading's.

Issue #6 allows an uncontended acquire/release at most 3x a plain
``threading.Lock``. Both sides are timed in the same run, interleaved, best of
several repeats (timeit), so machine noise hits them alike; only the ratios
mean anything. The RLock row compares with ``threading.RLock``, which is C code
(gilfree's RLock counts re-entry in Python), for information.

    python benchmarks/bench_locks.py [--number N] [--repeat R]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import timeit

import gilfree
from gilfree.deadlock import deadlock_detection

STATEMENTS = {
    "acquire(); release()": "lock.acquire(); lock.release()",
    "with lock": "with lock: pass",
}


def best(lock: object, stmt: str, number: int, repeat: int) -> float:
    """Best time per operation pair, in nanoseconds."""
    times = timeit.repeat(stmt, globals={"lock": lock}, number=number, repeat=repeat)
    return min(times) / number * 1e9


def creation_ns(make_lock: object, number: int = 20_000) -> float:
    """Best time to make one lock, in nanoseconds."""
    return min(timeit.repeat(make_lock, number=number, repeat=5)) / number * 1e9  # type: ignore[arg-type]


def contended(make_lock: object, threads: int, each: int) -> float:
    """Seconds for ``threads`` threads to each take one shared lock ``each`` times."""
    lock = make_lock()  # type: ignore[operator]
    start = threading.Barrier(threads + 1)
    count = [0]

    def work() -> None:
        start.wait()
        for _ in range(each):
            with lock:
                count[0] += 1

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in pool:
        t.join()
    assert count[0] == threads * each
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    with deadlock_detection():
        patched = threading.Lock()  # what threading.Lock() gives inside the block
    pairs = [
        ("Lock", threading.Lock(), gilfree.Lock()),
        ("Lock (patched)", threading.Lock(), patched),
        ("RLock", threading.RLock(), gilfree.RLock()),
    ]
    print(f"{'lock':<16}{'operation':<24}{'threading ns':>14}{'gilfree ns':>12}{'ratio':>8}")
    worst = 0.0
    for label, plain, ours in pairs:
        for op, stmt in STATEMENTS.items():
            base = new = float("inf")
            for _ in range(3):  # interleave the two so drift hits both
                base = min(base, best(plain, stmt, args.number, args.repeat))
                new = min(new, best(ours, stmt, args.number, args.repeat))
            ratio = new / base
            if label != "RLock":
                worst = max(worst, ratio)
            print(f"{label:<16}{op:<24}{base:>14.1f}{new:>12.1f}{ratio:>7.2f}x")

    # Contended: the graph is touched on every wait. Information, not a budget.
    # A short GIL switch interval makes threads get preempted while holding the lock.
    plain_t = ours_t = float("inf")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for _ in range(args.repeat):
            plain_t = min(plain_t, contended(threading.Lock, 8, 5_000))
            ours_t = min(ours_t, contended(gilfree.Lock, 8, 5_000))
    finally:
        sys.setswitchinterval(interval)
    print(
        f"{'Lock':<16}{'8 threads contend':<24}{plain_t * 1e3:>12.1f}ms{ours_t * 1e3:>10.1f}ms"
        f"{ours_t / plain_t:>7.2f}x"
    )

    # Creation: names come from the creating line, so creation costs more. Under
    # deadlock_detection() every Condition, Event and Queue makes locks this way.
    with deadlock_detection():
        patched_cls = threading.Lock
    for label, cls in [("Lock", gilfree.Lock), ("Lock (patched)", patched_cls)]:
        base = new = float("inf")
        for _ in range(3):  # interleaved, as above
            base = min(base, creation_ns(threading.Lock))
            new = min(new, creation_ns(cls))
        print(f"{label:<16}{'creation':<24}{base:>14.1f}{new:>12.1f}{new / base:>7.2f}x")
    verdict = "within" if worst <= 3.0 else "OVER"
    print(f"\nworst Lock ratio {worst:.2f}x vs threading.Lock: {verdict} the 3x budget of issue #6")


if __name__ == "__main__":
    main()

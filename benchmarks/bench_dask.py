"""gilfree on Dask beside Dask's own ``Client.map``, on the same local cluster.

Starts a real cluster (``dask scheduler`` + 2 ``dask worker`` processes, 1 thread each,
on 127.0.0.1), then runs each workload with:

* ``dask Client.map``      -- ``client.gather(client.map(fn, items, pure=False))``;
* ``gilfree (auto chunks)`` -- ``gilfree.map(fn, items, backend="dask")``;
* ``gilfree chunksize=1``   -- one Dask task per item, as Client.map does.

The last workload passes one 8 MiB array to every task. Client.map gets it scattered to
every worker first (``client.scatter(array, broadcast=True)``, inside the timing), as a
Dask user would do; gilfree gets the plain array, or a ``gilfree.share()`` handle (on
Dask it travels by value, scattered once per map).

Overhead per task = (wall time - the work itself spread over the cluster's threads) / n.
Each figure is the best of ``--repeat`` runs (the machine is shared; the minimum is the
least disturbed). The ratio column is Client.map's overhead divided by gilfree's: above
1 gilfree costs less per task.

    .venv/bin/python benchmarks/bench_dask.py [--quick] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_core import best  # noqa: E402  (this folder is on sys.path)
from dask_cluster import LocalDaskCluster  # noqa: E402


def noop(x):
    return x


def busy(x, seconds=0.005):
    """About ``seconds`` of pure-Python work (holds the GIL, like most user code)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return x


def pick(arg):
    import numpy as np

    array, i = arg  # an ndarray, or a gilfree.share() handle: asarray takes both
    return float(np.asarray(array)[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    from distributed import Client

    import gilfree

    scale = 4 if args.quick else 1
    workloads = [
        ("no-op", noop, 0.0, 4000 // scale),
        ("5 ms of Python", busy, 0.005, 400 // scale),
        ("8 MiB array arg", pick, 0.0, 400 // scale),
    ]
    array = np.arange(1 << 20, dtype=np.float64)
    handle = gilfree.share(array)
    threads = 2
    with LocalDaskCluster(n_workers=2, nthreads=1, pythonpath=[str(HERE)]) as cluster:
        address = cluster.address
        with Client(address, set_as_default=False) as client:
            # Warm up: imports on the workers, the first connection of each client.
            client.gather(client.map(noop, range(10), pure=False))
            gilfree.map(noop, range(10), backend="dask", address=address)

            header = f"{'workload':<16}{'runner':<24}{'n':>6}{'wall s':>9}{'ovh/task ms':>13}"
            print(f"dask cluster: 2 workers x 1 thread at {address}")
            print(header + f"{'ratio':>8}")
            print("-" * (len(header) + 8))
            for label, fn, seconds, n in workloads:
                items = list(range(n))
                ideal = n * seconds / threads
                if fn is pick:
                    runs = {
                        "dask Client.map": lambda n=n: _client_map_scattered(client, array, n),
                        "gilfree ndarray": lambda n=n: gilfree.map(
                            pick, [(array, i) for i in range(n)], backend="dask",
                            address=address,
                        ),
                        "gilfree share()": lambda n=n: gilfree.map(
                            pick, [(handle, i) for i in range(n)], backend="dask",
                            address=address,
                        ),
                    }  # fmt: skip
                else:
                    runs = {
                        "dask Client.map": lambda fn=fn, items=items: client.gather(
                            client.map(fn, items, pure=False)
                        ),
                        "gilfree (auto chunks)": lambda fn=fn, items=items: gilfree.map(
                            fn, items, backend="dask", address=address
                        ),
                        "gilfree chunksize=1": lambda fn=fn, items=items: gilfree.map(
                            fn, items, backend="dask", address=address, chunksize=1
                        ),
                    }
                overhead = {}
                for runner, run in runs.items():
                    wall = best(run, args.repeat)
                    overhead[runner] = max(wall - ideal, 1e-9) / n
                    ratio = overhead["dask Client.map"] / overhead[runner]
                    print(
                        f"{label:<16}{runner:<24}{n:>6}{wall:>9.3f}"
                        f"{overhead[runner] * 1e3:>13.3f}{ratio:>7.1f}x"
                    )
            # Fixed cost of one gilfree.map on Dask: connect a client, scatter the runner
            # and the function, one task. Beside it: one task on an already open client.
            fixed = best(lambda: gilfree.map(noop, [0], backend="dask", address=address), 5)
            one = best(lambda: client.submit(noop, 0, pure=False).result(), 5)
            print(
                f"\nfixed cost of a gilfree.map call: {fixed * 1e3:.1f} ms "
                f"(one task on an open Client: {one * 1e3:.1f} ms)"
            )
            print(
                "ratio = Client.map's overhead per task / this runner's (same cluster, "
                "same run); above 1x gilfree costs less per task."
            )
    handle.release()


def _client_map_scattered(client, array, n):
    future = client.scatter(array, broadcast=True, hash=False)
    return client.gather(client.map(pick, [(future, i) for i in range(n)], pure=False))


if __name__ == "__main__":
    main()

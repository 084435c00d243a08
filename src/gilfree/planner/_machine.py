"""What processes cost on this machine: measured once, cached on disk.

A process backend pays to start each worker and, for every chunk of work, a
round trip over a pipe plus the time to move the pickled bytes. Those costs
depend on the machine, not on the user's function, so they are measured once
with plain :mod:`multiprocessing` (five forked processes started one after
another, one of them ping-ponging small messages over a ``Pipe``; independent
of gilfree's own pool) and kept in ``machine.json`` under the cache directory:

* ``$GILFREE_CACHE_DIR`` when set, else
* ``$XDG_CACHE_HOME/gilfree``, else ``~/.cache/gilfree``.

The whole measurement takes a few tens of milliseconds. If the cache cannot be
written the numbers are kept for this process only.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._options import usable_cpus

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, SpawnContext

# Bump when the measurement changes so old cache files are ignored. Format 2
# keeps the median of several timings (format 1 kept single timings, and one
# unlucky start, 169 ms against 5-10 ms measured minutes later, stayed in the
# file).
_FORMAT = 2
# Workers started, one after another, for the start costs (spawn_s, ready_s);
# the median of five is right while at most two of them were delayed. Each
# costs ~1-10 ms to start on a 2-core VM (more under load).
_STARTS = 5
# Ping-pongs for the round-trip time: _PING_ROUNDS rounds of _PINGS, the median
# round's mean kept; 8 x 25 x ~15-50 us stays under 10 ms.
_PING_ROUNDS = 8
_PINGS = 25
# Payload for the bandwidth estimate, sent three times (about 12 MiB in all);
# the median send is kept.
_PAYLOAD = 4 << 20
_SENDS = 3
# No step of the measurement may block longer than this.
_STEP_TIMEOUT = 5.0

_lock = threading.Lock()
_memory: dict[str, MachineCosts] = {}


@dataclass(frozen=True)
class MachineCosts:
    """Process costs on this machine, in seconds."""

    cpus: int
    spawn_s: float  # parent-side cost of starting one worker (fork)
    ready_s: float  # from start until the new worker answers
    roundtrip_s: float  # one small message there and back over a pipe
    byte_s: float  # seconds per byte moved through a pipe (one way)
    start_method: str = "fork"
    measured: bool = True  # False for the fallback defaults

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Used when no process can be started to measure (documented, conservative:
# typical of a small Linux VM).
DEFAULT_COSTS = MachineCosts(
    cpus=1,
    spawn_s=0.005,
    ready_s=0.02,
    roundtrip_s=100e-6,
    byte_s=1e-9,
    measured=False,
)


def cache_dir() -> str:
    # os.path, not pathlib: the first plan of a script reads this, and pathlib
    # (with urllib.parse and ipaddress) costs it ~2.5 ms to import.
    env = os.environ.get("GILFREE_CACHE_DIR")
    if env:
        return env
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gilfree")


def _fingerprint() -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "python": sys.version.split()[0],
        # platform.machine() and platform.node(), without importing platform (~1 ms)
        "machine": os.uname().machine,
        "node": os.uname().nodename,
        "cpus": usable_cpus(),
    }


def machine_costs(*, refresh: bool = False) -> MachineCosts:
    """This machine's process costs: from memory, the disk cache, or measured."""
    path = os.path.join(cache_dir(), "machine.json")
    key = path
    with _lock:
        if not refresh and key in _memory:
            return _memory[key]
        costs = None if refresh else _read(path)
        if costs is None:
            costs = measure()
            _write(path, costs)
        _memory[key] = costs
        return costs


def forget() -> None:
    """Drop the in-memory copy (tests point the cache at a fresh directory)."""
    with _lock:
        _memory.clear()


def _read(path: str) -> MachineCosts | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("fingerprint") != _fingerprint():
            return None
        return MachineCosts(**data["costs"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write(path: str, costs: MachineCosts) -> None:
    if not costs.measured:
        return
    try:
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"fingerprint": _fingerprint(), "costs": costs.to_dict()}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only home: keep the numbers in memory only


def _echo(conn: Any) -> None:  # runs in the child
    conn.send_bytes(b"r")
    while True:
        msg = conn.recv_bytes()
        if msg == b"q":
            break
        conn.send_bytes(b"k")
    conn.close()


def measure() -> MachineCosts:
    """Start a few worker processes and time them; falls back to defaults on failure."""
    import multiprocessing  # here: only a machine not measured yet pays for it (~3 ms)

    cpus = usable_cpus()
    ctx: ForkContext | SpawnContext
    if "fork" in multiprocessing.get_all_start_methods():
        method, ctx = "fork", multiprocessing.get_context("fork")
    else:
        method, ctx = "spawn", multiprocessing.get_context("spawn")
    echoes: list[_Echo] = []
    try:
        starts: list[tuple[float, float]] = []
        for _ in range(_STARTS):
            # One after another, each waited for: the parent starts a pool's
            # workers in a row too, and ready_s is one worker's wait.
            echo = _Echo(ctx)
            echoes.append(echo)
            took = echo.start()
            if took is None:
                return DEFAULT_COSTS
            starts.append(took)
        pinged = echoes[0]
        rounds: list[float] = []
        for _ in range(_PING_ROUNDS):
            t0 = time.perf_counter()
            for _ in range(_PINGS):
                if not pinged.ask(b"p" * 16):
                    return DEFAULT_COSTS
            rounds.append((time.perf_counter() - t0) / _PINGS)
        payload = bytes(_PAYLOAD)
        sends: list[float] = []
        for _ in range(_SENDS):
            t0 = time.perf_counter()
            if not pinged.ask(payload):
                return DEFAULT_COSTS
            sends.append(time.perf_counter() - t0)
        return summarize(cpus, method, starts, rounds, sends)
    except (OSError, EOFError, ValueError):
        return DEFAULT_COSTS
    finally:
        for echo in echoes:  # all told to quit first, so their exits overlap
            echo.stop()
        for echo in echoes:
            echo.join()


def summarize(
    cpus: int,
    method: str,
    starts: list[tuple[float, float]],
    rounds: list[float],
    sends: list[float],
) -> MachineCosts:
    """The costs from the timings of ``measure``: ``(spawn, ready)`` of each
    start, the mean round trip of each round of pings, the time of each large
    send. The median of each, so that one timing a busy machine delayed (a
    worker scheduled 150 ms late, a stalled ping) does not become the cost."""
    import statistics  # here: it loads fractions and decimal, ~2 ms, at most once a run

    roundtrip = statistics.median(rounds)
    return MachineCosts(
        cpus=cpus,
        spawn_s=statistics.median(spawn for spawn, _ in starts),
        ready_s=statistics.median(ready for _, ready in starts),
        roundtrip_s=roundtrip,
        byte_s=max(0.0, statistics.median(sends) - roundtrip) / _PAYLOAD,
        start_method=method,
    )


class _Echo:
    """One calibration worker: a process that answers each message on a pipe."""

    def __init__(self, ctx: ForkContext | SpawnContext) -> None:
        self.conn, self._child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_echo, args=(self._child,), daemon=True, name="gilfree-calibrate"
        )
        self._started = False

    def start(self) -> tuple[float, float] | None:
        """``(spawn_s, ready_s)``, or None when it did not answer in time."""
        t0 = time.perf_counter()
        self.proc.start()
        self._started = True
        t1 = time.perf_counter()
        self._child.close()
        if not self.conn.poll(_STEP_TIMEOUT):
            return None
        self.conn.recv_bytes()
        return t1 - t0, time.perf_counter() - t1

    def ask(self, msg: bytes) -> bool:
        """Send ``msg`` and wait for the answer; False when none came in time."""
        self.conn.send_bytes(msg)
        if not self.conn.poll(_STEP_TIMEOUT):
            return False
        self.conn.recv_bytes()
        return True

    def stop(self) -> None:
        try:
            self.conn.send_bytes(b"q")
        except (OSError, ValueError):
            pass  # already gone, or never started
        self.conn.close()
        self._child.close()

    def join(self) -> None:
        if self._started:
            self.proc.join(_STEP_TIMEOUT)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(_STEP_TIMEOUT)
        self.proc.close()

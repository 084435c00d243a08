"""What processes cost on this machine: measured once, cached on disk.

A process backend pays to start each worker and, for every chunk of work, a
round trip over a pipe plus the time to move the pickled bytes. Those costs
depend on the machine, not on the user's function, so they are measured once
with plain :mod:`multiprocessing` (a forked ``Process`` ping-ponging small
messages over a ``Pipe``; independent of gilfree's own pool) and kept in
``machine.json`` under the cache directory:

* ``$GILFREE_CACHE_DIR`` when set, else
* ``$XDG_CACHE_HOME/gilfree``, else ``~/.cache/gilfree``.

The whole measurement takes a few tens of milliseconds. If the cache cannot be
written the numbers are kept for this process only.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._options import usable_cpus

# Bump when the measurement changes so old cache files are ignored.
_FORMAT = 1
# Ping-pongs for the round-trip time; 200 x ~20-50 us stays under 10 ms.
_PINGS = 200
# Payload for the bandwidth estimate, sent three times (about 12 MiB in all).
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


def cache_dir() -> Path:
    env = os.environ.get("GILFREE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "gilfree"


def _fingerprint() -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "node": platform.node(),
        "cpus": usable_cpus(),
    }


def machine_costs(*, refresh: bool = False) -> MachineCosts:
    """This machine's process costs: from memory, the disk cache, or measured."""
    path = cache_dir() / "machine.json"
    key = str(path)
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


def _read(path: Path) -> MachineCosts | None:
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") != _fingerprint():
            return None
        return MachineCosts(**data["costs"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write(path: Path, costs: MachineCosts) -> None:
    if not costs.measured:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": _fingerprint(), "costs": costs.to_dict()}))
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
    """Start one worker process and time it; falls back to defaults on failure."""
    cpus = usable_cpus()
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(child,), daemon=True, name="gilfree-calibrate")
    try:
        t0 = time.perf_counter()
        proc.start()
        t1 = time.perf_counter()
        child.close()
        if not parent.poll(_STEP_TIMEOUT):
            return DEFAULT_COSTS
        parent.recv_bytes()
        t2 = time.perf_counter()
        for _ in range(_PINGS):
            parent.send_bytes(b"p" * 16)
            if not parent.poll(_STEP_TIMEOUT):
                return DEFAULT_COSTS
            parent.recv_bytes()
        t3 = time.perf_counter()
        payload = bytes(_PAYLOAD)
        for _ in range(_SENDS):
            parent.send_bytes(payload)
            if not parent.poll(_STEP_TIMEOUT):
                return DEFAULT_COSTS
            parent.recv_bytes()
        t4 = time.perf_counter()
        parent.send_bytes(b"q")
        roundtrip = (t3 - t2) / _PINGS
        byte_s = max(0.0, (t4 - t3) / _SENDS - roundtrip) / _PAYLOAD
        return MachineCosts(
            cpus=cpus,
            spawn_s=t1 - t0,
            ready_s=t2 - t1,
            roundtrip_s=roundtrip,
            byte_s=byte_s,
            start_method=method,
        )
    except (OSError, EOFError, ValueError):
        return DEFAULT_COSTS
    finally:
        parent.close()
        proc.join(_STEP_TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join(_STEP_TIMEOUT)
        proc.close()

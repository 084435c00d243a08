"""Run CPython's own lock test suites with ``threading``'s locks swapped for gilfree's.

``deadlock_detection()`` replaces ``threading.Lock``/``RLock`` process-wide, so
the locks it hands out must be faithful drop-ins. The strictest judge is
CPython's own test package: this script runs ``test.test_threading``,
``test.test_queue`` and ``test.test_thread`` (or the modules named on the
command line) inside ``with gilfree.deadlock_detection():`` and prints one
JSON line per module with the counts, then the ids of the tests that failed.

Run it with an interpreter that has its ``test`` package (pyenv's builds do)
and can import gilfree, for example from the repository root::

    PYTHONPATH=src ~/.pyenv/versions/3.13.0/bin/python tests/deadlock/cpython_lock_suites.py
    PYTHONPATH=src ~/.pyenv/versions/3.13.0/bin/python tests/deadlock/cpython_lock_suites.py --plain

``--plain`` runs the same modules without detection, as the baseline. Each
module runs in its own child interpreter so that one that hangs or crashes
cannot take the others down; the exit status is 1 when any test failed.
tests/deadlock/test_deadlock_cpython.py runs this under pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODULES = ("test.test_threading", "test.test_queue", "test.test_thread")

#: A module that runs longer than this (seconds) is killed and counted as failed.
#: test_threading takes about 40 s alone on a quiet 2-CPU machine.
MODULE_TIMEOUT = 900


def _run_one(module: str, detect: bool, verbosity: int = 1) -> dict:
    """In a child interpreter: load and run one module, return its counts."""
    import contextlib
    import unittest

    from test import support

    # Quiet output as regrtest would do; verbose flags stay off.
    support.verbose = 0
    if detect:
        import gilfree

        block = gilfree.deadlock_detection()
    else:
        block = contextlib.nullcontext()
    with block:
        suite = unittest.defaultTestLoader.loadTestsFromName(module)
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=verbosity).run(suite)
    return {
        "module": module,
        "detection": detect,
        "run": result.testsRun,
        "failures": len(result.failures),
        "errors": len(result.errors),
        "skipped": len(result.skipped),
        "failed": sorted(t.id() for t, _ in result.failures + result.errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(MODULES))
    parser.add_argument("--plain", action="store_true", help="run without deadlock_detection()")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=MODULE_TIMEOUT)
    parser.add_argument("-v", "--verbose", action="store_true", help="name each test")
    args = parser.parse_args(argv)

    if args.child:
        (module,) = args.modules
        summary = _run_one(module, not args.plain, 2 if args.verbose else 1)
        print("RESULT " + json.dumps(summary), flush=True)
        return 0

    bad = 0
    for module in args.modules:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", module]
        if args.plain:
            cmd.append("--plain")
        began = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired as exc:
            summary = {"module": module, "detection": not args.plain, "timed_out": args.timeout}
            print(json.dumps(summary), flush=True)
            sys.stderr.write((exc.stderr or b"")[-4000:].decode(errors="replace"))
            bad += 1
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(json.dumps({"module": module, "exit": proc.returncode}), flush=True)
            sys.stderr.write(proc.stderr[-4000:])
            bad += 1
            continue
        summary = json.loads(lines[-1][len("RESULT ") :])
        summary["seconds"] = round(time.monotonic() - began, 1)
        print(json.dumps(summary), flush=True)
        if summary["failed"]:
            bad += 1
            sys.stderr.write(proc.stderr[-8000:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""CPython's own lock suites pass inside ``deadlock_detection()`` (issue #16).

``deadlock_detection()`` swaps gilfree's locks in for ``threading``'s, so they
must be faithful drop-ins. ``tests/cpython_lock_suites.py`` runs
``test.test_threading``, ``test.test_queue`` and ``test.test_thread`` inside
the block in a CPython that ships its ``test`` package (pyenv's builds do; most
distribution builds do not), with gilfree from this checkout on ``PYTHONPATH``:
CPython 3.13 (the version issue #16 names) and the interpreter running pytest.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
RUNNER = os.path.join(HERE, "cpython_lock_suites.py")


def _python313() -> tuple[str | None, str]:
    """A CPython 3.13 with its test package, or None and why not."""
    if os.environ.get("GILFREE_TEST_PYTHONS"):
        return None, "make test-pythons: make test already ran the suites on CPython 3.13"
    candidates = [
        os.environ.get("GILFREE_CPYTHON313", ""),
        sys.executable if sys.version_info[:2] == (3, 13) else "",
        shutil.which("python3.13") or "",
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13.*/bin/python3.13"))),
        *sorted(glob.glob("/root/.pyenv/versions/3.13.*/bin/python3.13")),
    ]
    tried = []
    for exe in dict.fromkeys(c for c in candidates if c):
        tried.append(exe)
        probe = subprocess.run(
            [exe, "-c", "import sys, test.lock_tests; assert sys.version_info[:2] == (3, 13)"],
            capture_output=True,
            timeout=60,
        )
        if probe.returncode == 0:
            return exe, ""
    return None, f"no CPython 3.13 with its test package (tried {tried or 'none'})"


def _this_python() -> tuple[str | None, str]:
    """The interpreter running the tests, when it has its test package."""
    probe = subprocess.run(
        [sys.executable, "-c", "import test.lock_tests"], capture_output=True, timeout=60
    )
    if probe.returncode == 0:
        return sys.executable, ""
    return None, f"{sys.executable} has no test package"


@pytest.mark.slow
@pytest.mark.skip_in_test_pythons(
    "CPython's lock suites need a test package, here only in pyenv's 3.12.1 and 3.13.0; "
    "make test runs 3.13's (and 3.11's), 3.12's took over 4 min (its test_threading "
    "recursion test) of CI's 25; by hand: "
    "PYTHONPATH=src python3.12 tests/deadlock/cpython_lock_suites.py"
)
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("find", [_python313, _this_python], ids=["cpython-3.13", "this-python"])
def test_cpython_lock_suites_pass_under_deadlock_detection(find):
    exe, why = find()
    if exe is None:
        pytest.skip(why)
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run(
        [exe, RUNNER], capture_output=True, text=True, env=env, timeout=1700, cwd=HERE
    )
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [s["module"] for s in summaries] == [
        "test.test_threading",
        "test.test_queue",
        "test.test_thread",
    ], proc.stdout + proc.stderr[-4000:]
    for summary in summaries:
        assert summary.get("detection") is True
        assert summary.get("failed") == [], proc.stderr[-8000:]
        assert summary["run"] >= 20, summary  # the module really ran its tests
    assert proc.returncode == 0, proc.stderr[-8000:]

"""CPython's own ``test_concurrent_futures`` tests pass against ``gilfree.Executor`` (issue 13).

The tests ship with the interpreter (its ``test`` package), so they run under a
CPython 3.13 -- found as ``$GILFREE_CPYTHON313``, ``python3.13`` on PATH or a
pyenv 3.13 -- in a venv holding gilfree's dependencies, made once and cached
under ``~/.cache/gilfree-tests`` (``$GILFREE_TEST_CACHE`` overrides), with this
checkout's ``src`` on ``PYTHONPATH``. ``tests/cpython_futures_suite.py`` lists
which CPython tests run as written, which run adapted and which are skipped,
each with its reason; run it by hand for the details (``--list``, ``-v``).

Skipped, with the reason, when no CPython 3.13 with its ``test`` package is
installed or the venv cannot be made (no package index reachable).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "cpython_futures_suite.py"
#: The suite's tables name the tests of this CPython version's test package.
VERSION = (3, 13)
V = f"{VERSION[0]}.{VERSION[1]}"
#: One backend's run: ~1.5 min on a loaded 2-core machine when all pass; a
#: hang is cut by the suite's own per-test faulthandler limit first.
RUN_TIMEOUT_S = 420


def _candidates() -> list[str]:
    found = [os.environ.get("GILFREE_CPYTHON313", "")]
    found.append(shutil.which(f"python{V}") or "")
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found += sorted(glob.glob(f"{pyenv}/versions/{V}.*/bin/python"), reverse=True)
    return [c for c in dict.fromkeys(found) if c and os.access(c, os.X_OK)]


def _cpython313() -> str:
    """A CPython 3.13 that has CPython's test_concurrent_futures, or skip saying why."""
    if os.environ.get("GILFREE_TEST_PYTHONS"):
        pytest.skip(
            "make test-pythons: this runs CPython 3.13's suite whatever runs pytest, "
            "and make test already ran it"
        )
    tried = []
    for python in _candidates():
        probe = subprocess.run(
            [python, "-c", "import sys, test.test_concurrent_futures.util; print(sys.version)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0 and probe.stdout.startswith(f"{V}."):
            return python
        tried.append(f"{python}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    pytest.skip(
        f"needs CPython {V} with its test package (test.test_concurrent_futures); "
        f"set GILFREE_CPYTHON313 or install one with pyenv. Tried: "
        + ("; ".join(tried) or "none found")
    )


def _dependencies() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = list(tomllib.load(f)["project"]["dependencies"])
    # The runner counts worker processes with psutil (a test-only dependency).
    return [*deps, "psutil>=5.9"]


def _venv(python: str) -> Path:
    """A venv of ``python`` with gilfree's dependencies (not gilfree: it comes
    from this checkout's src), made once per interpreter and dependency list."""
    deps = _dependencies()
    key = hashlib.sha256("\n".join([os.path.realpath(python), *deps]).encode()).hexdigest()[:12]
    cache = Path(
        os.environ.get("GILFREE_TEST_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gilfree-tests"
    )
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"cpython{VERSION[0]}{VERSION[1]}-{key}"
    ready = venv / "gilfree-deps-installed"
    with open(cache / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest processes: one builds, one waits
        if ready.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a build cut short
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *deps],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.skip(
                    f"could not make the CPython {V} venv at {venv}: "
                    f"{' '.join(step[1:4])} failed: {done.stderr.strip()[-500:]}"
                )
        ready.write_text("\n".join(deps) + "\n")
    return venv


@pytest.fixture(scope="module")
def cpython313_venv() -> Path:
    return _venv(_cpython313())


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_cpython_concurrent_futures_suite(cpython313_venv: Path, backend: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    cmd = [str(cpython313_venv / "bin" / "python"), str(SUITE), "--backend", backend]
    # Its own session, so that on a timeout its workers go with it.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran past {RUN_TIMEOUT_S} s:\n{out[-6000:]}")
    if proc.returncode != 0:
        summary = out[out.rfind("== summary") :] if "== summary" in out else ""
        sys.stdout.write(out)  # shown by pytest with the failure: every traceback
        pytest.fail(
            f"CPython's test_concurrent_futures fails on gilfree.Executor(backend="
            f"{backend!r}) (exit code {proc.returncode}); rerun with\n  PYTHONPATH=src "
            f"{cmd[0]} tests/cpython_futures_suite.py --backend {backend} -v\n"
            + (summary or out[-6000:])
        )
    assert "== summary" in out and f"{backend}: " in out, out[-3000:]

"""What the planner's features say about the interpreter: a GIL build, or a
free-threaded one with the GIL off or switched back on."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

from gilfree.planner._features import Features, free_threaded_build, gil_enabled

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_gil_state_matches_the_interpreter() -> None:
    assert free_threaded_build() is FREE_THREADED
    if not FREE_THREADED:
        assert gil_enabled() is True
    else:
        assert gil_enabled() is sys._is_gil_enabled()


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded build (3.13t+)")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("setting", "expected"), [("0", False), ("1", True)])
def test_the_gil_is_read_at_call_time_not_at_build_time(setting: str, expected: bool) -> None:
    """PYTHON_GIL=1 turns the GIL back on in a free-threaded build: the build
    flag says nothing about whether it is on, gil_enabled() does."""
    code = (
        "from gilfree.planner._features import gil_enabled, free_threaded_build; "
        "print(gil_enabled(), free_threaded_build())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHON_GIL": setting},
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    ).stdout.split()
    assert out == [str(expected), "True"]


def test_features_default_to_a_gil_build() -> None:
    """Policy tables that say nothing about the interpreter describe a GIL build."""
    defaults = Features.__dataclass_fields__
    assert defaults["gil_enabled"].default is True
    assert defaults["free_threaded_build"].default is False

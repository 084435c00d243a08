"""Worker tracebacks name the user's real file and line, __main__ scripts included."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = textwrap.dedent(
    """
    import ctypes, traceback
    import gilfree

    def arr_in(x):
        if x == 3:
            raise ValueError("bad")
        return x

    def crash(x):
        if x == 1:
            ctypes.string_at(0)
        return x

    if __name__ == "__main__":
        try:
            gilfree.map(arr_in, range(5), backend="process")
        except ValueError as exc:
            print("".join(traceback.format_exception(exc)))
        out = gilfree.map(crash, range(3), backend="process", errors="return")
        print("CRASH", out[1])
    """
)


def test_a_main_function_traceback_names_the_script(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "<dynamic-code>" not in out
    # The worker's traceback points at the raise, with its source line.
    assert f'File "{script}", line 7, in arr_in' in out
    assert 'raise ValueError("bad")' in out
    # The crash stack of the segfault names the script too.
    crash = out[out.index("CRASH") :]
    assert "WorkerDied" in crash or "segmentation" in crash.lower()
    assert str(script) in crash and "crash" in crash

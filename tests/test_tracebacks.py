"""Worker tracebacks name the user's real file and line, __main__ scripts included."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

import gilfree

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


STACKS = textwrap.dedent(
    """
    import ctypes, os, time
    import gilfree

    def crash(x):
        if x == 1:
            ctypes.string_at(0)
        return x

    def hang(x):
        if x == 1:
            time.sleep(30)
        return x

    if __name__ == "__main__":
        died = gilfree.map(crash, range(3), backend="process", errors="return")[1]
        stopped = gilfree.map(hang, range(3), backend="process", timeout=1, errors="return")[1]
        print(died.stack)
        print("====")
        print(stopped.stack)
    """
)


def test_crash_and_timeout_stacks_show_the_tasks_frames_only(tmp_path):
    script = tmp_path / "stacks.py"
    script.write_text(STACKS)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100
    )
    assert proc.returncode == 0, proc.stderr
    died, stopped = proc.stdout.split("====")
    assert "in crash" in died and "in hang" in stopped
    for stack in (died, stopped):
        # Nothing from the worker loop, nor the caller's frames inherited at fork time.
        assert "_worker.py" not in stack and "popen_fork" not in stack
        assert "in <module>" not in stack and "_api.py" not in stack


def _os_exit_on_two(x):
    import os

    if x == 2:
        os._exit(4)
    return x


def _always_raises(x):
    raise ValueError(f"bad {x}")


def test_messages_say_what_happened_under_the_error_policy_and_retries():
    import gilfree

    with pytest.raises(gilfree.WorkerDied) as info:
        gilfree.map(_os_exit_on_two, range(5), backend="process", retries=2)
    exc = info.value
    assert "went on" not in str(exc)  # under errors="raise" the others were cancelled
    notes = "\n".join(getattr(exc, "__notes__", []))
    assert "3 attempts were made (retries=2)" in notes
    assert "errors='raise' stopped the job" in notes
    out = gilfree.map(_always_raises, [1, 2], backend="thread", retries=1, errors="return")
    assert all(isinstance(o, ValueError) for o in out)
    assert "2 attempts were made (retries=1)" in "\n".join(out[0].__notes__)
    assert not any("errors='raise'" in n for n in out[0].__notes__)


def _count_attempt(folder):
    with open(os.path.join(folder, f"attempt-{uuid.uuid4().hex}"), "w"):
        pass


def _raises_on_zero(args):
    folder, x = args
    if x == 0:
        _count_attempt(folder)
        raise ValueError(f"bad item {x}")
    return x


def _crashes_on_zero(args):
    folder, x = args
    if x == 0:
        _count_attempt(folder)
        os._exit(7)
    return x


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "fn, error", [(_raises_on_zero, "ValueError"), (_crashes_on_zero, "WorkerDied")]
)
def test_the_retry_note_counts_the_probes_attempt_on_auto(tmp_path, fn, error):
    """backend="auto"'s probe runs a failing item first; its attempt is one of
    the note's, and the note says the retries= the caller passed. (One function
    each: the planner keeps what it measured of a function for later maps.)"""
    items = [(str(tmp_path), x) for x in range(20)]
    out = gilfree.map(fn, items, retries=2, errors="return")
    assert out[1:] == list(range(1, 20))
    ran = len(list(tmp_path.glob("attempt-*")))
    assert ran == 3  # the first attempt and 2 retries
    note = "\n".join(getattr(out[0], "__notes__", []))
    assert f"{ran} attempts were made (retries=2)" in note, note
    assert note.count(error) == ran, note

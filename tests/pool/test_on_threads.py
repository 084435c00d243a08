"""OnThreads: a batch's calls on threads in one worker (run here in a child
interpreter: its crew threads and a late call's thread live on in it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)


def run(code: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=50
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_outcomes_are_per_call_and_a_late_call_stops_the_batch():
    out = run(
        """
        import pickle, threading, time
        from gilfree.pool import _on_threads, _worker

        release = threading.Event()

        def f(x):
            if x == 3:
                release.wait(30)  # late: past the 0.5 s timeout
            if x == 5:
                raise ValueError("five")
            time.sleep(0.05)
            return x * 10

        t = time.monotonic()
        outcomes = _on_threads.OnThreads(f, 0.5, threads=4)(list(range(40))).slots
        took = time.monotonic() - t
        kinds = [o[0] for o in outcomes]
        print(kinds[:6])
        print(0.5 <= took < 5, outcomes[0][1], "in f" in outcomes[3][1])
        print(kinds.count("late"), kinds.count("unstarted") > 0, kinds[-1])
        print(bool(_worker._must_retire))
        release.set()
        """
    )
    assert out[0] == "['ok', 'ok', 'ok', 'late', 'ok', 'failed']", out
    assert out[1:] == ["True 0 True", "1 True unstarted", "True"], out


def test_a_result_that_cannot_be_pickled_fails_its_call_only():
    out = run(
        """
        import pickle, threading
        from gilfree.pool import _on_threads, _worker

        outcomes = _on_threads.OnThreads(
            lambda x: threading.Lock() if x == 1 else x, None, threads=2
        )(list(range(3)))
        back = pickle.loads(pickle.dumps(outcomes))
        print([o[0] for o in back], back[0][1], back[2][1], "lock" in back[1][1])
        print(repr(_worker._must_retire))
        """
    )
    assert out == ["['ok', 'unpicklable', 'ok'] 0 2 True", "''"], out

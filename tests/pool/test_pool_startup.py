"""What a script's first map pays for beyond its work: no module it does not need."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import sys
import gilfree
import multiprocessing.process, multiprocessing.util  # what forking a worker needs
before = {{m for m in {mods} if m in sys.modules}}  # what this Python's stdlib brings along
assert gilfree.map(abs, [-1, -2, -3], backend="process", workers=2) == [1, 2, 3]
print(sorted(m for m in {mods} if m in sys.modules and m not in before))
"""


def test_a_forking_scripts_map_imports_neither_the_zygote_nor_multiprocessing_connection():
    # multiprocessing.connection (tempfile, shutil, random, bz2, lzma...) came in
    # through Process.join(timeout) at the first worker's exit: 4-12 ms a script.
    mods = ["multiprocessing.connection", "gilfree.pool._zygote", "subprocess"]
    if sys.version_info < (3, 14):
        # 3.14's multiprocessing.resource_tracker imports json, and forking a
        # Process loads it there: not ours to avoid.
        mods.append("json")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(mods=mods)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    # None of them comes with the map itself (subprocess comes with
    # multiprocessing.util, so it is in `before`).
    assert out.stdout.split("\n")[0] == "[]", out.stdout

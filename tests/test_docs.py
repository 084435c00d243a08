"""The documentation builds, and every ```python example in docs/*.md runs.

Each example runs as a script of its own in a fresh interpreter (so functions
defined in it live in ``__main__``, as in a user's script), in an empty
directory, under a timeout. An example passes when it exits with status 0:
examples check what they show with ``assert``. The site is built with
``mkdocs build --strict`` (warnings are errors, as ``make docs`` does).
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: A fenced block that starts at the beginning of a line with ```python.
_PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: Per example. They are written to take a second or two; the margin is for a
#: loaded two-core machine, where starting an interpreter alone can take 1 s.
EXAMPLE_TIMEOUT_S = 60
#: How long an example's workers get to exit after the example has.
LEFTOVER_GRACE_S = 5.0
#: The whole site (about 1-2 s when idle).
BUILD_TIMEOUT_S = 120


def python_blocks() -> list[tuple[str, str]]:
    """``(page:line, code)`` for every ```python block of docs/*.md, in page order."""
    blocks = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for match in _PYTHON_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((f"{page.name}:{line}", match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_the_docs_have_examples_on_every_page_that_shows_code():
    pages = {where.split(":")[0] for where, _ in BLOCKS}
    # The pages whose promises can be shown running; a page dropped from this
    # set by accident (a fence typo such as ```Python) would go untested.
    expected = {
        "index.md",
        "getting-started.md",
        "backends.md",
        "faults.md",
        "cli.md",
        "cache.md",
        "deadlocks.md",
    }
    assert expected <= pages, f"pages without a runnable example: {sorted(expected - pages)}"
    untested = [
        f"{p.name}:{text.count(chr(10), 0, m.start()) + 1}"
        for p in sorted(DOCS.glob("*.md"))
        for text in [p.read_text()]
        for m in re.finditer(r"^```(py|python3|pycon|Python)\b", text, re.MULTILINE)
    ]
    assert not untested, f"python code fenced so that it would not run: {untested}"


@pytest.mark.timeout(BUILD_TIMEOUT_S + 10)
def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install 'gilfree[docs]')")
    pytest.importorskip(
        "mkdocstrings_handlers.python",
        reason="mkdocstrings[python] is not installed (pip install 'gilfree[docs]')",
    )
    site = tmp_path / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    api = (site / "api" / "index.html").read_text()
    # Each public name has its entry: the SPEC's, and whatever gilfree exports.
    import gilfree
    import gilfree.errors

    spec = [
        "map",
        "imap",
        "Executor",
        "advise",
        "Plan",
        "share",
        "Lock",
        "RLock",
        "deadlock_detection",
    ]
    errors = set(gilfree.errors.__all__)
    for name in sorted(set(spec) | set(gilfree.__all__)):
        anchor = f"gilfree.errors.{name}" if name in errors else f"gilfree.{name}"
        assert f'id="{anchor}"' in api, f"gilfree.{name} is missing from the API reference"
    # ...generated from the docstring help() shows (its first paragraph, as text).
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", api)).split())
    for name in ["map", "imap", "Executor", "advise", "Plan", "share", "deadlock_detection"]:
        doc = getattr(gilfree, name).__doc__ or ""
        first = " ".join(doc.strip().split("\n\n")[0].replace("`", "").split())
        assert first, f"gilfree.{name} has no docstring"
        assert first in text, f"the docstring of gilfree.{name} is not in the API reference"


def _session_members(sid: int) -> dict[int, str]:
    """Live processes of session ``sid`` (the example and all it started), from /proc."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    members[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return members


def _wait_for_session_to_end(sid: int, grace: float) -> dict[int, str]:
    """What is still running of session ``sid`` after ``grace`` seconds (workers of
    an example that has exited notice their parent is gone and exit by themselves)."""
    deadline = time.monotonic() + grace
    while True:
        left = _session_members(sid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _segments_of(pid: int) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"gilfree-{pid}-"))
    except OSError:
        return []


@pytest.mark.timeout(EXAMPLE_TIMEOUT_S + 15)
@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_example_runs(where, code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))  # the checkout's gilfree
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hung example is killed with everything it started
    )
    try:
        out, err = proc.communicate(timeout=EXAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"{where}: still running after {EXAMPLE_TIMEOUT_S} s\n{out}\n{err}")
    left = _wait_for_session_to_end(proc.pid, LEFTOVER_GRACE_S)
    if left:
        for pid in left:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{code}\n--\n{out}\n{err}"
    # No worker outlives the example, and what it put in shared memory is gone.
    assert not left, f"{where} left processes behind: {left}"
    assert not _segments_of(proc.pid), f"{where} left segments: {_segments_of(proc.pid)}"


def test_the_options_page_is_generated_from_the_options_source():
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        import mkdocs_hooks
    finally:
        sys.path.remove(str(ROOT))
    from gilfree._options import options_table

    page = (ROOT / "docs" / "options.md").read_text()
    assert mkdocs_hooks.MARKER in page  # the table itself is not written in the page
    assert options_table() in mkdocs_hooks.on_page_markdown(page)

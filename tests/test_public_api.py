"""The public surface: every exported name exists, and importing gilfree starts nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gilfree


def test_every_exported_name_resolves():
    for name in gilfree.__all__:
        assert getattr(gilfree, name) is not None, name
    assert sorted(gilfree.__all__) == sorted(set(gilfree.__all__))


def test_errors_form_one_hierarchy():
    for name in [
        "WorkerDied",
        "TaskTimeout",
        "SerializationError",
        "DeadlockError",
        "ConfigurationError",
    ]:
        assert issubclass(getattr(gilfree, name), gilfree.GilfreeError)
    assert issubclass(gilfree.TaskTimeout, TimeoutError)
    assert issubclass(gilfree.ConfigurationError, ValueError)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        gilfree.no_such_thing  # noqa: B018


@pytest.mark.timeout(30)
def test_import_starts_nothing_and_loads_no_heavy_module():
    code = (
        "import sys, threading, gilfree, psutil; "
        "print(threading.active_count(), len(psutil.Process().children()), "
        "'numpy' in sys.modules, 'distributed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0", "False", "False"]

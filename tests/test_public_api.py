"""The public surface: every exported name exists, and importing gilfree starts nothing."""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys

import pytest

import gilfree
from gilfree._options import Options, option_docs


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
        "import sys, threading, gilfree; "
        "print(threading.active_count(), 'numpy' in sys.modules, "
        "'distributed' in sys.modules, 'cloudpickle' in sys.modules); "
        "import psutil; print(len(psutil.Process().children()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # cloudpickle too: tools run CPython's own suites with gilfree on a bare path.
    assert out.stdout.split() == ["1", "False", "False", "False", "0"]


# -- options: typed keyword parameters, one source ----------------------------------

_OPTION_DEFAULTS = {name: f.default for name, f in Options.__dataclass_fields__.items()}


@pytest.mark.parametrize(
    ("func", "extra", "missing"),
    [
        (gilfree.map, set(), {"ordered", "initializer", "initargs"}),
        (gilfree.imap, set(), {"initializer", "initargs"}),
        (gilfree.Executor, {"max_workers"}, {"ordered"}),
    ],
    ids=["map", "imap", "Executor"],
)
def test_every_option_is_a_typed_keyword_parameter_with_its_default(func, extra, missing):
    params = inspect.signature(func).parameters
    names = {n for n, p in params.items() if p.default is not inspect.Parameter.empty}
    assert names == (set(_OPTION_DEFAULTS) - missing) | extra
    for name in names - extra:
        p = params[name]
        assert p.default == _OPTION_DEFAULTS[name], name
        assert p.annotation is not inspect.Parameter.empty, name
        if name not in ("backend", "workers"):  # Executor(backend, workers) stay positional
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, name
    text = pydoc.render_doc(func, renderer=pydoc.plaintext)
    for name, _kind, _default, doc in option_docs():
        if name not in missing:
            assert name in text and doc.split(".")[0][:40] in " ".join(text.split()), name


def test_options_table_lists_every_option():
    from gilfree._options import options_table

    table = options_table()
    for name in _OPTION_DEFAULTS:
        assert f"| `{name}` |" in table

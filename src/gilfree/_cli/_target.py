"""Turn ``MODULE:FUNC`` into a callable.

``MODULE`` is either a dotted module name importable from the current
directory (or anywhere on ``sys.path``), or a path to a ``.py`` file.
``FUNC`` may be dotted too (``Class.method``, ``obj.attr``).

Process workers must be able to rebuild the function. A dotted module is
pickled by reference, so the current directory is put on ``PYTHONPATH`` for
workers started from a fresh interpreter. A module loaded from a file path
is registered with cloudpickle to travel *by value*: workers then need
neither the file's directory nor a free module name.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from . import UsageError


def load_target(spec: str) -> Callable[[Any], Any]:
    """Return the callable named by ``spec`` or raise :class:`UsageError`."""
    module_part, sep, func_part = spec.rpartition(":")
    if not sep or not module_part or not func_part:
        raise UsageError(
            f"{spec!r} is not MODULE:FUNC (for example mytasks:work or ./jobs.py:work)"
        )
    module = _load_module(module_part)
    obj: Any = module
    for name in func_part.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            where = getattr(module, "__file__", None) or module.__name__
            raise UsageError(f"module {module_part!r} has no function {func_part!r} ({where})")
    if not callable(obj):
        raise UsageError(f"{spec} is {_article(type(obj).__name__)}, not a function")
    return obj


def _load_module(name: str) -> ModuleType:
    if name.endswith(".py") or os.sep in name or (os.altsep and os.altsep in name):
        return _load_file(Path(name))
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # The console script, unlike `python -m`, does not look in the current directory.
        sys.path.insert(0, cwd)
    _add_to_pythonpath(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(f"no module named {name!r} in the current directory or on sys.path")
        raise UsageError(_import_failure(name, exc))
    except BaseException as exc:  # the module's own top-level code failed
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(_import_failure(name, exc))


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"no such module file: {str(path)!r}")
    path = path.resolve()
    module_name = path.stem if path.stem.isidentifier() else "gilfree_target"
    if module_name in sys.modules:  # don't shadow an imported module (json.py, test.py...)
        module_name = f"_gilfree_target_{module_name}"
    # Its siblings are importable from it, as when running `python path/to/file.py`.
    sys.path.insert(0, str(path.parent))
    _add_to_pythonpath(str(path.parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[module_name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(_import_failure(str(path), exc))
    try:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    except (ImportError, ValueError):  # pragma: no cover - cloudpickle is a dependency
        pass
    return module


def _add_to_pythonpath(directory: str) -> None:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if directory not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([*parts, directory])


def _import_failure(name: str, exc: BaseException) -> str:
    """One line: what failed while importing, and where in the user's code."""
    where = ""
    if isinstance(exc, SyntaxError):
        where = f" ({exc.filename}, line {exc.lineno})"
        what = f"SyntaxError: {exc.msg}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        user = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
        if user:
            where = f" ({user[-1].filename}, line {user[-1].lineno})"
        what = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot import {name!r}: {what}{where}"


def _article(noun: str) -> str:
    """'an int', 'a str': the article a type name takes."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"

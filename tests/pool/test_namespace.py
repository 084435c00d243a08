"""Functions of the caller's ``__main__`` share one namespace in a worker: what an
initializer sets, the tasks see; what the caller changes, arrives."""

from __future__ import annotations

import functools
import subprocess
import sys
import types

import pytest

from gilfree._calls import _StarCall
from gilfree.pool import _namespace

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def main(monkeypatch):
    module = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", module)
    monkeypatch.setattr(_namespace, "_sent", {})
    return vars(module)


def arrived(source: str, name: str, **globals_):
    """``name`` as cloudpickle delivers a function of __main__: its own namespace."""
    private = {"__name__": "__main__", **globals_}
    exec(source, private)
    return private[name]


SET = "def fill(n):\n    global TABLE\n    TABLE = list(range(n))\n"
GET = "def get(i):\n    return TABLE[i]\n"


def test_a_global_the_initializer_set_is_seen_by_a_task_sent_later(main):
    fill = _namespace.shared(arrived(SET, "fill", TABLE=None))
    fill(5)
    get = _namespace.shared(arrived(GET, "get", TABLE=None))  # the caller still has None
    assert get(3) == 3 and main["TABLE"] == [0, 1, 2, 3, 4]


def test_a_global_the_caller_changed_arrives(main):
    assert _namespace.shared(arrived("def f():\n    return K\n", "f", K=1))() == 1
    assert _namespace.shared(arrived("def g():\n    return K\n", "g", K=2))() == 2


def test_the_callers_first_value_replaces_what_the_worker_had(main):
    main["signal"] = "the worker's own"  # the fork server's -c code, say
    f = _namespace.shared(arrived("def f():\n    return signal\n", "f", signal="ours"))
    assert f() == "ours"


def test_helpers_and_recursion_move_with_the_function(main):
    source = (
        "def helper(i):\n    return TABLE[i]\n"
        "def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\n"
        "def task(i):\n    return helper(i) + fact(3)\n"
    )
    _namespace.shared(arrived(SET, "fill", TABLE=None))(4)
    task = _namespace.shared(arrived(source, "task", TABLE=None))
    assert task(2) == 2 + 6
    assert main["helper"].__globals__ is main and main["fact"].__globals__ is main


def test_partials_and_adapters_holding_a_function_are_rebound(main):
    fill = _namespace.shared(functools.partial(arrived(SET, "fill", TABLE=None), 3))
    fill()

    adapter = _namespace.shared(_StarCall(arrived(GET, "get", TABLE=None)))
    assert adapter(((2,), {})) == 2

    class Users:  # a callable of the user's own, with an ``fn`` of its own: left alone
        def __init__(self, fn):
            self.fn = fn

    theirs = arrived(GET, "get", TABLE=None)
    assert _namespace.shared(Users(theirs)).fn is theirs


def test_functions_of_other_modules_are_left_alone(main):
    assert _namespace.shared(len) is len
    assert _namespace.shared(functools.reduce) is functools.reduce
    f = arrived(GET, "get", TABLE=[7])
    f.__module__ = "somewhere"
    assert _namespace.shared(f) is f


SCRIPT = """
import sys, threading, time
import gilfree

TABLE = None
CONFIG = 1


def init(n):
    global TABLE
    TABLE = {i: i * 100 for i in range(n)}


def helper(x):
    return TABLE[x]


def lookup(x):
    return helper(x) + CONFIG


if __name__ == "__main__":
    if sys.argv[1] == "zygote":  # a second thread: workers come from the fork server
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
    for backend in ("process", "auto"):
        with gilfree.Executor(backend=backend, workers=2, initializer=init, initargs=(50,)) as ex:
            print(ex.submit(lookup, 3).result(), list(ex.map(lookup, range(3))))
            CONFIG = 2

            def later(x):
                return lookup(x) * 10

            print(list(ex.map(later, range(3))))
            CONFIG = 1
"""


@pytest.mark.parametrize("path", ["fork", "zygote"])
def test_a_scripts_initializer_sets_what_its_tasks_read(path, tmp_path):
    """The helper-found case: ``TABLE`` stayed None in every task."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), path], capture_output=True, text=True, timeout=100
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["301 [1, 101, 201]", "[20, 1020, 2020]"] * 2

"""Bytecode findings, with line numbers, for the shapes of code the planner meets."""

from __future__ import annotations

import functools
import hashlib
import socket
import subprocess
import time
import zlib
from hashlib import sha256

import numpy as np

from gilfree.planner._bytecode import analyze


def _line(fn, marker: str) -> int:
    """Line number of the first source line of ``fn`` containing ``marker``."""
    import inspect

    src, first = inspect.getsourcelines(fn)
    for k, text in enumerate(src):
        if marker in text:
            return first + k
    raise AssertionError(f"{marker!r} not in {fn.__name__}")


def _found(fn):
    return {(f.kind, f.what, f.line) for f in analyze(fn).findings}


def sleeper(x):
    time.sleep(x)  # SLEEP
    return x


def cpu_loop(n):
    total = 0
    for i in range(n):  # LOOP
        total += i * i
    return total


def while_loop(n):
    while n > 0:  # WHILE
        n -= 1
    return n


def hasher(data):
    a = hashlib.sha256(data).hexdigest()  # HASHLIB
    b = sha256(data).digest()  # IMPORTED
    c = zlib.compress(data)  # ZLIB
    return a, b, c


def numpy_user(a):
    return np.linalg.norm(np.sort(a))  # NUMPY


def talker(addr):
    with socket.create_connection(addr) as s:  # SOCKET
        s.sendall(b"ping")  # SENDALL
        return s.recv(4)  # RECV


def shell(cmd):
    return subprocess.run(cmd, check=False)  # SUBPROCESS


def reader(path):
    with open(path) as fh:  # OPEN
        return fh.read()


def _helper(x):
    time.sleep(x)  # HELPER_SLEEP


def calls_helper(x):
    for _ in range(3):  # LOOP_WITH_IO
        _helper(x)
    return x


def comprehension(xs):
    return [x * x for x in xs]  # COMP


def loop_around_hash(chunks):
    out = []
    for c in chunks:  # HASH_LOOP
        out.append(hashlib.md5(c).hexdigest())
    return out


def test_sleep_is_io_with_its_line() -> None:
    assert ("io", "time.sleep", _line(sleeper, "# SLEEP")) in _found(sleeper)


def test_pure_python_loops_with_their_lines() -> None:
    assert _found(cpu_loop) == {("python_loop", "loop", _line(cpu_loop, "# LOOP"))}
    assert _found(while_loop) == {("python_loop", "loop", _line(while_loop, "# WHILE"))}


def test_gil_releasing_c_calls() -> None:
    found = _found(hasher)
    assert ("releases_gil", "hashlib.sha256", _line(hasher, "# HASHLIB")) in found
    assert ("releases_gil", "zlib.compress", _line(hasher, "# ZLIB")) in found
    imported = [f for f in analyze(hasher).findings if f.line == _line(hasher, "# IMPORTED")]
    assert imported and imported[0].kind == "releases_gil"
    assert "_hashlib" in imported[0].what  # resolved through the module's globals
    kinds = {(f.kind, f.line) for f in analyze(numpy_user).findings}
    assert kinds == {("releases_gil", _line(numpy_user, "# NUMPY"))}
    assert any("numpy" in f.what for f in analyze(numpy_user).findings)


def test_socket_subprocess_and_files() -> None:
    found = _found(talker)
    assert ("io", "socket.create_connection", _line(talker, "# SOCKET")) in found
    methods = {f.what: f for f in analyze(talker).findings if not f.confident}
    assert methods["s.sendall"].line == _line(talker, "# SENDALL")
    assert methods["s.recv"].line == _line(talker, "# RECV")
    assert ("io", "subprocess.run", _line(shell, "# SUBPROCESS")) in _found(shell)
    assert ("io", "open", _line(reader, "# OPEN")) in _found(reader)


def test_follows_calls_into_the_same_module() -> None:
    findings = analyze(calls_helper).findings
    helper_sleep = [f for f in findings if f.kind == "io"]
    assert helper_sleep and helper_sleep[0].line == _line(_helper, "# HELPER_SLEEP")
    assert helper_sleep[0].function == "_helper"
    # The loop calls a helper that sleeps, so it is not a pure-Python loop.
    assert not [f for f in findings if f.kind == "python_loop"]


def test_loop_with_a_releasing_call_is_not_pure_python() -> None:
    findings = analyze(loop_around_hash).findings
    assert [f.kind for f in findings] == ["releases_gil"]


def test_nested_comprehension_is_read() -> None:
    findings = analyze(comprehension).findings
    assert [(f.kind, f.what, f.line) for f in findings] == [
        ("python_loop", "list comprehension", _line(comprehension, "# COMP"))
    ]


def test_lambda_partial_bound_method_and_builtins() -> None:
    assert analyze(lambda x: x * x).findings == []
    part = functools.partial(sleeper)
    assert ("io", "time.sleep", _line(sleeper, "# SLEEP")) in _found(part)

    class Worker:
        def run(self, n):
            return cpu_loop(n)

        def __call__(self, x):
            time.sleep(x)

    assert any(f.kind == "python_loop" for f in analyze(Worker().run).findings)
    assert any(f.kind == "io" for f in analyze(Worker()).findings)
    (only,) = analyze(hashlib.sha256).findings
    assert only.kind == "releases_gil" and only.line is None
    (none,) = analyze(len).findings
    assert none.kind == "no_bytecode"


def test_depth_is_bounded() -> None:
    assert analyze(calls_helper, max_depth=0).of_kind("io") == []


def test_recursion_terminates() -> None:
    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    assert analyze(fact).findings == []


def imports_inside(a):
    from hashlib import sha1

    import numpy as npx

    return npx.sort(a), sha1(a)  # LOCAL_IMPORTS


def test_imports_inside_the_function_are_resolved() -> None:
    found = analyze(imports_inside).findings
    line = _line(imports_inside, "# LOCAL_IMPORTS")
    assert {(f.kind, f.line) for f in found} == {("releases_gil", line)}
    whats = " ".join(f.what for f in found)
    assert "numpy.sort" in whats and "sha1" in whats

"""Bytecode findings, with line numbers, for the shapes of code the planner meets.

One table, the same on every CPython from 3.11 to 3.15 and on free-threaded
builds (``make test-pythons`` runs it on each): what the reader must find in a
function does not depend on how that Python compiles it. The bytecode does:
3.12 inlines comprehensions, 3.13 fuses loads and stores into super-instructions,
3.14 borrows references (LOAD_FAST_BORROW). So an opcode the reader has not
been told about fails ``test_every_opcode_of_this_python_is_known`` instead of
silently hiding calls.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import inspect
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from hashlib import sha256

import numpy as np
import pytest

from gilfree.planner import _opcodes
from gilfree.planner._bytecode import analyze
from gilfree.planner._opcodes import unclassified_opcodes


def _line(fn, marker: str) -> int:
    """Line number of the first source line of ``fn`` containing ``marker``."""
    src, first = inspect.getsourcelines(fn)
    for k, text in enumerate(src):
        if marker in text:
            return first + k
    raise AssertionError(f"{marker!r} not in {fn.__name__}")


def _found(fn) -> set[tuple[str, str, int | None, bool]]:
    """``(kind, name as written, line, confident)``: a resolved name's qualified
    name in parentheses ("sha256 (_hashlib.openssl_sha256)") depends on the
    build, so it is checked apart."""
    return {(f.kind, f.what.split(" (")[0], f.line, f.confident) for f in analyze(fn).findings}


# ---- the shapes of code ----------------------------------------------------------


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


def stored_then_used(addr):
    conn = socket.create_connection(addr); conn.sendall(b"x")  # noqa: E702 (STORE_LOAD)
    return conn


def two_loads(data, s):
    return data, s.recv(4)  # LOAD_LOAD


def recv_in_finally(data, s):
    try:
        data = data.strip()
    finally:
        # The exception path's copy of this line is not borrowed on 3.14+:
        # LOAD_FAST_LOAD_FAST there, LOAD_FAST_BORROW_LOAD_FAST_BORROW here.
        data = (data, s.recv(4))  # FINALLY_RECV
    return data


def unpacked(pair):
    s, data = pair  # STORE_FAST_STORE_FAST on 3.13+
    return s.sendall(data)  # UNPACKED


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


def set_and_dict(xs):
    a = {x % 7 for x in xs}  # SETCOMP
    b = {x: x for x in xs}  # DICTCOMP
    return a, b


def generator(xs):
    return sum(x * x for x in xs)  # GENEXP


def loop_around_hash(chunks):
    out = []
    for c in chunks:
        out.append(hashlib.md5(c).hexdigest())  # HASH_LOOP
    return out


def imports_inside(a):
    from hashlib import sha1

    import numpy as npx

    return npx.sort(a), sha1(a)  # LOCAL_IMPORTS


def import_then_call(a):
    import zlib as z; return z.compress(a)  # noqa: E702, I001 (IMPORT_CALL)


def nested_function(xs):
    def inner(x):
        time.sleep(x)  # INNER_SLEEP

    for x in xs:  # OUTER_LOOP
        inner(x)


# (function, [(kind, name as written, marker, confident)]): the findings, all of them.
TABLE: list[tuple[Callable, list[tuple[str, str, str, bool]]]] = [
    (sleeper, [("io", "time.sleep", "# SLEEP", True)]),
    (cpu_loop, [("python_loop", "loop", "# LOOP", True)]),
    (while_loop, [("python_loop", "loop", "# WHILE", True)]),
    (hasher, [
        ("releases_gil", "hashlib.sha256", "# HASHLIB", True),
        ("releases_gil", "sha256", "# IMPORTED", True),
        ("releases_gil", "zlib.compress", "# ZLIB", True),
        # .hexdigest()/.digest() on the result: resolved chains end at the call
    ]),
    (numpy_user, [
        ("releases_gil", "np.linalg.norm", "# NUMPY", True),
        ("releases_gil", "np.sort", "# NUMPY", True),
    ]),
    (talker, [
        ("io", "socket.create_connection", "# SOCKET", True),
        ("io", "s.sendall", "# SENDALL", False),
        ("io", "s.recv", "# RECV", False),
    ]),
    (stored_then_used, [
        ("io", "socket.create_connection", "(STORE_LOAD)", True),
        ("io", "conn.sendall", "(STORE_LOAD)", False),
    ]),
    (two_loads, [("io", "s.recv", "# LOAD_LOAD", False)]),
    (recv_in_finally, [("io", "s.recv", "# FINALLY_RECV", False)]),
    (unpacked, [("io", "s.sendall", "# UNPACKED", False)]),
    (shell, [("io", "subprocess.run", "# SUBPROCESS", True)]),
    (reader, [("io", "open", "# OPEN", True)]),
    (comprehension, [("python_loop", "list comprehension", "# COMP", True)]),
    (set_and_dict, [
        ("python_loop", "set comprehension", "# SETCOMP", True),
        ("python_loop", "dict comprehension", "# DICTCOMP", True),
    ]),
    (generator, [("python_loop", "generator expression", "# GENEXP", True)]),
    (loop_around_hash, [("releases_gil", "hashlib.md5", "# HASH_LOOP", True)]),
    (imports_inside, [
        ("releases_gil", "npx.sort", "# LOCAL_IMPORTS", True),
        ("releases_gil", "sha1", "# LOCAL_IMPORTS", True),
    ]),
    (import_then_call, [("releases_gil", "z.compress", "(IMPORT_CALL)", True)]),
]


@pytest.mark.parametrize(("fn", "expected"), TABLE, ids=[fn.__name__ for fn, _ in TABLE])
def test_findings(fn, expected) -> None:
    want = {(kind, what, _line(fn, marker), sure) for kind, what, marker, sure in expected}
    assert _found(fn) == want, f"on Python {sys.version.split()[0]}"


def test_the_table_exercises_every_fused_instruction_of_this_python() -> None:
    """Super-instructions this interpreter emits are read by the table above,
    so a fused load or store cannot hide a call on any version."""
    fused_here = {name for name in _opcodes._FUSED if name in dis.opmap}
    used: set[str] = set()
    for fn, _ in TABLE:
        used |= {ins.opname for ins in dis.get_instructions(fn)}
    missing = fused_here - used
    assert not missing, f"no function in TABLE compiles to {sorted(missing)} here"


def test_every_opcode_of_this_python_is_known() -> None:
    unknown = unclassified_opcodes()
    assert unknown == [], (
        f"Python {sys.version.split()[0]} has opcodes the bytecode reader does not classify: "
        f"{unknown}. Decide for each whether it loads a name, fuses instructions, jumps back "
        "or can be ignored, and add it to the right set in gilfree/planner/_opcodes.py."
    )


def test_a_new_opcode_is_reported() -> None:
    assert unclassified_opcodes(["LOAD_FAST", "LOAD_FAST_TELEPORT"]) == ["LOAD_FAST_TELEPORT"]


def test_each_opcode_has_one_role() -> None:
    roles = [
        _opcodes._GLOBAL_HEADS, _opcodes._CELL_HEADS, _opcodes._LOCAL_HEADS,
        _opcodes._ATTRS, _opcodes._STORES, set(_opcodes._FUSED), _opcodes._IMPORTS,
        _opcodes._BACKWARD_JUMPS, set(_opcodes._APPENDS), _opcodes._CONSTS,
        _opcodes._TRANSPARENT, _opcodes._OTHER,
    ]
    assert sum(len(r) for r in roles) == len(_opcodes.KNOWN_OPCODES)


def test_resolved_names_say_what_they_are() -> None:
    imported = [f for f in analyze(hasher).findings if f.line == _line(hasher, "# IMPORTED")]
    assert "_hashlib" in imported[0].what  # resolved through the module's globals
    assert all("numpy" in f.what for f in analyze(numpy_user).findings)
    assert any("numpy" in f.what for f in analyze(imports_inside).findings)


def test_follows_calls_into_the_same_module() -> None:
    findings = analyze(calls_helper).findings
    helper_sleep = [f for f in findings if f.kind == "io"]
    assert helper_sleep and helper_sleep[0].line == _line(_helper, "# HELPER_SLEEP")
    assert helper_sleep[0].function == "_helper"
    # The loop calls a helper that sleeps, so it is not a pure-Python loop.
    assert not [f for f in findings if f.kind == "python_loop"]


def test_a_nested_function_is_read() -> None:
    findings = analyze(nested_function).findings
    assert ("io", _line(nested_function, "# INNER_SLEEP")) in [(f.kind, f.line) for f in findings]


def test_lambda_partial_bound_method_and_builtins() -> None:
    assert analyze(lambda x: x * x).findings == []
    part = functools.partial(sleeper)
    assert ("io", "time.sleep", _line(sleeper, "# SLEEP"), True) in _found(part)

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

"""Read a function's bytecode with :mod:`dis` and say what kind of work it does.

This is the *static* half of the planner: it never calls the function. It walks
the function's code object, the code objects nested in it (comprehensions,
inner functions) and the plain functions of the same module that it calls, to a
bounded depth, and reports with line numbers:

* ``io`` -- calls that block on I/O (sleep, sockets, select, files, subprocess,
  http/urllib/requests, database drivers). A thread blocked there has released
  the GIL, so threads overlap such calls.
* ``releases_gil`` -- calls into C code known to release the GIL on large inputs
  (hashlib, zlib/bz2/lzma, NumPy). Threads can run those on several cores.
* ``python_loop`` -- loops whose body makes neither kind of call: pure-Python
  work that holds the GIL, which only processes can spread over cores.

Names are resolved through the function's globals and closure where that is
safe (modules and classes only: ``getattr`` on arbitrary objects could run
code); a method called on a local object is classified by its name alone and
marked ``confident=False``. The findings are hints: the probe's measurements
overrule them (see ``_model``).
"""

from __future__ import annotations

import builtins
import dis
import functools
import inspect
import itertools
import sys
import types
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

# How far we follow calls into other functions of the function's own module.
# Three levels covers "task -> helper -> inner helper" without walking a whole
# program; deeper code is still measured by the probe.
MAX_DEPTH = 3
# Upper bound on code objects visited, so a huge module cannot make advise slow.
MAX_CODE_OBJECTS = 64

# Qualified-name prefixes of calls that block on I/O -> what they wait for.
IO_CALLS: dict[str, str] = {
    "time.sleep": "sleeps",
    "socket": "waits on a socket",
    "_socket": "waits on a socket",
    "select": "waits in select",
    "selectors": "waits in select",
    "ssl": "waits on a TLS socket",
    "subprocess": "waits for a subprocess",
    "os.system": "waits for a subprocess",
    "os.popen": "waits for a subprocess",
    "os.wait": "waits for a subprocess",
    "os.waitpid": "waits for a subprocess",
    "posix.system": "waits for a subprocess",
    "posix.waitpid": "waits for a subprocess",
    "io.open": "opens a file",
    "builtins.open": "opens a file",
    "_io.open": "opens a file",
    "os.read": "reads a file descriptor",
    "os.write": "writes a file descriptor",
    "posix.read": "reads a file descriptor",
    "posix.write": "writes a file descriptor",
    "shutil.copy": "copies files",
    "shutil.copyfile": "copies files",
    "shutil.copyfileobj": "copies files",
    "urllib.request": "makes an HTTP request",
    "urllib3": "makes an HTTP request",
    "http.client": "makes an HTTP request",
    "requests": "makes an HTTP request",
    "httpx": "makes an HTTP request",
    "ftplib": "talks to an FTP server",
    "smtplib": "talks to a mail server",
    "sqlite3": "queries a database",
    "_sqlite3": "queries a database",
    "psycopg": "queries a database",
    "psycopg2": "queries a database",
    "pymysql": "queries a database",
    "MySQLdb": "queries a database",
    "redis": "talks to a Redis server",
    "pymongo": "queries a database",
    "threading.Event.wait": "waits on an event",
    "queue.Queue.get": "waits on a queue",
}

# Qualified-name prefixes of C code that releases the GIL on large inputs.
RELEASING_CALLS: dict[str, str] = {
    "hashlib": "hashes in C",
    "_hashlib": "hashes in C",
    "_blake2": "hashes in C",
    "_sha256": "hashes in C",
    "_sha512": "hashes in C",
    "_sha1": "hashes in C",
    "_md5": "hashes in C",
    "_sha3": "hashes in C",
    "zlib": "compresses in C",
    "bz2": "compresses in C",
    "_bz2": "compresses in C",
    "lzma": "compresses in C",
    "_lzma": "compresses in C",
    "numpy": "runs NumPy code in C",
    "scipy": "runs SciPy code in C",
    "cv2": "runs OpenCV code in C",
    "PIL": "runs Pillow code in C",
}

# Method names that, on an object we cannot resolve, most likely do I/O or
# release the GIL. Generic names (get, update, send on generators) are left
# out on purpose: a wrong guess costs more than a missed one, and the probe
# measures the truth anyway.
IO_METHODS: dict[str, str] = {
    name: "probably does I/O"
    for name in (
        "recv",
        "recv_into",
        "recvfrom",
        "sendall",
        "sendto",
        "accept",
        "connect",
        "makefile",
        "urlopen",
        "getresponse",
        "readline",
        "readlines",
        "readinto",
        "read_text",
        "read_bytes",
        "write_text",
        "write_bytes",
        "execute",
        "executemany",
        "fetchone",
        "fetchall",
        "fetchmany",
        "communicate",
    )
}
RELEASING_METHODS: dict[str, str] = {
    name: "probably runs C code that releases the GIL"
    for name in ("hexdigest", "digest", "compress", "decompress")
}


@dataclass(frozen=True)
class Finding:
    """One thing the bytecode shows, with where it is."""

    kind: str  # "io" | "releases_gil" | "python_loop" | "no_bytecode"
    what: str  # e.g. "time.sleep", "for loop", "list comprehension"
    line: int | None
    function: str  # qualified name of the code object it was found in
    filename: str
    detail: str  # a plain sentence for people
    confident: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else "no line"


@dataclass
class Analysis:
    """Everything the bytecode reading found for one function."""

    function: str
    findings: list[Finding] = field(default_factory=list)
    visited: int = 0  # code objects read

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def has_io(self) -> bool:
        return any(f.kind == "io" for f in self.findings)

    @property
    def has_releasing(self) -> bool:
        return any(f.kind == "releases_gil" for f in self.findings)

    @property
    def has_python_loop(self) -> bool:
        return any(f.kind == "python_loop" for f in self.findings)


def unwrap_callable(fn: Any) -> tuple[types.FunctionType | None, Any]:
    """The plain Python function behind ``fn`` (partial, bound method, callable
    object, decorated function) or ``None`` when there is no bytecode to read;
    also the object to name in messages."""
    seen = 0
    obj = fn
    while seen < 8:
        seen += 1
        if isinstance(obj, functools.partial):
            obj = obj.func
        elif isinstance(obj, types.MethodType):
            obj = obj.__func__
        elif isinstance(obj, types.FunctionType):
            return obj, fn
        elif isinstance(obj, type):
            return None, fn
        else:
            call = inspect.getattr_static(type(obj), "__call__", None)
            if not isinstance(call, types.FunctionType):
                return None, fn
            obj = call
    return None, fn


def qualified_name(obj: Any) -> str | None:
    """``module.qualname`` of a module, class or function; None for others."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if isinstance(name, str):
        if not isinstance(module, str) or not module:
            self_mod = getattr(getattr(obj, "__self__", None), "__name__", None)
            module = self_mod if isinstance(self_mod, str) else "builtins"
        return f"{module}.{name}"
    return None


def _match(table: dict[str, str], qualname: str) -> str | None:
    parts = qualname.split(".")
    for end in range(len(parts), 0, -1):
        hit = table.get(".".join(parts[:end]))
        if hit is not None:
            return hit
    return None


def classify_name(qualname: str) -> tuple[str, str] | None:
    """``(kind, why)`` for a fully qualified callable name, or None."""
    why = _match(IO_CALLS, qualname)
    if why is not None:
        return "io", why
    why = _match(RELEASING_CALLS, qualname)
    if why is not None:
        return "releases_gil", why
    return None


def analyze(fn: Any, *, max_depth: int = MAX_DEPTH) -> Analysis:
    """Read ``fn``'s bytecode (and what it calls in its own module)."""
    func, shown = unwrap_callable(fn)
    target = shown.func if isinstance(shown, functools.partial) else shown
    name = qualified_name(target) or type(target).__name__
    analysis = Analysis(function=name)
    if func is None:
        # A builtin or C callable: no bytecode, but its name may say enough.
        qual = qualified_name(target) or repr(target)
        hit = classify_name(qual)
        if hit is not None:
            kind, why = hit
            analysis.findings.append(
                Finding(kind, qual, None, qual, "", f"{qual} is C code: it {why}.")
            )
        else:
            analysis.findings.append(
                Finding(
                    "no_bytecode",
                    qual,
                    None,
                    qual,
                    "",
                    f"{qual} has no Python bytecode to read; only the measurement can tell.",
                )
            )
        return analysis
    _Walker(analysis, func.__module__, max_depth).walk_function(func, depth=0)
    return analysis


class _Walker:
    def __init__(self, analysis: Analysis, module: str | None, max_depth: int) -> None:
        self.analysis = analysis
        self.module = module
        self.max_depth = max_depth
        self.seen: set[int] = set()
        # id(code) -> (has_io, has_releasing) for followed functions, so a loop
        # that calls a helper doing I/O is not called "pure Python".
        self.summary: dict[int, tuple[bool, bool]] = {}

    def walk_function(self, func: types.FunctionType, depth: int) -> tuple[bool, bool]:
        closure: dict[str, Any] = {}
        if func.__closure__:
            for var, cell in zip(func.__code__.co_freevars, func.__closure__, strict=False):
                try:
                    closure[var] = cell.cell_contents
                except ValueError:  # empty cell
                    pass
        return self.walk_code(func.__code__, func.__globals__, closure, depth)

    def walk_code(
        self, code: types.CodeType, globs: dict[str, Any], closure: dict[str, Any], depth: int
    ) -> tuple[bool, bool]:
        if id(code) in self.summary:
            return self.summary[id(code)]
        if id(code) in self.seen or len(self.seen) >= MAX_CODE_OBJECTS:
            return (False, False)
        self.seen.add(id(code))
        self.analysis.visited += 1
        self.summary[id(code)] = (False, False)  # recursion guard

        instructions = _ops(code)
        marks: list[tuple[int, str]] = []  # (offset, kind) of io/releasing calls
        found: list[Finding] = []
        for offset, dotted, obj, resolved, line in _references(instructions, globs, closure):
            finding, kind = self._classify(code, dotted, obj, resolved, line, globs, depth)
            if finding is not None:
                found.append(finding)
            if kind is not None:
                marks.append((offset, kind))
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                io, rel = self.walk_code(const, globs, {}, depth)
                # A nested function or comprehension counts where it is created.
                offset = _make_function_offset(instructions, const)
                if offset is not None and (io or rel):
                    marks.append((offset, "io" if io else "releases_gil"))
        for start, end, line in _loops(instructions):
            if any(start <= off <= end for off, _ in marks):
                continue
            what = _loop_name(code, instructions, start, end)
            found.append(
                Finding(
                    "python_loop",
                    what,
                    line,
                    code.co_qualname,
                    code.co_filename,
                    f"{what} at line {line} in {code.co_qualname} makes no I/O or "
                    "GIL-releasing call: pure-Python work that holds the GIL.",
                )
            )
        self.analysis.findings.extend(found)
        result = (
            any(k == "io" for _, k in marks),
            any(k == "releases_gil" for _, k in marks),
        )
        self.summary[id(code)] = result
        return result

    def _classify(
        self,
        code: types.CodeType,
        dotted: str,
        obj: Any,
        resolved: bool,
        line: int | None,
        globs: dict[str, Any],
        depth: int,
    ) -> tuple[Finding | None, str | None]:
        where = code.co_qualname
        if resolved:
            if isinstance(obj, types.FunctionType) and obj.__module__ == self.module:
                if depth < self.max_depth:
                    io, rel = self.walk_function(obj, depth + 1)
                    return None, ("io" if io else "releases_gil" if rel else None)
                return None, None
            qual = qualified_name(obj)
            if qual is None:
                return None, None
            hit = classify_name(qual) or classify_name(dotted)
            if hit is None:
                return None, None
            kind, why = hit
            plain = classify_name(dotted) or getattr(builtins, dotted, None) is obj
            shown = dotted if plain else f"{dotted} ({qual})"
            return (
                Finding(
                    kind,
                    shown,
                    line,
                    where,
                    code.co_filename,
                    f"{shown} at line {line} {why}"
                    + (
                        " (it can release the GIL on large inputs)."
                        if kind == "releases_gil"
                        else " (a thread blocked there lets the others run)."
                    ),
                ),
                kind,
            )
        method = dotted.rsplit(".", 1)[-1] if "." in dotted else None
        if method is None:
            return None, None
        for kind, table in (("io", IO_METHODS), ("releases_gil", RELEASING_METHODS)):
            why = table.get(method)
            if why is not None:
                return (
                    Finding(
                        kind,
                        dotted,
                        line,
                        where,
                        code.co_filename,
                        f".{method}() at line {line} {why}.",
                        confident=False,
                    ),
                    kind,
                )
        return None, None


# What the reader does with each opcode. Every name in ``dis.opmap`` of CPython
# 3.11 to 3.15 (free-threaded builds included) is in exactly one of these sets;
# tests/test_planner_bytecode.py fails on an interpreter whose ``dis.opmap`` has a
# name that is in none of them, because an opcode a new Python adds may load a
# name, fuse two instructions or jump back (3.13's LOAD_FAST_LOAD_FAST and
# 3.14's LOAD_FAST_BORROW each made the reader miss calls until it knew them).
_GLOBAL_HEADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_CELL_HEADS = frozenset({"LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FROM_DICT_OR_DEREF"})
_LOCAL_HEADS = frozenset(
    {"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_FAST_AND_CLEAR"}
)
_ATTRS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_STORES = frozenset({"STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL"})
# Super-instructions (3.13+): two instructions in one, ``argval`` the pair of
# names in the order the two halves run.
_FUSED: dict[str, tuple[str, str]] = {
    "LOAD_FAST_LOAD_FAST": ("LOAD_FAST", "LOAD_FAST"),
    "LOAD_FAST_BORROW_LOAD_FAST_BORROW": ("LOAD_FAST_BORROW", "LOAD_FAST_BORROW"),
    "STORE_FAST_LOAD_FAST": ("STORE_FAST", "LOAD_FAST"),
    "STORE_FAST_STORE_FAST": ("STORE_FAST", "STORE_FAST"),
}
_IMPORTS = frozenset({"IMPORT_NAME", "IMPORT_FROM"})
_BACKWARD_JUMPS = frozenset(
    {
        "JUMP_BACKWARD",
        "JUMP_BACKWARD_NO_INTERRUPT",
        "INSTRUMENTED_JUMP_BACKWARD",
        "POP_JUMP_BACKWARD_IF_FALSE",
        "POP_JUMP_BACKWARD_IF_TRUE",  # 3.11 only
        "POP_JUMP_BACKWARD_IF_NONE",
        "POP_JUMP_BACKWARD_IF_NOT_NONE",
    }
)
# What an inlined comprehension (3.12+, PEP 709) appends to.
_APPENDS = {
    "LIST_APPEND": "list comprehension",
    "SET_ADD": "set comprehension",
    "MAP_ADD": "dict comprehension",
}
_CONSTS = frozenset({"LOAD_CONST"})  # a nested code object is created where it is loaded
# Prefixes of an operand, invisible to the reader: it neither ends nor extends a chain.
_TRANSPARENT = frozenset({"EXTENDED_ARG"})
# Looked at and irrelevant: they end a dotted name (``a.b`` then a call, a store,
# arithmetic...). Pseudo-instructions (JUMP, SETUP_*) never reach a code object;
# INSTRUMENTED_* appear only while sys.monitoring is on, and dis shows the
# plain instruction even then.
_OTHER_NAMES = """
    ANNOTATIONS_PLACEHOLDER ASYNC_GEN_WRAP BEFORE_ASYNC_WITH BEFORE_WITH BINARY_OP
    BINARY_SLICE BINARY_SUBSCR BUILD_CONST_KEY_MAP BUILD_INTERPOLATION BUILD_LIST BUILD_MAP
    BUILD_SET BUILD_SLICE BUILD_STRING BUILD_TEMPLATE BUILD_TUPLE CACHE CALL
    CALL_FUNCTION_EX CALL_INTRINSIC_1 CALL_INTRINSIC_2 CALL_KW CHECK_EG_MATCH
    CHECK_EXC_MATCH CLEANUP_THROW COMPARE_OP CONTAINS_OP CONVERT_VALUE COPY COPY_FREE_VARS
    DELETE_ATTR DELETE_DEREF DELETE_FAST DELETE_GLOBAL DELETE_NAME DELETE_SUBSCR DICT_MERGE
    DICT_UPDATE END_ASYNC_FOR END_FOR END_SEND ENTER_EXECUTOR EXIT_INIT_CHECK FORMAT_SIMPLE
    FORMAT_VALUE FORMAT_WITH_SPEC FOR_ITER GET_AITER GET_ANEXT GET_AWAITABLE GET_ITER
    GET_LEN GET_YIELD_FROM_ITER IMPORT_STAR INTERPRETER_EXIT IS_OP JUMP JUMP_FORWARD
    JUMP_IF_FALSE JUMP_IF_FALSE_OR_POP JUMP_IF_TRUE JUMP_IF_TRUE_OR_POP JUMP_NO_INTERRUPT
    KW_NAMES LIST_EXTEND LIST_TO_TUPLE LOAD_ASSERTION_ERROR LOAD_BUILD_CLASS LOAD_CLOSURE
    LOAD_COMMON_CONSTANT LOAD_LOCALS LOAD_SMALL_INT LOAD_SPECIAL LOAD_SUPER_ATTR
    LOAD_SUPER_METHOD LOAD_ZERO_SUPER_ATTR LOAD_ZERO_SUPER_METHOD MAKE_CELL MAKE_FUNCTION
    MATCH_CLASS MATCH_KEYS MATCH_MAPPING MATCH_SEQUENCE NOP NOT_TAKEN POP_BLOCK POP_EXCEPT
    POP_ITER POP_JUMP_FORWARD_IF_FALSE POP_JUMP_FORWARD_IF_NONE POP_JUMP_FORWARD_IF_NOT_NONE
    POP_JUMP_FORWARD_IF_TRUE POP_JUMP_IF_FALSE POP_JUMP_IF_NONE POP_JUMP_IF_NOT_NONE
    POP_JUMP_IF_TRUE POP_TOP PRECALL PREP_RERAISE_STAR PRINT_EXPR PUSH_EXC_INFO PUSH_NULL
    RAISE_VARARGS RERAISE RESERVED RESUME RETURN_CONST RETURN_GENERATOR RETURN_VALUE SEND
    SETUP_ANNOTATIONS SETUP_CLEANUP SETUP_FINALLY SETUP_WITH SET_FUNCTION_ATTRIBUTE
    SET_UPDATE STORE_ATTR STORE_FAST_MAYBE_NULL STORE_SLICE STORE_SUBSCR SWAP TO_BOOL
    TRACE_RECORD UNARY_INVERT UNARY_NEGATIVE UNARY_NOT UNARY_POSITIVE UNPACK_EX
    UNPACK_SEQUENCE WITH_EXCEPT_START YIELD_VALUE
    INSTRUMENTED_CALL INSTRUMENTED_CALL_FUNCTION_EX INSTRUMENTED_CALL_KW
    INSTRUMENTED_END_ASYNC_FOR INSTRUMENTED_END_FOR INSTRUMENTED_END_SEND
    INSTRUMENTED_FOR_ITER INSTRUMENTED_INSTRUCTION INSTRUMENTED_JUMP_FORWARD
    INSTRUMENTED_LINE INSTRUMENTED_LOAD_SUPER_ATTR INSTRUMENTED_NOT_TAKEN
    INSTRUMENTED_POP_ITER INSTRUMENTED_POP_JUMP_IF_FALSE INSTRUMENTED_POP_JUMP_IF_NONE
    INSTRUMENTED_POP_JUMP_IF_NOT_NONE INSTRUMENTED_POP_JUMP_IF_TRUE INSTRUMENTED_RESUME
    INSTRUMENTED_RETURN_CONST INSTRUMENTED_RETURN_VALUE INSTRUMENTED_YIELD_VALUE
"""
_OTHER = frozenset(_OTHER_NAMES.split())
KNOWN_OPCODES = frozenset().union(
    _GLOBAL_HEADS,
    _CELL_HEADS,
    _LOCAL_HEADS,
    _ATTRS,
    _STORES,
    _FUSED,
    _IMPORTS,
    _BACKWARD_JUMPS,
    _APPENDS,
    _CONSTS,
    _TRANSPARENT,
    _OTHER,
)


def unclassified_opcodes(opnames: Iterable[str] | None = None) -> list[str]:
    """Opcode names (default: this interpreter's ``dis.opmap``) the reader has
    never been told about; empty on every Python it has been checked on."""
    return sorted(set(dis.opmap if opnames is None else opnames) - KNOWN_OPCODES)


class _Op(NamedTuple):
    """One instruction as the reader sees it: fused instructions split in two,
    ``opname`` the plain instruction each half stands for."""

    opname: str
    argval: Any
    offset: int
    line: int | None


def _ops(code: types.CodeType) -> list[_Op]:
    out: list[_Op] = []
    for ins in dis.get_instructions(code):
        line = ins.positions.lineno if ins.positions else None
        halves = _FUSED.get(ins.opname)
        if halves is not None and isinstance(ins.argval, tuple) and len(ins.argval) == 2:
            for opname, name in zip(halves, ins.argval, strict=True):
                out.append(_Op(opname, name, ins.offset, line))
        else:
            out.append(_Op(ins.opname, ins.argval, ins.offset, line))
    return out


def _references(
    instructions: list[_Op], globs: dict[str, Any], closure: dict[str, Any]
) -> list[tuple[int, str, Any, bool, int | None]]:
    """Dotted names loaded by the code: ``(offset, "np.linalg.norm", object,
    resolved, line)``. ``resolved`` is False when the head is a local variable
    or an attribute could not be looked up safely."""
    out: list[tuple[int, str, Any, bool, int | None]] = []
    imported = _local_imports(instructions)
    chain: list[str] = []
    obj: Any = None
    resolved = False
    start = 0
    line: int | None = None

    def flush() -> None:
        if chain:
            out.append((start, ".".join(chain), obj, resolved, line))

    heads = _GLOBAL_HEADS | _CELL_HEADS | _LOCAL_HEADS
    for ins in instructions:
        if ins.opname in heads and isinstance(ins.argval, str):
            flush()
            chain = [ins.argval]
            start = ins.offset
            line = ins.line
            if ins.argval in imported:
                obj, resolved = imported[ins.argval], True
            else:
                obj, resolved = _resolve_head(ins.opname, ins.argval, globs, closure)
        elif ins.opname in _ATTRS and chain and isinstance(ins.argval, str):
            chain.append(ins.argval)
            if resolved and isinstance(obj, types.ModuleType | type):
                try:
                    obj = inspect.getattr_static(obj, ins.argval)
                    if isinstance(obj, staticmethod | classmethod):
                        obj = obj.__func__
                except AttributeError:
                    resolved = False
            else:
                resolved = False
        elif ins.opname in _TRANSPARENT:
            continue
        elif chain:
            flush()
            chain = []
    flush()
    return out


def _local_imports(instructions: list[_Op]) -> dict[str, Any]:
    """Names bound by ``import`` statements inside the code (``import numpy as
    np`` in a worker function), resolved only through modules already imported:
    reading bytecode must never import anything."""
    found: dict[str, Any] = {}
    module: Any = None
    dotted = ""
    for prev, ins in itertools.pairwise(instructions):
        if prev.opname == "IMPORT_NAME" and isinstance(prev.argval, str):
            dotted = prev.argval
            module = sys.modules.get(dotted)
            if ins.opname in _STORES and isinstance(ins.argval, str):
                head = dotted.split(".")[0]
                # `import a.b` binds `a`; `import a.b as c` binds the full module.
                target = sys.modules.get(head) if ins.argval == head else module
                if target is not None:
                    found[ins.argval] = target
        elif (
            prev.opname == "IMPORT_FROM"
            and isinstance(prev.argval, str)
            and module is not None
            and ins.opname in _STORES
            and isinstance(ins.argval, str)
        ):
            try:
                found[ins.argval] = inspect.getattr_static(module, prev.argval)
            except AttributeError:
                sub = sys.modules.get(f"{dotted}.{prev.argval}")
                if sub is not None:
                    found[ins.argval] = sub
    return found


def _resolve_head(
    opname: str, name: str, globs: dict[str, Any], closure: dict[str, Any]
) -> tuple[Any, bool]:
    if opname in _GLOBAL_HEADS:
        if name in globs:
            return globs[name], True
        if hasattr(builtins, name):
            return getattr(builtins, name), True
        return None, False
    if opname in _CELL_HEADS and name in closure:
        return closure[name], True
    return None, False


def _loops(instructions: list[_Op]) -> list[tuple[int, int, int | None]]:
    """``(first offset, last offset, first line)`` of every loop: a backward
    jump from ``last`` to ``first``."""
    lines = {ins.offset: ins.line for ins in instructions if ins.line is not None}
    loops = []
    for ins in instructions:
        if (
            ins.opname in _BACKWARD_JUMPS
            and isinstance(ins.argval, int)
            and ins.argval <= ins.offset
        ):
            span = [ln for off, ln in lines.items() if ins.argval <= off <= ins.offset]
            loops.append((ins.argval, ins.offset, min(span) if span else None))
    # Nested loops: report only the outermost of a nest (one finding per loop nest).
    loops.sort(key=lambda s: (s[0], -s[1]))
    outer: list[tuple[int, int, int | None]] = []
    for loop in loops:
        if outer and outer[-1][0] <= loop[0] and loop[1] <= outer[-1][1]:
            continue
        outer.append(loop)
    return outer


def _loop_name(code: types.CodeType, instructions: list[_Op], start: int, end: int) -> str:
    names = {
        "<listcomp>": "list comprehension",
        "<setcomp>": "set comprehension",
        "<dictcomp>": "dict comprehension",
        "<genexpr>": "generator expression",
    }
    if code.co_name in names:
        return names[code.co_name]
    # Python 3.12+ inlines comprehensions (PEP 709): recognise one by what the
    # loop appends to.
    for ins in instructions:
        if start <= ins.offset <= end and ins.opname in _APPENDS:
            return _APPENDS[ins.opname]
    return "loop"


def _make_function_offset(instructions: list[_Op], const: types.CodeType) -> int | None:
    for ins in instructions:
        if ins.opname in _CONSTS and ins.argval is const:
            return ins.offset
    return None

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

The tables of known calls are in ``_calls``; what each opcode means to the
reader, and the reading of instructions into names and loops, in ``_opcodes``.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import types
from dataclasses import asdict, dataclass, field
from typing import Any

from ._calls import IO_METHODS, RELEASING_METHODS, classify_name, qualified_name
from ._opcodes import find_loops, loop_name, make_function_offset, read_ops, references

#: What a pure-Python loop is, said with a GIL; ``Plan.explain`` says
#: ``WITHOUT_A_GIL`` instead on a free-threaded interpreter running without one.
HOLDS_THE_GIL = "pure-Python work that holds the GIL."
WITHOUT_A_GIL = "pure-Python work, which threads run at once here (no GIL)."

# How far we follow calls into other functions of the function's own module.
# Three levels covers "task -> helper -> inner helper" without walking a whole
# program; deeper code is still measured by the probe.
MAX_DEPTH = 3
# Upper bound on code objects visited, so a huge module cannot make advise slow.
MAX_CODE_OBJECTS = 64


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

        instructions = read_ops(code)
        marks: list[tuple[int, str]] = []  # (offset, kind) of io/releasing calls
        found: list[Finding] = []
        for offset, dotted, obj, resolved, line in references(instructions, globs, closure):
            finding, kind = self._classify(code, dotted, obj, resolved, line, globs, depth)
            if finding is not None:
                found.append(finding)
            if kind is not None:
                marks.append((offset, kind))
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                io, rel = self.walk_code(const, globs, {}, depth)
                # A nested function or comprehension counts where it is created.
                created = make_function_offset(instructions, const)
                if created is not None and (io or rel):
                    marks.append((created, "io" if io else "releases_gil"))
        for start, end, line in find_loops(instructions):
            if any(start <= off <= end for off, _ in marks):
                continue
            what = loop_name(code, instructions, start, end)
            found.append(
                Finding(
                    "python_loop",
                    what,
                    line,
                    code.co_qualname,
                    code.co_filename,
                    f"{what} at line {line} in {code.co_qualname} makes no I/O or "
                    f"GIL-releasing call: {HOLDS_THE_GIL}",
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
            guess = table.get(method)
            if guess is not None:
                return (
                    Finding(
                        kind,
                        dotted,
                        line,
                        where,
                        code.co_filename,
                        f".{method}() at line {line} {guess}.",
                        confident=False,
                    ),
                    kind,
                )
        return None, None

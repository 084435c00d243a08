"""The instructions of a code object as the bytecode reader sees them.

Every opcode of CPython 3.11 to 3.15 has one role here (a name loaded, an
attribute, a store, an import, a backward jump, ...). From those the reader gets
the dotted names a code object loads (``np.linalg.norm``), its loops, and where
it creates nested code objects. ``_bytecode`` turns them into findings.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import itertools
import sys
import types
from collections.abc import Iterable
from typing import Any, NamedTuple

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


def read_ops(code: types.CodeType) -> list[_Op]:
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


def references(
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


def find_loops(instructions: list[_Op]) -> list[tuple[int, int, int | None]]:
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


def loop_name(code: types.CodeType, instructions: list[_Op], start: int, end: int) -> str:
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


def make_function_offset(instructions: list[_Op], const: types.CodeType) -> int | None:
    for ins in instructions:
        if ins.opname in _CONSTS and ins.argval is const:
            return ins.offset
    return None

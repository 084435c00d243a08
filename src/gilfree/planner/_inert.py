"""Functions whose probe calls need no process of their own: arithmetic on numbers.

The probe runs its sample calls in a worker process (or a forked child) so
that a call that crashes or hangs costs the caller nothing. For ``x * x`` over
2,000,000 items that safety cost more than the job: forking a process whose
heap holds the items write-protects every page of it, and the caller's first
pass over them afterwards took a page fault per page (+20 ms on 3.11, +50 ms
on 3.13t, where the loop itself takes ~110 ms).

A call cannot crash or hang when it can run nothing but the interpreter's own
arithmetic on small numbers: ``inert`` says so when the function is a plain
Python function of one argument whose bytecode (read with :mod:`dis`) only
loads its argument, its locals and number constants, applies arithmetic,
comparisons and forward jumps, and returns; and every sample is an ``int``,
``float`` or ``bool``, the ints below 2**64. No call, attribute, global, loop,
``**`` or ``<<``, at most ``MAX_MULTIPLIES`` multiplications: each call then
ends within microseconds, and a failure is an ordinary exception
(``ZeroDivisionError``). An opcode not listed here (a new Python's) makes a
function not inert: it is probed in a process, as before.
"""

from __future__ import annotations

import dis
import inspect
import types
from collections.abc import Callable, Sequence
from typing import Any

#: Bytecode instructions that touch only the frame's own values.
_PLAIN_OPS = frozenset(
    {
        "CACHE",
        "COMPARE_OP",
        "COPY",
        "EXTENDED_ARG",
        "IS_OP",
        "LOAD_COMMON_CONSTANT",
        "LOAD_CONST",
        "LOAD_FAST",
        "LOAD_FAST_BORROW",
        "LOAD_FAST_BORROW_LOAD_FAST_BORROW",
        "LOAD_FAST_CHECK",
        "LOAD_FAST_LOAD_FAST",
        "LOAD_SMALL_INT",
        "NOP",
        "NOT_TAKEN",
        "POP_TOP",
        "RESUME",
        "RETURN_CONST",
        "RETURN_VALUE",
        "STORE_FAST",
        "STORE_FAST_LOAD_FAST",
        "STORE_FAST_STORE_FAST",
        "SWAP",
        "TO_BOOL",
        "UNARY_INVERT",
        "UNARY_NEGATIVE",
        "UNARY_NOT",
    }
)
#: Those of them that load a constant: it must be None or a small number
#: (3.15 loads None with LOAD_COMMON_CONSTANT, which also loads builtins).
_CONSTANTS = frozenset({"LOAD_COMMON_CONSTANT", "LOAD_CONST", "LOAD_SMALL_INT", "RETURN_CONST"})
#: Forward jumps (an ``if`` or a conditional expression); none can make a loop.
_JUMPS = frozenset(
    {
        "JUMP_FORWARD",
        "JUMP_IF_FALSE_OR_POP",
        "JUMP_IF_TRUE_OR_POP",
        "POP_JUMP_FORWARD_IF_FALSE",
        "POP_JUMP_FORWARD_IF_NONE",
        "POP_JUMP_FORWARD_IF_NOT_NONE",
        "POP_JUMP_FORWARD_IF_TRUE",
        "POP_JUMP_IF_FALSE",
        "POP_JUMP_IF_NONE",
        "POP_JUMP_IF_NOT_NONE",
        "POP_JUMP_IF_TRUE",
    }
)
#: ``BINARY_OP`` operators whose result is no larger than a few bits more than
#: their operands (``*`` doubles them: see ``MAX_MULTIPLIES``).
_OPERATORS = frozenset({"+", "-", "*", "/", "//", "%", "&", "|", "^", ">>"})
MAX_MULTIPLIES = 4
#: Instructions at most: a longer function is not what this is for.
MAX_INSTRUCTIONS = 64
_NUMBERS = (int, float, bool)
_BOUND = 1 << 64
_FLAGS = (
    inspect.CO_VARARGS
    | inspect.CO_VARKEYWORDS
    | inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)
WHY = (
    "its bytecode is arithmetic on its argument alone (no call, attribute, global or loop) "
    "and the samples are small numbers, so a call can neither crash nor hang"
)


def inert(fn: Callable[[Any], Any], samples: Sequence[Any]) -> bool:
    """Whether calling ``fn`` on each of ``samples`` can only compute (see the module)."""
    if type(fn) is not types.FunctionType or not samples:
        return False
    if not all(_small_number(s) for s in samples):
        return False
    code = fn.__code__
    if (
        code.co_argcount != 1
        or code.co_kwonlyargcount
        or code.co_flags & _FLAGS
        or code.co_freevars
        or code.co_cellvars
    ):
        return False
    try:
        ops = list(dis.get_instructions(code))
    except Exception:  # reading bytecode must never stop a job
        return False
    if len(ops) > MAX_INSTRUCTIONS:
        return False
    multiplies = 0
    for op in ops:
        name = op.opname
        if name == "BINARY_OP":
            symbol = op.argrepr.rstrip("=")
            if symbol not in _OPERATORS:
                return False
            multiplies += symbol == "*"
        elif name in _JUMPS:
            if not (isinstance(op.argval, int) and op.argval > op.offset):
                return False
        elif name not in _PLAIN_OPS:
            return False
        if name in _CONSTANTS and not (op.argval is None or _small_number(op.argval)):
            return False
    return multiplies <= MAX_MULTIPLIES


def _small_number(x: object) -> bool:
    t = type(x)
    return t in _NUMBERS and (t is not int or -_BOUND < x < _BOUND)  # type: ignore[operator]

"""Which functions the probe may call in the caller: arithmetic on small numbers alone.

One table, run on every interpreter of make test-pythons: an opcode a new
Python uses for plain arithmetic, and that ``_inert`` does not know, fails the
"inert" rows here instead of quietly sending them to a process.
"""

from __future__ import annotations

import functools
import math

import pytest

from gilfree import _auto
from gilfree._options import Options
from gilfree.planner._inert import inert

OFFSET = 3


def square(x):
    return x * x


def affine(x):
    return 2 * x + 3.5


def divisible(x):
    return x % 7 == 0


def magnitude(x):
    return x if x > 0 else -x


def steps(x):
    y = x * 2
    y += 1
    y //= 3
    return y - (x >> 1)


def flags(x):
    return not x or x is None


def power(x):
    return x**2


def shift(x):
    return x << 3


def called(x):
    return abs(x)


def attribute(x):
    return x.real


def global_offset(x):
    return x + OFFSET


def loop(x):
    while x > 1:
        x //= 2
    return x


def comprehension(x):
    return [x for _ in (1, 2)]


def five_multiplies(x):
    return x * x * x * x * x * x


def text(x):
    return x * "ab"


def caught(x):
    try:
        return 1 / x
    except ZeroDivisionError:
        return 0


def indexed(x):
    return x[0]


def generator(x):
    yield x * x


def two(x, y=1):
    return x * y


def many(*xs):
    return xs


def closure_of(k):
    def scaled(x):
        return x * k

    return scaled


NUMBERS = [0, 1, -7, 2**63, 1.5, True]
INERT = [square, affine, divisible, magnitude, steps, flags, lambda x: x * x, lambda x: -x]
NOT_INERT = [
    power,
    shift,
    called,
    attribute,
    global_offset,
    loop,
    comprehension,
    five_multiplies,
    text,
    caught,
    indexed,
    generator,
    two,
    many,
    closure_of(3),
    functools.partial(square),
    math.sqrt,
    str.upper,
]


@pytest.mark.parametrize("fn", INERT, ids=lambda f: getattr(f, "__name__", "?"))
def test_arithmetic_on_small_numbers_is_inert(fn):
    assert inert(fn, NUMBERS)


@pytest.mark.parametrize("fn", NOT_INERT, ids=lambda f: getattr(f, "__name__", repr(f)))
def test_anything_that_may_call_out_loop_or_grow_is_not(fn):
    assert not inert(fn, NUMBERS)


@pytest.mark.parametrize(
    "samples",
    [[], [1, "a"], [2**64], [-(2**64)], [1, None], [1, [2]], [1 + 2j], [float("nan"), 10**30]],
    ids=["none", "a-string", "2**64", "-2**64", "None", "a-list", "complex", "a-big-int"],
)
def test_samples_that_are_not_all_small_numbers_are_not(samples):
    assert not inert(square, samples)


def test_a_timeout_shorter_than_an_inert_call_sends_the_probe_to_a_process():
    assert _auto.ProbeRunner(Options(), None)._runs_here(square, NUMBERS)
    assert _auto.ProbeRunner(Options(timeout=60), None)._runs_here(square, NUMBERS)
    assert not _auto.ProbeRunner(Options(timeout=0.001), None)._runs_here(square, NUMBERS)

"""Activations of one scalar, and the compile flags of every kernel.

``sigmoid`` and ``tanh`` are finite and exception-free for every finite input, NaN in gives NaN
out. float32 uses an exp built from a Cody-Waite reduction, a polynomial and an exponent written
with integer bits, so that the loops calling it vectorise (this Numba has no vector math
library); float64 calls libm.

Indices inside the kernels are cast to unsigned (``U``): a signed index could be negative for
all Numba knows, and the wraparound it then adds stops LLVM from vectorising.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

# No nnan / ninf: NaN and Inf keep their meaning.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
# The time loop and the cells' row functions allocate nothing and only borrow the caller's
# arrays; without Numba's reference counting they skip the atomic count updates of every array
# taken out of an argument group, per row and step, which at small sizes cost more than the
# arithmetic (measured: RNN (100, 1, 64, 64) forward 75 us with them, vs 29 us before the groups).
KERNEL = dict(JIT, _nrt=False)
# The exp reduction relies on the order of its operations, so it runs without reassoc.
_EXACT_ORDER = dict(fastmath={"nsz", "arcp", "contract", "afn"}, error_model="numpy")
U = np.uint64

_F = np.float32
# exp's result is a normal float32 number for arguments in [_EXP_LO, _EXP_HI]; below it is 0
# (the exact value is under the smallest normal number), above it is inf (the exact value
# overflows within 0.5 of _EXP_HI), as a float32 exp would give. So sigmoid(-inf) and
# sigmoid'(+-inf) are exactly 0, as in the reference.
_EXP_LO = _F(-87.33)
_EXP_HI = _F(88.3)
_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693145751953125)  # ln 2 = _LN2_HI + _LN2_LO; _LN2_HI has 12 trailing zero bits
_LN2_LO = _F(1.428606765330187e-06)
_EXP_POLY = tuple(_F(1.0 / math.factorial(k)) for k in range(7, -1, -1))  # Taylor, degree 7
_TANH_SMALL = _F(0.25)
_TANH_POLY = (_F(62 / 2835), _F(-17 / 315), _F(2 / 15), _F(-1 / 3))  # x^9 .. x^3


@njit(**_EXACT_ORDER)
def _exp32(x):
    """exp(x) for float32, within 2 ulp where the result is a normal number."""
    c = _EXP_HI if x > _EXP_HI else x  # written so that NaN passes through
    c = _EXP_LO if c < _EXP_LO else c
    n = np.floor(c * _LOG2E + _F(0.5))
    r = (c - n * _LN2_HI) - n * _LN2_LO
    p = _EXP_POLY[0]
    for coef in _EXP_POLY[1:]:
        p = p * r + coef
    n = _F(0) if n != n else n  # keep the integer conversion defined for NaN
    e = p * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
    e = _F(np.inf) if x > _EXP_HI else e
    return _F(0) if x < _EXP_LO else e


@njit(**_EXACT_ORDER)
def _sigmoid32(x):
    return _F(1) / (_F(1) + _exp32(-x))


@njit(**_EXACT_ORDER)
def _tanh32(x):
    ax = np.abs(x)
    x2 = x * x
    p = _TANH_POLY[0]
    for coef in _TANH_POLY[1:]:
        p = p * x2 + coef
    small = x + x * x2 * p
    big = _F(1) - _F(2) / (_exp32(_F(2) * ax) + _F(1))
    big = big if x >= _F(0) else -big
    return small if ax < _TANH_SMALL else big


def sigmoid(x):
    """1 / (1 + exp(-x)) of one float (compiled code gets the implementations below)."""
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


def tanh(x):
    return math.tanh(x)


@overload(sigmoid, jit_options=_EXACT_ORDER)
def _sigmoid_impl(x):
    if x == types.float32:
        return lambda x: _sigmoid32(x)
    return lambda x: 1.0 / (1.0 + math.exp(-x))  # exp overflows to inf: the result is 0


@overload(tanh, jit_options=_EXACT_ORDER)
def _tanh_impl(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    return lambda x: math.tanh(x)

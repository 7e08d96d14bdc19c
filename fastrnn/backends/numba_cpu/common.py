"""What the Numba kernels of every cell share.

Compiled pieces:

* ``sigmoid`` and ``tanh`` for one scalar, finite and exception-free for every finite input,
  NaN in gives NaN out. float32 uses an exp built from a Cody-Waite reduction, a polynomial and
  an exponent written with integer bits, so the loops that call it vectorise (Numba has no
  vector math library here); float64 calls libm.
* ``gemm``: the recurrent product of one step, either BLAS (``np.dot`` calls SciPy's) or a
  hand-written loop that wins where a BLAS call's fixed cost dominates (one or a few rows).
* short loops over one row (add, copy, activate, reduce) that each touch few arrays: Numba
  cannot tell LLVM that arrays do not overlap, and LLVM vectorises a loop only when the overlap
  checks it must add stay few, so a step's pointwise work is split into such loops. All arrays
  are flat and addressed by offset (see ``U`` below).
* ``slots``: which rows of the state buffer a step reads and writes.

The time loop itself lives in each cell's kernel: Numba caches neither closures nor functions
that take other compiled functions as arguments, so it cannot be shared as a function. Every
kernel has the same shape: for each step s, for each chunk c of hidden units (``prange`` when
there are several, one per thread), ``step(c, s, ...)``.

Python pieces: packing W_hh per chunk once per call, flat views of strided arrays, the thread
plan, and the BLAS thread limit around parallel kernels.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, types
from numba.extending import overload

# No nnan / ninf: NaN and Inf keep their meaning.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
# The exp reduction relies on the order of its operations, so it runs without reassoc.
_EXACT_ORDER = dict(fastmath={"nsz", "arcp", "contract", "afn"}, error_model="numpy")


# ----------------------------------------------------------------------------------------------
# Scalars

_F = np.float32
_EXP_MAX = _F(87.0)  # exp(+-87) and sigmoid of any input stay normal float32 numbers
_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693145751953125)  # ln 2 = _LN2_HI + _LN2_LO; _LN2_HI has 12 trailing zero bits
_LN2_LO = _F(1.428606765330187e-06)
_EXP_POLY = tuple(_F(1.0 / math.factorial(k)) for k in range(7, -1, -1))  # Taylor, degree 7
_TANH_SMALL = _F(0.25)
_TANH_POLY = (_F(62 / 2835), _F(-17 / 315), _F(2 / 15), _F(-1 / 3))  # x^9 .. x^3


@njit(**_EXACT_ORDER)
def _exp32(x):
    """exp(x) for float32 within 2 ulp on [-87, 87]; the argument is clamped there."""
    x = _EXP_MAX if x > _EXP_MAX else x  # written so that NaN passes through
    x = -_EXP_MAX if x < -_EXP_MAX else x
    n = np.floor(x * _LOG2E + _F(0.5))
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = _EXP_POLY[0]
    for coef in _EXP_POLY[1:]:
        p = p * r + coef
    n = _F(0) if n != n else n  # keep the integer conversion defined for NaN
    scale = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
    return p * scale


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


# ----------------------------------------------------------------------------------------------
# Rows. The kernels hold every array flat (1-D) and address rows by offset. Indices are cast to
# unsigned (``U``): a signed index could be negative for all Numba knows, and the wraparound it
# then adds stops LLVM from vectorising. Views (slices) would avoid the cast but cost two atomic
# reference-count updates each, which per row and step add up to more than the arithmetic.

U = np.uint64


@njit(**JIT)
def add_into(dst, d0, a, a0, b, b0, n):
    """dst[d0:d0+n] += a[a0:a0+n] + b[b0:b0+n]"""
    for u in range(n):
        dst[U(d0 + u)] += a[U(a0 + u)] + b[U(b0 + u)]


@njit(**JIT)
def add_to(dst, d0, a, a0, n):
    for u in range(n):
        dst[U(d0 + u)] += a[U(a0 + u)]


@njit(**JIT)
def copy_row(dst, d0, src, s0, n):
    for u in range(n):
        dst[U(d0 + u)] = src[U(s0 + u)]


@njit(**JIT)
def zero_row(dst, d0, n):
    zero = dst.dtype.type(0)
    for u in range(n):
        dst[U(d0 + u)] = zero


@njit(**JIT)
def sigmoid_row(v, v0, n):
    for u in range(n):
        v[U(v0 + u)] = sigmoid(v[U(v0 + u)])


@njit(**JIT)
def tanh_row(v, v0, n):
    for u in range(n):
        v[U(v0 + u)] = tanh(v[U(v0 + u)])


@njit(**JIT)
def tanh_of(dst, d0, src, s0, n):
    for u in range(n):
        dst[U(d0 + u)] = tanh(src[U(s0 + u)])


@njit(**JIT)
def sum_parts(dst, d0, part, p0, stride, parts, n):
    """dst[d0:d0+n] += sum over p < parts of part[p0 + p*stride:][:n], in order p = 0, 1, ..."""
    for p in range(parts):
        q0 = p0 + p * stride
        for u in range(n):
            dst[U(d0 + u)] += part[U(q0 + u)]


# ----------------------------------------------------------------------------------------------
# The recurrent product


@njit(**JIT)
def gemm_nt(a, a0, m, m0, out, o0, B, K, N, use_blas):
    """out[o0:] (B, N) = a[a0:] (B, K) @ m[m0:] (N, K)^T, each a row-major block of a flat array.

    BLAS, or for one or two rows a loop of dot products, eight rows of m at a time so that each
    load of a feeds eight multiply-adds.
    """
    if use_blas:
        np.dot(a[a0:a0 + B * K].reshape((B, K)), m[m0:m0 + N * K].reshape((N, K)).T,
               out[o0:o0 + B * N].reshape((B, N)))
        return
    zero = out.dtype.type(0)
    for b in range(B):
        ab = a0 + b * K
        ob = o0 + b * N
        j = 0
        while j + 8 <= N:
            r = m0 + j * K
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
            for k in range(K):
                x = a[U(ab + k)]
                s0 += m[U(r + k)] * x
                s1 += m[U(r + K + k)] * x
                s2 += m[U(r + 2 * K + k)] * x
                s3 += m[U(r + 3 * K + k)] * x
                s4 += m[U(r + 4 * K + k)] * x
                s5 += m[U(r + 5 * K + k)] * x
                s6 += m[U(r + 6 * K + k)] * x
                s7 += m[U(r + 7 * K + k)] * x
            out[U(ob + j)] = s0
            out[U(ob + j + 1)] = s1
            out[U(ob + j + 2)] = s2
            out[U(ob + j + 3)] = s3
            out[U(ob + j + 4)] = s4
            out[U(ob + j + 5)] = s5
            out[U(ob + j + 6)] = s6
            out[U(ob + j + 7)] = s7
            j += 8
        while j < N:
            r = m0 + j * K
            s0 = zero
            for k in range(K):
                s0 += m[U(r + k)] * a[U(ab + k)]
            out[U(ob + j)] = s0
            j += 1


@njit(**JIT)
def transpose(w, rows, cols):
    """A new flat (cols, rows) array holding the transpose of the flat (rows, cols) w."""
    out = np.empty(rows * cols, w.dtype)
    blk = 32
    for i0 in range(0, rows, blk):
        i1 = min(rows, i0 + blk)
        for j0 in range(0, cols, blk):
            j1 = min(cols, j0 + blk)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    out[U(j * rows + i)] = w[U(i * cols + j)]
    return out


@njit(**JIT)
def rows_of(c, chunks, B):
    """Rows [b0, b1) of chunk c when B rows split into ``chunks`` near-equal chunks."""
    return c * B // chunks, (c + 1) * B // chunks


@njit(**JIT)
def count_valid(lengths, t, b0, b1):
    k = 0
    for b in range(b0, b1):
        if t < lengths[b]:
            k += 1
    return k


@njit(**JIT)
def slots(s, T, reverse, training):
    """(t, row read, row written) of step s in the state buffer.

    Training keeps every state in time order, (T+1, B, H) as cells.py describes; inference
    alternates between two rows.
    """
    t = T - 1 - s if reverse else s
    if not training:
        return t, s % 2, 1 - s % 2
    if reverse:
        return t, t + 1, t
    return t, t, t + 1


# ----------------------------------------------------------------------------------------------
# Python side


def final_slot(T, reverse, training):
    """Row of the state buffer that holds the state after the last step."""
    if not training:
        return T % 2
    return 0 if reverse else T


def first_slot(T, reverse, training):
    if not training:
        return 0
    return T if reverse else 0


def flat(a):
    """(a 1-D view over the memory of a (T, B, N) array with unit last stride, stride_t,
    stride_b) in elements, or None when the strides do not allow it."""
    T, B, N = a.shape
    if a.flags.c_contiguous:
        return a.reshape(-1), B * N, N
    item = a.itemsize
    st, sb, sn = a.strides
    if sn != item or st % item or sb % item or st < 0 or sb < 0:
        return None
    span = (T - 1) * (st // item) + (B - 1) * (sb // item) + N
    view = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,),
                                           writeable=a.flags.writeable)
    return view, st // item, sb // item


def flat_input(a):
    """flat() of an input array; copies when the strides do not allow a view or the array is
    read-only (so the kernels see one array type)."""
    f = flat(a) if a.flags.writeable else None
    return f if f is not None else flat(np.array(a, order="C"))


class BlasThreads:
    """Sets the BLAS libraries' thread count for the duration of a kernel (a context manager),
    so that Numba's threads and BLAS threads together never exceed the threads asked for.
    threadpoolctl finds the libraries once; each use is a few direct calls into them."""

    def __init__(self):
        self._libs = None

    def _find(self):
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS np.dot calls, loaded to be seen)
        from threadpoolctl import ThreadpoolController

        self._libs = ThreadpoolController().select(user_api="blas").lib_controllers

    def limit(self, n):
        if self._libs is None:
            self._find()
        return _Limited(self._libs, n)


class _Limited:
    def __init__(self, libs, n):
        self._libs, self._n, self._old = libs, n, []

    def __enter__(self):
        for lib in self._libs:
            old = lib.get_num_threads()
            if old != self._n:
                lib.set_num_threads(self._n)
                self._old.append((lib, old))
        return self

    def __exit__(self, *exc):
        for lib, old in self._old:
            lib.set_num_threads(old)
        return False


def threads():
    return numba.get_num_threads()

"""What the Numba kernels of every cell share.

Compiled pieces:

* ``sigmoid`` and ``tanh`` of one scalar: finite and exception-free for every finite input, NaN
  in gives NaN out. float32 uses an exp built from a Cody-Waite reduction, a polynomial and an
  exponent written with integer bits, so that the loops calling it vectorise (this Numba has no
  vector math library); float64 calls libm.
* ``gemm``: the recurrent product of a step, ``rows @ panels``, written with explicit 64-byte
  vectors (``Vec``; zmm registers with AVX-512, two ymm otherwise). The weights are packed once
  per call into panels of 4 vectors' width (``panels_*``, ``Packed``: once for every chunk
  of a chunked inference too), which a 4-row micro-kernel streams while 16 accumulators stay in
  registers, one L1-sized slice of depth (``KC``) at a time. For the few rows a thread owns per
  step this beats a BLAS call, which packs the weights again every time.
* short loops over one row (add, copy, activate): Numba cannot tell LLVM that arrays do not
  overlap, and LLVM vectorises a loop only when the overlap checks it must add stay few, so a
  step's pointwise work is split into such loops.
* ``slots``, ``block_of``, ``receive``: which state rows a step reads and writes, which rows and
  hidden units a thread owns, and how the shares of d_gates @ W_hh reach dh.
* ``matmul``: the GEMMs above the recurrence (backends/base.py) split over Numba's threads, by
  rows of the output (``matmul_rows`` through np.dot; ``matmul_tn`` through ``xgemm_nt``, a
  direct call of the BLAS gemm that np.dot uses, for a transposed left factor).

The time loop itself lives in each cell's kernel: Numba caches neither closures nor functions
that take other compiled functions as arguments, so it cannot be passed around. Every kernel
has the same shape (see lstm.py).

Arrays inside the kernels are flat (1-D) and addressed by offset. Indices are cast to unsigned
(``U``): a signed index could be negative for all Numba knows, and the wraparound it then adds
stops LLVM from vectorising. Views (slices) would avoid the cast but cost two atomic
reference-count updates each, which per row and step add up to more than the arithmetic.

Note for development: Numba's cache of a cell's kernels is keyed on that cell's file, so after
editing this module, clear the __pycache__ of this package.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

# No nnan / ninf: NaN and Inf keep their meaning.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
# The exp reduction relies on the order of its operations, so it runs without reassoc.
_EXACT_ORDER = dict(fastmath={"nsz", "arcp", "contract", "afn"}, error_model="numpy")
U = np.uint64

# ----------------------------------------------------------------------------------------------
# Scalars

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


# ----------------------------------------------------------------------------------------------
# Vectors of 64 bytes: 16 float32 or 8 float64


class Vec(types.Type):
    """An LLVM vector of ``width`` elements of ``dtype`` held in registers."""

    def __init__(self, dtype, width):
        self.dtype = dtype
        self.width = width
        super().__init__(name=f"Vec({dtype}x{width})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


def _vec_of(dtype):
    return Vec(dtype, 64 // (dtype.bitwidth // 8))


@intrinsic
def vload(typingctx, arr, offset):
    """The vector at arr[offset:offset + width] (no alignment assumed)."""
    vt = _vec_of(arr.dtype)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]),
                              context.get_value_type(vt).as_pointer())
        return builder.load(ptr, align=arr.dtype.bitwidth // 8)
    return vt(arr, offset), codegen


@intrinsic
def vstore(typingctx, arr, offset, v):
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), args[2].type.as_pointer())
        builder.store(args[2], ptr, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(arr, offset, v), codegen


@intrinsic
def vsplat(typingctx, x):
    """A vector with every element x."""
    vt = _vec_of(x)

    def codegen(context, builder, sig, args):
        llvt = context.get_value_type(vt)
        undef = ir.Constant(llvt, ir.Undefined)
        one = builder.insert_element(undef, args[0], ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.width), [0] * vt.width)
        return builder.shuffle_vector(one, undef, mask)
    return vt(x), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a*b + c, fused."""
    def codegen(context, builder, sig, args):
        vt = args[0].type
        name = f"llvm.fma.v{vt.count}{'f32' if vt.element == ir.FloatType() else 'f64'}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), name)
        return builder.call(fn, args)
    return a(a, b, c), codegen


@intrinsic
def vwidth(typingctx, arr):
    """Elements per vector for arr's dtype (a compile-time constant)."""
    width = _vec_of(arr.dtype).width

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, width)
    return types.intp(arr), codegen


# ----------------------------------------------------------------------------------------------
# Rows


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


# ----------------------------------------------------------------------------------------------
# The recurrent product: panels of 4 vectors' width


@njit(**JIT)
def panel_width(w):
    return 4 * vwidth(w)


@njit(**JIT)
def _block_row(gates, size, H, u, row):
    """The row of W_hh that row ``row`` of chunk u's block holds (the block: rows u*size..
    (u+1)*size of each gate in ``gates``, gate by gate), or -1 for a zero row (past H, or past
    the block)."""
    g, r = row // size, row % size
    if g >= len(gates) or u * size + r >= H:
        return -1
    return gates[g] * H + u * size + r


@njit(**JIT)
def _rows_panel(out, w, gates, size, H, P, c):
    """Panel c = u*P + p of the forward panels: the transpose of rows p*NR.. of chunk u's
    block, (H, NR). Copied in tiles of NR rows by 64 columns, so the strided writes stay within
    the L1 cache."""
    NR = panel_width(w)
    u, p = c // P, c % P
    zero = w.dtype.type(0)
    for k0 in range(0, H, 64):
        k1 = min(H, k0 + 64)
        for j in range(NR):
            o = c * H * NR + j
            src = _block_row(gates, size, H, u, p * NR + j)
            if src >= 0:
                for k in range(k0, k1):
                    out[U(o + k * NR)] = w[U(src * H + k)]
            else:
                for k in range(k0, k1):
                    out[U(o + k * NR)] = zero


@njit(**JIT)
def _columns_panel(out, w, gates, size, H, P, c):
    """Panel c = u*P + p of the backward panels: columns p*NR.. of chunk u's block, (N, NR),
    zero past H."""
    NR = panel_width(w)
    N = len(gates) * size
    u, p = c // P, c % P
    n = min(NR, H - p * NR)
    for row in range(N):
        o = (c * N + row) * NR
        src = _block_row(gates, size, H, u, row)
        if src >= 0:
            copy_row(out, o, w, src * H + p * NR, n)
            zero_row(out, o + n, NR - n)
        else:
            zero_row(out, o, NR)


@njit(**JIT)
def _panel(out, w, gates, size, H, P, c, forward):
    if forward:
        _rows_panel(out, w, gates, size, H, P, c)
    else:
        _columns_panel(out, w, gates, size, H, P, c)


@njit(parallel=True, **JIT)
def pack_panels(w, H, gates, size, units, forward, parallel):
    """The panels of every chunk of the flat (G*H, H) W_hh ``w`` for the gates given, flat
    (units, P, H, NR) for the forward product (``gemm(h, ...)`` gives h @ block^T, gate k at
    columns k*size..) or (units, P, N, NR) with N = len(gates)*size for the backward one
    (``gemm(d, ...)`` gives d @ block, columns 0..H). Returns (panels, P). Panels are
    independent: with ``parallel`` the threads share them."""
    NR = panel_width(w)
    N = len(gates) * size
    P = -(-(N if forward else H) // NR)
    out = np.empty(units * P * (H if forward else N) * NR, w.dtype)
    if parallel:
        for c in prange(units * P):
            _panel(out, w, gates, size, H, P, c, forward)
    else:
        for c in range(units * P):
            _panel(out, w, gates, size, H, P, c, forward)
    return out, P


# Depth of the slices of a panel that ``gemm`` runs through all rows before the next slice:
# KC * NR elements are 32 KB, which stay in the L1 cache while every row group reads them.
KC = 128


@njit(**JIT)
def _rows4(a, a0, K, k0, k1, wp, w0, out, o0, ldo, acc):
    """Four rows of a (row stride K) times depths k0..k1 of one panel: 16 accumulators in
    registers, starting from out's values when ``acc``, else from zero."""
    V = vwidth(wp)
    z = vsplat(a.dtype.type(0))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
    if acc:
        c00, c01, c02, c03 = (vload(out, o0), vload(out, o0 + V), vload(out, o0 + 2 * V),
                              vload(out, o0 + 3 * V))
        o = o0 + ldo
        c10, c11, c12, c13 = vload(out, o), vload(out, o + V), vload(out, o + 2 * V), vload(
            out, o + 3 * V)
        o = o0 + 2 * ldo
        c20, c21, c22, c23 = vload(out, o), vload(out, o + V), vload(out, o + 2 * V), vload(
            out, o + 3 * V)
        o = o0 + 3 * ldo
        c30, c31, c32, c33 = vload(out, o), vload(out, o + V), vload(out, o + 2 * V), vload(
            out, o + 3 * V)
    for k in range(k0, k1):
        p = w0 + k * 4 * V
        w_0 = vload(wp, p)
        w_1 = vload(wp, p + V)
        w_2 = vload(wp, p + 2 * V)
        w_3 = vload(wp, p + 3 * V)
        x = vsplat(a[U(a0 + k)])
        c00, c01 = vfma(x, w_0, c00), vfma(x, w_1, c01)
        c02, c03 = vfma(x, w_2, c02), vfma(x, w_3, c03)
        x = vsplat(a[U(a0 + K + k)])
        c10, c11 = vfma(x, w_0, c10), vfma(x, w_1, c11)
        c12, c13 = vfma(x, w_2, c12), vfma(x, w_3, c13)
        x = vsplat(a[U(a0 + 2 * K + k)])
        c20, c21 = vfma(x, w_0, c20), vfma(x, w_1, c21)
        c22, c23 = vfma(x, w_2, c22), vfma(x, w_3, c23)
        x = vsplat(a[U(a0 + 3 * K + k)])
        c30, c31 = vfma(x, w_0, c30), vfma(x, w_1, c31)
        c32, c33 = vfma(x, w_2, c32), vfma(x, w_3, c33)
    for r, (q0, q1, q2, q3) in enumerate(((c00, c01, c02, c03), (c10, c11, c12, c13),
                                          (c20, c21, c22, c23), (c30, c31, c32, c33))):
        o = o0 + r * ldo
        vstore(out, o, q0)
        vstore(out, o + V, q1)
        vstore(out, o + 2 * V, q2)
        vstore(out, o + 3 * V, q3)


@njit(**JIT)
def _row1(a, a0, k0, k1, wp, w0, out, o0, acc):
    V = vwidth(wp)
    c0 = c1 = c2 = c3 = vsplat(a.dtype.type(0))
    if acc:
        c0, c1 = vload(out, o0), vload(out, o0 + V)
        c2, c3 = vload(out, o0 + 2 * V), vload(out, o0 + 3 * V)
    for k in range(k0, k1):
        p = w0 + k * 4 * V
        x = vsplat(a[U(a0 + k)])
        c0, c1 = vfma(x, vload(wp, p), c0), vfma(x, vload(wp, p + V), c1)
        c2, c3 = vfma(x, vload(wp, p + 2 * V), c2), vfma(x, vload(wp, p + 3 * V), c3)
    vstore(out, o0, c0)
    vstore(out, o0 + V, c1)
    vstore(out, o0 + 2 * V, c2)
    vstore(out, o0 + 3 * V, c3)


@njit(**JIT)
def gemm(a, a0, K, rows, wp, w0, P, out, o0):
    """out[o0:] (rows, P*NR) = a[a0:] (rows, K) @ the P panels at wp[w0:] (K, P*NR), all
    row-major. Each output element sums over k in order, whatever the blocking."""
    NR = panel_width(wp)
    ldo = P * NR
    for k0 in range(0, K, KC):
        k1 = min(K, k0 + KC)
        for p in range(P):
            wq = w0 + p * K * NR
            r = 0
            while r + 4 <= rows:
                _rows4(a, a0 + r * K, K, k0, k1, wp, wq, out, o0 + r * ldo + p * NR, ldo, k0 > 0)
                r += 4
            while r < rows:
                _row1(a, a0 + r * K, k0, k1, wp, wq, out, o0 + r * ldo + p * NR, k0 > 0)
                r += 1


# ----------------------------------------------------------------------------------------------
# Steps, blocks, shares


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


@njit(**JIT)
def block_of(c, R, U_, B):
    """Block c of a plan with R row groups and U_ unit chunks: (b0, b1, u), rows [b0, b1) of
    the batch and unit chunk u."""
    r = c // U_
    return r * B // R, (r + 1) * B // R, c % U_


@njit(**JIT)
def count_valid(lengths, t, b0, b1):
    k = 0
    for b in range(b0, b1):
        if t < lengths[b]:
            k += 1
    return k


@njit(**JIT)
def receive(dh, part, p, b0, b1, u0, n, B, H, units, Hp):
    """dh[b0:b1, u0:u0+n] += every unit chunk's share of the gradient sent to h by the step
    processed before, in chunk order. The shares of slot p are (units, B, Hp) row-major at
    p*units*B*Hp."""
    for v in range(units):
        q0 = ((p * units + v) * B) * Hp
        for b in range(b0, b1):
            add_to(dh, b * H + u0, part, q0 + b * Hp + u0, n)


# ----------------------------------------------------------------------------------------------
# The GEMMs above the recurrence


@njit(parallel=True, **JIT)
def matmul_rows(a, b, out, chunks, bias, biased):
    """out = a @ b (+ bias when ``biased``), each thread a block of rows; a and out
    C-contiguous, b C or F."""
    M = a.shape[0]
    N = out.shape[1]
    flat_out = out.reshape(-1)
    for c in prange(chunks):
        m0, m1 = c * M // chunks, (c + 1) * M // chunks
        np.dot(a[m0:m1], b, out[m0:m1])
        if biased:
            for m in range(m0, m1):
                add_to(flat_out, m * N, bias, 0, N)


@intrinsic
def xgemm_nt(typingctx, m, n, k, a, a0, lda, b, b0, ldb, c, c0, ldc):
    """BLAS gemm in column-major terms, C = A @ B^T: C (m, n) at c[c0:] with leading dimension
    ldc, A (m, k) at a[a0:] (lda), B (n, k) at b[b0:] (ldb). Through Numba's own BLAS entry
    point (SciPy's BLAS, as np.dot), so compiled code that calls it can be cached."""
    def codegen(context, builder, sig, args):
        m, n, k, a, a0, lda, b, b0, ldb, c, c0, ldc = args
        i8p = ir.IntType(8).as_pointer()
        intp = cgutils.intp_t
        dtype = sig.args[3].dtype
        fnty = ir.FunctionType(ir.IntType(32), [ir.IntType(8)] * 3 + [intp] * 3 + [
            i8p, i8p, intp, i8p, intp, i8p, i8p, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def at(arr_ty, arr, off):
            data = context.make_array(arr_ty)(context, builder, arr).data
            return builder.bitcast(builder.gep(data, [off]), i8p)

        def slot(v):
            return builder.bitcast(cgutils.alloca_once_value(
                builder, context.get_constant(dtype, v)), i8p)

        def char(ch):
            return ir.Constant(ir.IntType(8), ord(ch))

        kind = char("s" if dtype == types.float32 else "d")
        builder.call(fn, [kind, char("n"), char("t"), m, n, k, slot(1.0),
                          at(sig.args[3], a, a0), lda, at(sig.args[6], b, b0), ldb, slot(0.0),
                          at(sig.args[9], c, c0), ldc])
        return context.get_dummy_value()
    return types.none(types.intp, types.intp, types.intp, a, types.intp, types.intp, b,
                      types.intp, types.intp, c, types.intp, types.intp), codegen


@njit(parallel=True, **JIT)
def matmul_tn(aT, b, out, chunks):
    """out = aT.T @ b, each thread a block of out's rows (aT's columns) in one BLAS call, so no
    thread needs a buffer of its own or a reduction; aT (K, M), b (K, N) and out (M, N)
    C-contiguous."""
    K, M = aT.shape
    N = b.shape[1]
    fa, fb, fo = aT.reshape(-1), b.reshape(-1), out.reshape(-1)
    for c in prange(chunks):
        m0, m1 = c * M // chunks, (c + 1) * M // chunks
        # Column-major: out^T (N, M) = b^T (N, K) @ aT (K, M); this thread's columns m0..m1.
        xgemm_nt(N, m1 - m0, K, fb, 0, N, fa, m0, M, fo, m0 * N, N)


def matmul(a, b, threads, min_work, bias=None):
    """a @ b (2-D) + bias (a row vector, or None) on Numba's threads, each calling BLAS (which
    the caller keeps at one thread) on a block of output rows. Below ``min_work`` multiply-adds,
    with one thread, with too few rows or with a left factor in neither C nor Fortran order, a
    plain call."""
    M, K = a.shape
    N = b.shape[1]
    if (threads < 2 or M * K * N < min_work or M < 4 * threads
            or not (a.flags.c_contiguous or a.flags.f_contiguous)):
        out = a @ b
        if bias is not None:
            out += bias
        return out
    out = np.empty((M, N), np.result_type(a, b))
    if a.flags.c_contiguous:  # the bias is added per thread, while its rows are in cache
        if not b.flags.c_contiguous and not b.flags.f_contiguous:
            b = np.ascontiguousarray(b)
        biased = bias is not None
        matmul_rows(a, b, out, threads, np.ascontiguousarray(bias) if biased
                    else np.empty(0, out.dtype), biased)
    else:
        matmul_tn(a.T, np.ascontiguousarray(b), out, threads)
        if bias is not None:
            out += bias
    return out


# ----------------------------------------------------------------------------------------------
# Python side


class Plan(NamedTuple):
    """How a call splits over threads: ``rows`` groups of batch rows times ``units`` chunks of
    ``size`` hidden units (the last chunk may be shorter).

    Row groups are independent sequences: with one unit chunk each thread runs its rows through
    every step on its own. Unit chunks share the state, so they meet at a barrier every step
    (a parallel region per step), which pays when a step's product is large enough that the
    wider product per thread is worth more than the barrier.
    """

    rows: int
    units: int
    size: int

    @property
    def blocks(self):
        return self.rows * self.units


def make_plan(H, rows, units):
    units = max(1, min(units, -(-H // 16)))
    size = -(-H // units)
    if units > 1:
        size = -(-size // 16) * 16  # whole vectors per chunk
    return Plan(rows, -(-H // size), size)


# Above this many elements of W_hh, the threads share the packing.
PACK_PARALLEL_MIN = 1 << 16


def _pack(W_hh, gates, plan, forward):
    H = W_hh.shape[1]
    return pack_panels(W_hh.reshape(-1), H, np.array(gates, np.int64), plan.size, plan.units,
                       forward, W_hh.size >= PACK_PARALLEL_MIN and threads() > 1)


def pack_forward(W_hh, gates, plan):
    """Panels for the forward product of each chunk, flat (units, P, H, NR): ``gemm(h, ...)``
    gives the chunk's gates, gate k at columns k*size.. of each row. Returns (panels, P).
    W_hh C-contiguous."""
    return _pack(W_hh, gates, plan, True)


class Packed:
    """W_hh of one call (``array``, C-contiguous), its common.Plan, and its forward panels,
    packed on first use and kept for every chunk of the call."""

    def __init__(self, W_hh, plan):
        self.array, self.plan = W_hh, plan
        self._panels = {}

    def forward(self, gates):
        """pack_forward(W_hh, gates, plan), packed once."""
        key = tuple(gates)
        if key not in self._panels:
            self._panels[key] = pack_forward(self.array, key, self.plan)
        return self._panels[key]


def pack_backward(W_hh, gates, plan):
    """Panels for each chunk's share of d @ W_hh, flat (units, P, k*size, NR): ``gemm(d, ...)``
    with d the chunk's k*size gate gradients gives the share, columns 0..H. Returns
    (panels, P). W_hh C-contiguous."""
    return _pack(W_hh, gates, plan, False)


def _nr(a):
    return 4 * 64 // a.itemsize


def padded(n, a):
    """n rounded up to whole panels of a's dtype."""
    nr = _nr(a)
    return -(-n // nr) * nr


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


def gate_store(x_proj, training, G, H):
    """Where a training forward keeps the activated gates (T, B, G*H) for backward: x_proj's own
    memory when it is C-contiguous and writeable (each step reads its row of x_proj before it
    writes that row's gates, so nothing is read after it is overwritten; this saves a buffer of
    x_proj's size and the page faults of filling it), else a new array. A placeholder in
    inference."""
    T, B, _ = x_proj.shape
    if not training:
        return np.empty((1, 1, 1), x_proj.dtype)
    if x_proj.flags.c_contiguous and x_proj.flags.writeable:
        return x_proj
    return np.empty((T, B, G * H), x_proj.dtype)


def flat_input(a):
    """flat() of an input array; copies when the strides do not allow a view or the array is
    read-only (so the kernels see one array type)."""
    f = flat(a) if a.flags.writeable else None
    return f if f is not None else flat(np.array(a, order="C"))


class BlasThreads:
    """Sets the BLAS libraries' thread count for the duration of a call (a context manager).
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

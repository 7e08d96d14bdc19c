"""The GEMMs above the recurrence (backends/fused.py) on Numba's threads, and the BLAS thread
limit.

``matmul`` splits a product by rows of the output: ``matmul_rows`` through np.dot;
``matmul_tn`` through ``xgemm_nt``, a direct call of the BLAS gemm that np.dot uses, for a
transposed left factor. Each thread calls BLAS, which the backend keeps at one thread.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .scalars import JIT
from .vectors import add_to


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
    if K == 1:  # an outer product (dW of a one-row call): OpenBLAS takes 5x longer for it
        out = a * b
        if bias is not None:
            out += bias
        return out
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

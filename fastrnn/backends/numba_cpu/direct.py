"""The recurrent product on W_hh as the caller holds it (row-major, unpacked).

With few rows per step, packing W_hh into panels costs more than it saves: a step of one row
reads every weight once either way, and the packing is one more pass over W_hh (two for a
training call, whose backward packs W_hh's other form) on every call. One-step decoding and
short sequences take these products instead (``NumbaBackend`` chooses, by ``tuning.py``'s
``direct_max_rows``), and since nothing is derived from the weights, nothing can go stale when
they are updated in place between calls.
"""

from __future__ import annotations

from numba import njit

from .scalars import JIT, U


@njit(**JIT)
def dots(a, a0, lda, K, rows, w, w0, N, out, o0, ldo):
    """out[o0 + r*ldo + j] = a[a0 + r*lda:][:K] . w[w0 + j*K:][:K] for r < rows, j < N: rows
    of a times N rows of a row-major (., K) matrix, transposed (h @ W^T). Each row of w is read
    once, for every row of a while it is in the L1 cache."""
    zero = a.dtype.type(0)
    for j in range(N):
        p = w0 + j * K
        for r in range(rows):
            ar = a0 + r * lda
            s = zero
            for k in range(K):
                s += a[U(ar + k)] * w[U(p + k)]
            out[U(o0 + r * ldo + j)] = s


@njit(**JIT)
def axpys(d, d0, ldd, n, rows, w, w0, H, out, o0, ldo, acc):
    """out[o0 + r*ldo:][:H] (+)= sum over j < n of d[d0 + r*ldd + j] * w[w0 + j*H:][:H]: rows
    of d times n rows of a row-major (., H) matrix (d @ W); adds to out when ``acc``. Each row
    of w is read once, for every row of d while it is in the L1 cache."""
    zero = d.dtype.type(0)
    if not acc:
        for r in range(rows):
            for k in range(H):
                out[U(o0 + r * ldo + k)] = zero
    for j in range(n):
        p = w0 + j * H
        for r in range(rows):
            c = d[U(d0 + r * ldd + j)]
            o = o0 + r * ldo
            for k in range(H):
                out[U(o + k)] += c * w[U(p + k)]

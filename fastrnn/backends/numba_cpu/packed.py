"""The recurrent product of a step: ``gemm``, rows @ panels of W_hh packed once per call.

The weights are packed into panels of 4 vectors' width (``pack_panels``, ``Packed``: once for
every chunk of a chunked inference too), which a 4-row micro-kernel streams while 16
accumulators stay in registers, one L1-sized slice of depth (``tuning.KC``) at a time. For the
few rows a thread owns per step this beats a BLAS call, which packs the weights again every
time. ``Plan`` is how a call splits over threads; the panels follow its unit chunks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .. import tuning
from ..tuning import KC
from .blas import threads
from .scalars import JIT, U
from .vectors import copy_row, vfma, vload, vsplat, vstore, vwidth, zero_row


@njit(**JIT)
def panel_width(w):
    return 4 * vwidth(w)


@njit(**JIT)
def _block_row(gates, size, H, u, row):
    """The row of W (H rows a gate) that row ``row`` of chunk u's block holds (the block: rows
    u*size..(u+1)*size of each gate in ``gates``, gate by gate), or -1 for a zero row (past H,
    or past the block)."""
    g, r = row // size, row % size
    if g >= len(gates) or u * size + r >= H:
        return -1
    return gates[g] * H + u * size + r


@njit(**JIT)
def _rows_panel(out, w, gates, size, H, K, P, c):
    """Panel c = u*P + p of the forward panels: the transpose of rows p*NR.. of chunk u's
    block, (K, NR). Copied in tiles of NR rows by 64 columns, so the strided writes stay within
    the L1 cache."""
    NR = panel_width(w)
    u, p = c // P, c % P
    zero = w.dtype.type(0)
    for k0 in range(0, K, 64):
        k1 = min(K, k0 + 64)
        for j in range(NR):
            o = c * K * NR + j
            src = _block_row(gates, size, H, u, p * NR + j)
            if src >= 0:
                for k in range(k0, k1):
                    out[U(o + k * NR)] = w[U(src * K + k)]
            else:
                for k in range(k0, k1):
                    out[U(o + k * NR)] = zero


@njit(**JIT)
def _columns_panel(out, w, gates, size, H, K, P, c):
    """Panel c = u*P + p of the backward panels: columns p*NR.. of chunk u's block, (N, NR),
    zero past K."""
    NR = panel_width(w)
    N = len(gates) * size
    u, p = c // P, c % P
    n = min(NR, K - p * NR)
    for row in range(N):
        o = (c * N + row) * NR
        src = _block_row(gates, size, H, u, row)
        if src >= 0:
            copy_row(out, o, w, src * K + p * NR, n)
            zero_row(out, o + n, NR - n)
        else:
            zero_row(out, o, NR)


@njit(**JIT)
def _panel(out, w, gates, size, H, K, P, c, forward):
    if forward:
        _rows_panel(out, w, gates, size, H, K, P, c)
    else:
        _columns_panel(out, w, gates, size, H, K, P, c)


@njit(parallel=True, **JIT)
def pack_panels(w, H, K, gates, size, units, forward, parallel):
    """The panels of every chunk of the flat (G*H, K) matrix ``w`` (W_hh: K = H, or K = the
    projection's width; W_hr: one gate of H = its rows) for the gates given, flat
    (units, P, K, NR) for the forward product (``gemm(h, ...)`` gives h @ block^T, gate k at
    columns k*size..) or (units, P, N, NR) with N = len(gates)*size for the backward one
    (``gemm(d, ...)`` gives d @ block, columns 0..K). Returns (panels, P). Panels are
    independent: with ``parallel`` the threads share them."""
    NR = panel_width(w)
    N = len(gates) * size
    P = -(-(N if forward else K) // NR)
    out = np.empty(units * P * (K if forward else N) * NR, w.dtype)
    if parallel:
        for c in prange(units * P):
            _panel(out, w, gates, size, H, K, P, c, forward)
    else:
        for c in range(units * P):
            _panel(out, w, gates, size, H, K, P, c, forward)
    return out, P


@njit(**JIT)
def _load4(out, o, V):
    """The four vectors of one panel row at out[o:]."""
    return vload(out, o), vload(out, o + V), vload(out, o + 2 * V), vload(out, o + 3 * V)


@njit(**JIT)
def _store4(out, o, V, q0, q1, q2, q3):
    vstore(out, o, q0)
    vstore(out, o + V, q1)
    vstore(out, o + 2 * V, q2)
    vstore(out, o + 3 * V, q3)


@njit(**JIT)
def _rows4(a, a0, K, k0, k1, wp, w0, out, o0, ldo, acc):
    """Four rows of a (row stride K) times depths k0..k1 of one panel: 16 accumulators in
    registers, starting from out's values when ``acc``, else from zero."""
    V = vwidth(wp)
    z = vsplat(a.dtype.type(0))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
    if acc:
        c00, c01, c02, c03 = _load4(out, o0, V)
        c10, c11, c12, c13 = _load4(out, o0 + ldo, V)
        c20, c21, c22, c23 = _load4(out, o0 + 2 * ldo, V)
        c30, c31, c32, c33 = _load4(out, o0 + 3 * ldo, V)
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
        _store4(out, o0 + r * ldo, V, q0, q1, q2, q3)


@njit(**JIT)
def _row1(a, a0, k0, k1, wp, w0, out, o0, acc):
    V = vwidth(wp)
    c0 = c1 = c2 = c3 = vsplat(a.dtype.type(0))
    if acc:
        c0, c1, c2, c3 = _load4(out, o0, V)
    for k in range(k0, k1):
        p = w0 + k * 4 * V
        x = vsplat(a[U(a0 + k)])
        c0, c1 = vfma(x, vload(wp, p), c0), vfma(x, vload(wp, p + V), c1)
        c2, c3 = vfma(x, vload(wp, p + 2 * V), c2), vfma(x, vload(wp, p + 3 * V), c3)
    _store4(out, o0, V, c0, c1, c2, c3)


@njit(**JIT)
def _row1x2(a, a0, k0, k1, wp, w0, w1, out, o0, acc):
    """One row times two panels (at wp[w0:] and wp[w1:], outputs at out[o0:] and the panel
    width after): eight independent accumulator chains, where one panel's four would wait on
    the latency of each fused multiply-add."""
    V = vwidth(wp)
    NR = 4 * V
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = vsplat(a.dtype.type(0))
    if acc:
        c0, c1, c2, c3 = _load4(out, o0, V)
        c4, c5, c6, c7 = _load4(out, o0 + NR, V)
    for k in range(k0, k1):
        p, q = w0 + k * NR, w1 + k * NR
        x = vsplat(a[U(a0 + k)])
        c0, c1 = vfma(x, vload(wp, p), c0), vfma(x, vload(wp, p + V), c1)
        c2, c3 = vfma(x, vload(wp, p + 2 * V), c2), vfma(x, vload(wp, p + 3 * V), c3)
        c4, c5 = vfma(x, vload(wp, q), c4), vfma(x, vload(wp, q + V), c5)
        c6, c7 = vfma(x, vload(wp, q + 2 * V), c6), vfma(x, vload(wp, q + 3 * V), c7)
    _store4(out, o0, V, c0, c1, c2, c3)
    _store4(out, o0 + NR, V, c4, c5, c6, c7)


@njit(**JIT)
def gemm(a, a0, K, rows, wp, w0, P, out, o0):
    """out[o0:] (rows, P*NR) = a[a0:] (rows, K) @ the P panels at wp[w0:] (K, P*NR), all
    row-major. Each output element sums over k in order, whatever the blocking."""
    NR = panel_width(wp)
    ldo = P * NR
    tail = rows - rows % 4  # the rows after the groups of four: one at a time
    for k0 in range(0, K, KC):
        k1 = min(K, k0 + KC)
        for p in range(P):
            wq = w0 + p * K * NR
            for r in range(0, tail, 4):
                _rows4(a, a0 + r * K, K, k0, k1, wp, wq, out, o0 + r * ldo + p * NR, ldo, k0 > 0)
        for r in range(tail, rows):
            p = 0
            while p + 2 <= P:
                _row1x2(a, a0 + r * K, k0, k1, wp, w0 + p * K * NR, w0 + (p + 1) * K * NR, out,
                        o0 + r * ldo + p * NR, k0 > 0)
                p += 2
            if p < P:
                _row1(a, a0 + r * K, k0, k1, wp, w0 + p * K * NR, out, o0 + r * ldo + p * NR,
                      k0 > 0)


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


def _pack(W, gates, plan, forward, H):
    H = W.shape[1] if H is None else H
    return pack_panels(W.reshape(-1), H, W.shape[1], np.array(gates, np.int64), plan.size,
                       plan.units, forward, W.size >= tuning.PACK_PARALLEL_MIN and threads() > 1)


def pack_forward(W_hh, gates, plan, H=None):
    """Panels for the forward product of each chunk, flat (units, P, K, NR), K = W_hh.shape[1]:
    ``gemm(h, ...)`` gives the chunk's gates, gate k at columns k*size.. of each row. Returns
    (panels, P). W_hh C-contiguous, H rows a gate (W_hh.shape[1], the square W_hh's, unless
    given: a projecting LSTM's W_hh (G*H, K), or W_hr (K', H) as one gate of K' rows)."""
    return _pack(W_hh, gates, plan, True, H)


class Packed:
    """W_hh of one call (``array``, C-contiguous), its Plan, and its forward panels, packed on
    first use and kept for every chunk of the call; or, when ``direct``, W_hh itself, which the
    products then read as it is (direct.py)."""

    def __init__(self, W_hh, plan, direct=False, H=None):
        self.array, self.plan, self.direct = W_hh, plan, direct
        self.H = W_hh.shape[1] if H is None else H  # rows a gate (pack_forward)
        self._panels = {}

    def forward(self, phases):
        """What the forward products read: the forward panels of each product in ``phases``
        (the gates of each), pack_forward one after the other in one flat array, packed once;
        W_hh itself when direct."""
        if self.direct:
            return self.array
        key = tuple(tuple(g) for g in phases)
        if key not in self._panels:
            parts = [pack_forward(self.array, g, self.plan, self.H)[0] for g in key]
            self._panels[key] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._panels[key]


def pack_backward(W_hh, gates, plan, H=None):
    """Panels for each chunk's share of d @ W_hh, flat (units, P, k*size, NR): ``gemm(d, ...)``
    with d the chunk's k*size gate gradients gives the share, columns 0..K. Returns
    (panels, P). W_hh C-contiguous, H as in ``pack_forward``."""
    return _pack(W_hh, gates, plan, False, H)


def _nr(a):
    return 4 * 64 // a.itemsize


def padded(n, a):
    """n rounded up to whole panels of a's dtype."""
    nr = _nr(a)
    return -(-n // nr) * nr

"""The Numba CPU backend: the time loop of every cell compiled and fused.

    common.py   activations, the recurrent product (BLAS or a hand-written loop), row loops,
                flat views, the BLAS thread limit
    rnn.py, lstm.py, gru.py   one cell each: its forward and backward time loops

``FusedBackend`` (backends/base.py) does the input projection before the loop and the weight
gradients after it as GEMMs over all T*B rows; this backend runs ``recurrence_forward`` and
``recurrence_backward``. Importing this package does not import Numba; constructing
``NumbaBackend()`` does.

Threads split the batch: the rows of a batch are independent sequences, so each thread runs its
share of the rows through every step on its own, with no synchronisation between steps (one
parallel region per call). Within a thread each step is one product of the rows' states with
W_hh (BLAS, or a hand-written loop for a single row) followed by the cell's pointwise work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import FusedBackend


def set_num_threads(n: int) -> None:
    """Threads the Numba backend uses (Numba's own setting; at most NUMBA_NUM_THREADS).
    BLAS calls made inside its kernels are limited to the same number."""
    import numba

    if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)):
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n must lie in [1, {limit}] (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads the Numba backend uses in the calling thread."""
    import numba

    return numba.get_num_threads()


@dataclass
class Saved:
    """What one direction's training forward keeps (layout in cells.py)."""

    hs: Any
    cs: Any
    gates: Any
    hn: Any
    lengths: Any
    reverse: bool


class NumbaBackend(FusedBackend):
    """Fused recurrences compiled with Numba for NumPy arrays.

    Knobs (instance attributes, measured defaults): the batch splits over the threads when
    every thread gets at least ``parallel_min_rows`` rows and the call has at least
    ``parallel_min_work`` multiply-adds (T*B*G*H*H); a thread uses BLAS for its recurrent product
    when it has at least ``blas_min_rows`` rows.
    """

    name = "numba"
    library = "numpy"
    xp = np
    parallel_min_rows = 1
    parallel_min_work = 1 << 20
    blas_min_rows = 2

    def __init__(self):
        from . import common, gru, lstm, rnn

        self._common = common
        self._kernels = {"rnn": rnn, "lstm": lstm, "gru": gru}
        self._blas = common.BlasThreads()

    def _plan(self, cell, T, B, H):
        """(chunks of rows, use BLAS, BLAS threads while the kernel runs)."""
        threads = self._common.threads()
        chunks = 1
        if T * B * cell.gates * H * H >= self.parallel_min_work:
            chunks = max(1, min(threads, B // max(1, self.parallel_min_rows)))
        use_blas = B // chunks >= self.blas_min_rows
        return chunks, use_blas, 1 if chunks > 1 else threads

    @staticmethod
    def _lengths(lengths, T, B):
        if lengths is None:
            return np.full(B, T, np.int64)
        return np.ascontiguousarray(lengths, dtype=np.int64)

    def recurrence_forward(self, cell, x_proj, W_hh, b_hh, h0, c0, lengths, reverse, y,
                           training):
        T, B, _ = x_proj.shape
        H = W_hh.shape[1]
        chunks, use_blas, blas_threads = self._plan(cell, T, B, H)
        y_out = y if self._common.flat(y) is not None else np.empty(y.shape, y.dtype)
        with self._blas.limit(blas_threads) if use_blas else _NoLimit():
            h_n, c_n, saved = self._kernels[cell.kind].forward(
                cell, x_proj, y_out, np.ascontiguousarray(W_hh), np.ascontiguousarray(b_hh), h0,
                c0, self._lengths(lengths, T, B), bool(reverse), bool(training), chunks,
                use_blas)
        if y_out is not y:
            y[...] = y_out
        return h_n, c_n, saved

    def recurrence_backward(self, cell, saved, W_hh, dy, dh_n, dc_n, d_gx):
        T, B, H = dy.shape
        chunks, use_blas, blas_threads = self._plan(cell, T, B, H)
        g_out = d_gx if self._common.flat(d_gx) is not None else np.empty(d_gx.shape, d_gx.dtype)
        with self._blas.limit(blas_threads) if use_blas else _NoLimit():
            hh_terms, dh0, dc0 = self._kernels[cell.kind].backward(
                cell, saved, np.ascontiguousarray(W_hh), dy, dh_n, dc_n, g_out, chunks, use_blas)
        if g_out is not d_gx:
            d_gx[...] = g_out
        return hh_terms, dh0, dc0


class _NoLimit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


__all__ = ["NumbaBackend", "get_num_threads", "set_num_threads"]

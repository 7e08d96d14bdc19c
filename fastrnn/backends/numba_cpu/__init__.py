"""The Numba CPU backend: the time loop of every cell compiled and fused.

    common.py   activations, the recurrent product (a hand-written gemm on packed panels), the
                GEMMs above the recurrence, row loops, flat views, the BLAS thread limit
    rnn.py, lstm.py, gru.py   one cell each: its forward and backward time loops

``FusedBackend`` (backends/base.py) does the input projection before the loop and the weight
gradients after it as GEMMs over all T*B rows; this backend runs ``recurrence_forward`` and
``recurrence_backward``. Importing this package does not import Numba; constructing
``NumbaBackend()`` does.

Threads split the batch or the hidden units (common.Plan). The rows of a batch are independent
sequences, so with row groups each thread runs its rows through every step on its own, with no
synchronisation between steps. Very large steps, or large ones with few rows per thread, split
the hidden units instead: each thread multiplies every row by its chunk of W_hh (packed once
per call), so each core streams half of W_hh per step, at the price of a barrier per step
(NumbaBackend gives the measurements). Within a block each step is one product (common.gemm
on the packed panels) followed by the cell's pointwise work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import FusedBackend

_requested_threads = None  # what the user last passed to set_num_threads (None: never called)


def set_num_threads(n: int) -> None:
    """Threads the Numba backend uses: Numba's own setting for the calling thread, at most
    NUMBA_NUM_THREADS. The backend's GEMMs are split over these threads, each calling BLAS on one
    thread, so BLAS never adds threads of its own."""
    import numba

    if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)):
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n must lie in [1, {limit}] (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(int(n))
    global _requested_threads
    _requested_threads = int(n)


def requested_num_threads():
    """The count the user last set with ``set_num_threads``, or None when never set: front ends
    that follow another library's thread setting (fastrnn.torch) yield to an explicit choice."""
    return _requested_threads


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

    Knobs (instance attributes; the defaults come from measurements on a 2-core AVX-512
    machine): a call uses several threads when it has at least ``parallel_min_work``
    multiply-adds in its recurrent products (T*B*G*H*H); the threads split the hidden units
    when one step's product has at least ``unit_split_min`` multiply-adds (B*G*H*H), or at
    least ``few_rows_unit_split_min`` when the batch has fewer than ``few_rows`` rows per thread,
    else the batch rows, at least ``parallel_min_rows`` per thread. The GEMMs above the
    recurrence run on the threads when they have at least ``matmul_min_work`` multiply-adds.

    Why: split by rows, every thread streams all of W_hh through its cache each step for its
    own rows, with no barrier between steps; split by units, a thread streams half of W_hh for
    all rows, and the threads meet at a barrier every step. Measured on an AMD EPYC with 1 MB
    of L2 cache per core (ms, forward, rows vs units): LSTM (50, 4, 1024, 1024) 57 vs 33, (50,
    8, 512, 512) 11.8 vs 12.1, (100, 32, 256, 256) 21.9 vs 23.0; training, (100, 32, 256, 256)
    96 vs 108 and (100, 64, 512, 512) 500 vs 526; at (50, 64, 1024, 1024) either way within the
    noise (LSTM training 1095 vs 1074, GRU inference 311 vs 292).
    """

    name = "numba"
    library = "numpy"
    xp = np
    parallel_min_work = 1 << 20
    parallel_min_rows = 1
    unit_split_min = 1 << 27
    few_rows_unit_split_min = 1 << 23
    few_rows = 4
    matmul_min_work = 1 << 21

    def __init__(self):
        from . import common, gru, lstm, rnn

        self._common = common
        self._kernels = {"rnn": rnn, "lstm": lstm, "gru": gru}
        self._blas = common.BlasThreads()

    # BLAS runs one thread at a time inside this backend (forward and backward hold the limit
    # around everything they run): the GEMMs above the recurrence go through ``matmul`` on
    # Numba's threads, so no BLAS thread pool ever competes with them.

    def forward(self, cell, x, dirs, lengths, training):
        with self._blas.limit(1):
            return super().forward(cell, x, dirs, lengths, training)

    def backward(self, cell, saved, dy, dh_n, dc_n):
        with self._blas.limit(1):
            return super().backward(cell, saved, dy, dh_n, dc_n)

    def gate_gradients(self, saved, T, B, N):
        """The saved gates of a one-direction call when they are C-contiguous (T, B, N): every
        backward kernel reads a row's gates before it writes that row's gradients, at the same
        place, so the gradients need no new buffer (nor its page faults)."""
        if len(saved.directions) == 1:
            gates = saved.directions[0].gates
            if (gates is not None and gates.shape == (T, B, N) and gates.flags.c_contiguous
                    and gates.flags.writeable):
                return gates
        return super().gate_gradients(saved, T, B, N)

    def matmul(self, a, b, bias=None):
        return self._common.matmul(a, b, self._common.threads(), self.matmul_min_work, bias)

    def _plan(self, cell, T, B, H):
        """The common.Plan of a call."""
        threads = self._common.threads()
        rows = units = 1
        step = B * cell.gates * H * H
        if threads > 1 and T * step >= self.parallel_min_work:
            split_min = self.unit_split_min
            if B < self.few_rows * threads:
                split_min = min(split_min, self.few_rows_unit_split_min)
            if step >= split_min:
                units = threads
            else:
                rows = max(1, min(threads, B // max(1, self.parallel_min_rows)))
        return self._common.make_plan(H, rows, units)

    @staticmethod
    def _lengths(lengths, T, B):
        if lengths is None:
            return np.full(B, T, np.int64)
        return np.ascontiguousarray(lengths, dtype=np.int64)

    def prepare_hh(self, cell, W_hh, T, B):
        """W_hh with the call's plan; its panels are packed when first used, once per call."""
        return self._common.Packed(np.ascontiguousarray(W_hh),
                                   self._plan(cell, T, B, W_hh.shape[1]))

    def recurrence_forward(self, cell, x_proj, W_hh, b_hh, h0, c0, lengths, reverse, y,
                           training):
        T, B, _ = x_proj.shape
        if not isinstance(W_hh, self._common.Packed):
            W_hh = self.prepare_hh(cell, W_hh, T, B)
        y_out = y if self._common.flat(y) is not None else np.empty(y.shape, y.dtype)
        h_n, c_n, saved = self._kernels[cell.kind].forward(
            cell, x_proj, y_out, W_hh, np.ascontiguousarray(b_hh), h0, c0,
            self._lengths(lengths, T, B), bool(reverse), bool(training))
        if y_out is not y:
            y[...] = y_out
        return h_n, c_n, saved

    def recurrence_backward(self, cell, saved, W_hh, dy, dh_n, dc_n, d_gx):
        T, B, H = dy.shape
        plan = self._plan(cell, T, B, H)
        g_out = d_gx if self._common.flat(d_gx) is not None else np.empty(d_gx.shape, d_gx.dtype)
        hh_terms, dh0, dc0 = self._kernels[cell.kind].backward(
            cell, saved, np.ascontiguousarray(W_hh), dy, dh_n, dc_n, g_out, plan)
        if g_out is not d_gx:
            d_gx[...] = g_out
        return hh_terms, dh0, dc0


__all__ = ["NumbaBackend", "get_num_threads", "set_num_threads"]

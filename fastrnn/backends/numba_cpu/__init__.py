"""The Numba CPU backend: the time loop of every cell compiled and fused.

    skeleton.py   the time loop, the thread split and the plumbing of states and strides, once
                  for every cell; its docstring lists the kernels' argument groups
    driver.py     one call through the skeleton: buffers, flat views, the registry of cells
    rnn.py, lstm.py, gru.py, gru_textbook.py   one cell variant each: its step's row math and
                  its registration (``driver.register``)
    variants.py   the pointwise variants (cells.Variant: clip, peepholes, zoneout, layer norm) in
                  the cells' row functions
    projection.py the time loop of the projecting LSTM (h and c of two widths), around lstm.py's
                  row functions
    packed.py     the recurrent product (a hand-written gemm on packed panels) and the Plan
    vectors.py    64-byte vectors and row loops;  scalars.py  activations and compile flags
    blas.py       the GEMMs above the recurrence, the BLAS thread limit
    threads.py    idle threads that sleep: how Numba's pool and OpenBLAS's pools are started
    ../tuning.py  every threshold, with how it was chosen

``FusedBackend`` (backends/fused.py) does the input projection before the loop and the weight
gradients after it as GEMMs; this backend runs ``recurrence_forward`` and
``recurrence_backward``. It packs lengths (``packs_lengths``, backends/packing.py): with
lengths, the batch is ordered by length and only the valid steps' rows exist, in those GEMMs
and in every step's product, so padding costs no arithmetic. Importing this package does not
import Numba; constructing ``NumbaBackend()`` does.

Threads split the batch or the hidden units (packed.Plan). The rows of a batch are independent
sequences, so with row groups each thread runs its rows through every step on its own, with no
synchronisation between steps. Very large steps, or large ones with few rows per thread, split
the hidden units instead: each thread multiplies every row by its chunk of W_hh (packed once
per call), so each core streams half of W_hh per step, at the price of a barrier per step
(tuning.py gives the measurements). Within a block each step is one product (packed.gemm on
the packed panels) followed by the cell's pointwise work, per phase.

Note for development: Numba's cache of a compiled function is keyed on its own file, not on the
files of the functions it calls (the cells' row functions, gemm, tuning.KC), so after editing
any module of this package, clear the __pycache__ of this package.
"""

from __future__ import annotations

import importlib

import numpy as np

from .. import tuning
from ..fused import FusedBackend

# The cell variants, one module each; importing one registers it with the skeleton.
CELL_MODULES = ("rnn", "lstm", "gru", "gru_textbook")

_requested_threads = None  # what the user last passed to set_num_threads (None: never called)


def set_num_threads(n: int) -> None:
    """Threads the Numba backend uses: Numba's own setting for the calling thread, at most
    NUMBA_NUM_THREADS. The backend's GEMMs are split over these threads, each calling BLAS on one
    thread, so BLAS never adds threads of its own."""
    import numba

    from . import threads

    if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)):
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"n must lie in [1, {limit}] (NUMBA_NUM_THREADS), got {n}")
    threads.start_numba_threads()
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

    from . import threads

    threads.start_numba_threads()
    return numba.get_num_threads()


class NumbaBackend(FusedBackend):
    """Fused recurrences compiled with Numba for NumPy arrays.

    Knobs (instance attributes, defaults and their reasons in backends/tuning.py): a call uses
    several threads when it has at least ``parallel_min_work`` multiply-adds in its recurrent
    products (T*B*G*H*H); the threads split the hidden units when one step's product has at
    least ``unit_split_min`` multiply-adds (B*G*H*H), or at least ``few_rows_unit_split_min``
    when the batch has fewer than ``few_rows`` rows per thread, else the batch rows, at least
    ``parallel_min_rows`` per thread. The GEMMs above the recurrence run on the threads when
    they have at least ``matmul_min_work`` multiply-adds.
    """

    name = "numba"
    library = "numpy"
    xp = np
    packs_lengths = True
    parallel_min_work = tuning.parallel_min_work
    parallel_min_rows = tuning.parallel_min_rows
    unit_split_min = tuning.unit_split_min
    few_rows_unit_split_min = tuning.few_rows_unit_split_min
    few_rows = tuning.few_rows
    matmul_min_work = tuning.matmul_min_work
    direct_max_rows = tuning.direct_max_rows
    step_forward_min_state = tuning.step_forward_min_state
    has_step_kernel = True
    variant_switches = frozenset({"peepholes", "clip", "zoneout", "layer_norm", "proj_size"})

    def __init__(self):
        from . import blas, driver, packed, step, threads

        threads.start()

        for name in CELL_MODULES:
            importlib.import_module(f".{name}", __name__)
        self._blas_lib, self._packed, self._driver = blas, packed, driver
        self._blas = blas.BlasThreads()
        self._stepper = step.Stepper()

    # BLAS runs one thread at a time inside this backend (forward and backward hold the limit
    # around everything they run): the GEMMs above the recurrence go through ``matmul`` on
    # Numba's threads, so no BLAS thread pool ever competes with them.

    def forward(self, cell, x, dirs, lengths, training):
        with self._blas.limit(1):
            return super().forward(cell, x, dirs, lengths, training)

    def backward(self, cell, saved, dy, dh_n, dc_n):
        with self._blas.limit(1):
            return super().backward(cell, saved, dy, dh_n, dc_n)

    def gate_gradients(self, saved, shape):
        """The saved gates of a one-direction call when they are C-contiguous of ``shape``:
        every backward kernel reads a row's gates before it writes that row's gradients, at
        the same place, so the gradients need no new buffer (nor its page faults)."""
        if len(saved.directions) == 1:
            gates = saved.directions[0].gates
            if (gates is not None and gates.shape == shape and gates.flags.c_contiguous
                    and gates.flags.writeable):
                return gates
        return super().gate_gradients(saved, shape)

    def step_weights(self, cell, layers):
        return self._stepper.weights(layers)

    def step(self, cell, weights, x, hx):
        """One compiled call for the whole stack (step.py), which calls no BLAS; from
        ``step_forward_min_state`` state elements (B*H) on, a forward of one step per layer on
        the threads."""
        if x.shape[0] * hx[0].shape[2] >= self.step_forward_min_state:
            w_ih, b_ih, w_hh, b_hh = weights
            return super().step(cell, list(zip(w_ih, w_hh, b_ih, b_hh)), x, hx)
        return self._stepper(cell, weights, x, hx)

    def matmul(self, a, b, bias=None):
        return self._blas_lib.matmul(a, b, self._blas_lib.threads(), self.matmul_min_work, bias)

    def _plan(self, cell, T, B, H):
        """The packed.Plan of a call."""
        threads = self._blas_lib.threads()
        rows = units = 1
        step = B * cell.gates * H * H
        if threads > 1 and T * step >= self.parallel_min_work:
            split_min = self.unit_split_min
            if B < self.few_rows * threads:
                split_min = min(split_min, self.few_rows_unit_split_min)
            # a layer-normalised cell needs whole rows of gates per step (the row statistics),
            # and a projecting one runs its own loop (projection.py): their threads split the
            # batch only
            if step >= split_min and not (cell.variant.layer_norm or cell.variant.proj_size):
                units = threads
            else:
                rows = max(1, min(threads, B // max(1, self.parallel_min_rows)))
        return self._packed.make_plan(H, rows, units)

    def _direct(self, T, B, plan):
        """Whether a call's products read W_hh as it is rather than packed (direct.py): when
        each block runs few rows in all (T times its batch rows)."""
        return T * -(-B // plan.rows) <= self.direct_max_rows

    def prepare_hh(self, cell, W_hh, T, B):
        """W_hh with the call's plan; its panels are packed when first used, once per call."""
        H = W_hh.shape[0] // cell.gates  # W_hh (G*H, Hp): Hp is the projection's width
        plan = self._plan(cell, T, B, H)
        # the projecting loop reads packed panels only
        direct = self._direct(T, B, plan) and not cell.variant.proj_size
        return self._packed.Packed(np.ascontiguousarray(W_hh), plan, direct, H)

    def _input_projection(self, rows, W, dirs):
        """As FusedBackend's, with the input side's layer norm one compiled pass per row on
        the threads (variants.layer_norm_rows) rather than NumPy's passes over x_proj and
        its temporaries, which cost a layer-normalised forward a third more than the plain
        one at the medium preset (benchmarks/layer_norm.py)."""
        if dirs[0].g_ih is None:
            return super()._input_projection(rows, W, dirs)
        from .variants import layer_norm_rows

        x_proj = np.ascontiguousarray(self.matmul(rows, W.T))  # written through a flat view
        N, GH = x_proj.shape[0], W.shape[0] // len(dirs)
        norms = []
        for k, d in enumerate(dirs):
            mean, inv_std = np.empty((2, N, 1), x_proj.dtype)
            b = np.empty(0, x_proj.dtype) if d.b_ih is None else d.b_ih
            layer_norm_rows(x_proj.reshape(-1), x_proj.shape[1], k * GH, GH, d.g_ih, b,
                            mean.reshape(-1), inv_std.reshape(-1))
            norms.append((mean, inv_std))
        return x_proj, norms

    def recurrence_forward(self, cell, x_proj, W_hh, b_hh, h0, c0, lengths, reverse, y,
                           training, **variant):
        """x_proj (R, G*H) the valid rows that ``lengths``, a packing.Steps, lists (see
        FusedBackend); ``variant`` the variant's arrays (driver.forward): P, zoneout_mask
        (R, H), g_hh, g_c, b_c."""
        T, B, _ = y.shape
        if not isinstance(W_hh, self._packed.Packed):
            W_hh = self.prepare_hh(cell, W_hh, T, B)
        y_out = y if self._driver.flat(y) is not None else np.empty(y.shape, y.dtype)
        h_n, c_n, saved = self._driver.forward(
            cell, x_proj, y_out, W_hh, np.ascontiguousarray(b_hh), h0, c0, lengths,
            bool(reverse), bool(training), **variant)
        if y_out is not y:
            y[...] = y_out
        return h_n, c_n, saved

    def recurrence_backward(self, cell, saved, W_hh, dy, dh_n, dc_n, d_gx):
        T, B, _ = dy.shape
        plan = self._plan(cell, T, B, d_gx.shape[-1] // cell.gates)
        flat = self._driver.flat_rows(d_gx) is not None
        g_out = d_gx if flat else np.empty(d_gx.shape, d_gx.dtype)
        hh_terms, dh0, dc0, variant_grads = self._driver.backward(
            cell, saved, np.ascontiguousarray(W_hh), dy, dh_n, dc_n, g_out, plan,
            self._direct(T, B, plan) and not cell.variant.proj_size, self.matmul)
        if g_out is not d_gx:
            d_gx[...] = g_out
        if variant_grads:
            return hh_terms, dh0, dc0, variant_grads
        return hh_terms, dh0, dc0


__all__ = ["NumbaBackend", "get_num_threads", "set_num_threads"]

"""What a backend is, and the composition that the fused backends share.

A backend runs one recurrent layer: one or two directions over the same input. ``api.py`` and
``layers.py`` check inputs and call ``Backend.forward`` / ``Backend.backward``; they never look
inside a backend.

The reference backend implements ``forward`` / ``backward`` directly (it is the oracle and shares
no math with anything else). The fused backends (Numba, CuPy) derive from ``FusedBackend``, which
does the GEMMs once, above them: the input projection of every step and every direction is one
GEMM before the time loop, and dx, dW_ih, db_ih, dW_hh, db_hh are GEMMs/reductions over all T*B
rows after it, or over the valid steps' rows only where the backend packs lengths
(packing.py). A fused backend only supplies the time loop, ``recurrence_forward`` and
``recurrence_backward``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..cells import LN_EPS, Cell
from . import tuning
from .packing import Packing, Steps


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here; the message says why and what to install.

    Defined here, beside ``Backend``, so that a backend can raise it without importing the
    dispatch layer that selects it."""


# ----------------------------------------------------------------------------------------------
# The state convention of every backend (cells.py describes the layout)


def step_times(T: int, reverse: bool) -> range:
    """Time steps in processing order: T-1 down to 0 when ``reverse``, else 0 up to T-1."""
    return range(T - 1, -1, -1) if reverse else range(T)


def state_slots(s, T, reverse, training):
    """(t, row read, row written) of the s-th step processed, in a state buffer of T+1 rows
    (``training``: every state kept in time order) or of 2 rows (inference: the rows alternate).

    Plain Python on purpose: the Numba backend compiles this same function for its kernels."""
    t = T - 1 - s if reverse else s
    if not training:
        return t, s % 2, 1 - s % 2
    if reverse:
        return t, t + 1, t
    return t, t, t + 1


def first_slot(T, reverse, training):
    """Row of the state buffer that holds the initial state."""
    if not training:
        return 0
    return T if reverse else 0


def final_slot(T, reverse, training):
    """Row of the state buffer that holds the state after the last step."""
    if not training:
        return T % 2
    return 0 if reverse else T


def entering_states(hs, reverse):
    """(T, B, H): the state entering each time step t, from a training buffer hs (T+1, B, H)."""
    return hs[1:] if reverse else hs[:-1]


@dataclass
class Saved:
    """What a fused training forward of one direction keeps for backward (cells.py):
    hs (T+1, B, H); cs (T+1, B, H) or None; gates (T, B, k*H) or None; hn (T, B, H) or None;
    lengths (B,) int64 on the backend's device or None; reverse. A backend that packs lengths
    keeps gates and hn as packed rows, (R, k*H) and (R, H), and None as lengths:
    FusedBackend.backward sets the call's packing.Steps there before recurrence_backward (so
    the saved state holds no bookkeeping of O(T))."""

    hs: Any
    cs: Any
    gates: Any
    hn: Any
    lengths: Any
    reverse: bool
    # Variants: P (3, H) the peepholes, read again by backward; inside (R, G*H) uint8, 1 where
    # a clipped gate's input lay within [-clip, clip] (the clamp's derivative: deriving it
    # from the activated gate, which equals act(clip) there, is not exact in floating point).
    P: Any = None
    inside: Any = None
    # Zoneout: the mask M (R, H) (packed rows), read again by backward. Layer norm on the
    # recurrent side: the gains g_hh (G*H,), g_c (H,) and c's bias b_c (H,), read again by
    # backward; ln_hh (R, G*H) the raw W_hh h of each row (backward recomputes its statistics,
    # then writes the gradient of W_hh h over it).
    zoneout_mask: Any = None
    g_hh: Any = None
    ln_hh: Any = None
    g_c: Any = None
    b_c: Any = None
    # kept: a backend's own dict of the variant's parameters and what their backward needs (the
    # CUDA backend: each parameter recurrence_forward got, the zoneout mask, h_full =
    # o tanh(c') (T, B, H) of a projecting LSTM, the input of W_hr, and with layer norm gh_norm
    # = LN(W_hh h) (T, B, G*H) and the rows' statistics, stats (T, B, 3 or 1)).
    kept: Any = None

    @property
    def h_in(self):
        """The state entering each step, (T, B, H)."""
        return entering_states(self.hs, self.reverse)

    @property
    def c_in_out(self):
        """The cell states entering and leaving each step, (T, B, H) each."""
        return entering_states(self.cs, self.reverse), entering_states(self.cs, not self.reverse)


@dataclass
class Direction:
    """One direction's parameters and initial state, already checked by the API.

    W_ih (G*H, I), W_hh (G*H, H), b_ih/b_hh (G*H,) or None, h0/c0 (B, H) (c0 None unless LSTM).
    The parameters of a variant (cells.Variant.param_shapes), each None unless the cell's
    variant has it: W_hr (P, H) the projection, with which h0 is (B, P) and W_hh (G*H, P);
    g_ih, g_hh (G*H,) the layer-norm gains, g_c, b_c (H,) the LSTM's LN of c'; P (3, H) the
    peepholes p_i, p_f, p_o. zoneout_mask (T, B, P or H): M of h' = h + M (h_new - h), made
    by the front end (0/1 in training, 1 - p in evaluation), None without zoneout.
    All C-contiguous, one dtype, one array library.
    """

    W_ih: Any
    W_hh: Any
    b_ih: Any
    b_hh: Any
    h0: Any
    c0: Any
    reverse: bool
    P: Any = None
    W_hr: Any = None
    g_ih: Any = None
    g_hh: Any = None
    g_c: Any = None
    b_c: Any = None
    zoneout_mask: Any = None

    @property
    def variant_params(self) -> dict:
        """The variant's parameters this direction has, name -> array (VARIANT_PARAMS)."""
        return {name: getattr(self, name) for name in VARIANT_PARAMS
                if getattr(self, name) is not None}


# The parameters a variant adds to a direction, by their cells.Variant.param_shapes names.
VARIANT_PARAMS = ("W_hr", "g_ih", "g_hh", "g_c", "b_c", "P")


@dataclass
class DirectionGrads:
    """Gradients of one direction. db_* is None where the bias was None; dc0 None unless LSTM;
    the gradient of each variant parameter ("d" + its name) only where the direction has it."""

    dW_ih: Any
    dW_hh: Any
    db_ih: Any
    db_hh: Any
    dh0: Any
    dc0: Any
    dP: Any = None
    dW_hr: Any = None
    dg_ih: Any = None
    dg_hh: Any = None
    dg_c: Any = None
    db_c: Any = None

    @property
    def variant_grads(self) -> dict:
        """The gradients of the variant's parameters, "d" + name -> array, where present."""
        return {f"d{name}": getattr(self, f"d{name}") for name in VARIANT_PARAMS
                if getattr(self, f"d{name}") is not None}


class Backend:
    """A backend: the array module it serves (``xp``) and a layer forward/backward.

    forward(cell, x, dirs, lengths, training) -> (y, h_n, c_n, saved)
        x (T, B, I) C-contiguous; dirs a list of 1 or 2 ``Direction``; lengths None or a NumPy
        int64 array (B,) with 1 <= L_b <= T, on the host; T >= 1 and B >= 1.
        y (T, B, D*H) with the directions concatenated on the last axis; h_n, c_n (D, B, H)
        (c_n None unless LSTM); saved is opaque and None when ``training`` is False.
    backward(cell, saved, dy, dh_n, dc_n) -> (dx, [DirectionGrads] * D)
        dy (T, B, D*H), dh_n/dc_n (D, B, H) (dc_n None unless LSTM), all present (zeros where
        the caller gave none).
    """

    name = "?"
    library = "numpy"  # the array library it takes: "numpy" or "cupy"
    xp = None  # the module it computes with
    # The Variant switches (cells.Variant.switches) it runs; a cell that sets any other is
    # refused before the backend sees it (``unsupported``), never run as the plain cell.
    variant_switches = frozenset()

    def unsupported(self, cell: Cell) -> tuple:
        """The switches of ``cell.variant`` this backend cannot run (empty when it can)."""
        return tuple(s for s in cell.variant.switches if s not in self.variant_switches)

    def forward(self, cell: Cell, x, dirs, lengths, training):
        raise NotImplementedError

    def backward(self, cell: Cell, saved, dy, dh_n, dc_n):
        raise NotImplementedError

    # One time step of a unidirectional stack (the decoding step), in inference. Front ends
    # keep what ``step_weights`` returns for as long as their parameter arrays stay the same
    # objects; a backend must not copy the weights into it, so that in-place updates are seen.
    # A backend whose ``step`` is a kernel of its own says so (``has_step_kernel``): the engine
    # then runs every one-step inference through it.
    has_step_kernel = False

    def step_weights(self, cell: Cell, layers):
        """What ``step`` takes as the weights: from ``layers``, a list of (W_ih, W_hh, b_ih,
        b_hh) per layer, C-contiguous, biases None where absent. Here the list itself."""
        return layers

    def step(self, cell: Cell, weights, x, hx):
        """One time step of every layer: x (B, I) and hx (one (L, B, H) per state of the cell)
        C-contiguous. Returns (y (B, H), hy, the new states like hx). Here one inference
        forward of one step per layer."""
        y, hy = x[None], tuple(self.xp.empty_like(h) for h in hx)
        for k, (W_ih, W_hh, b_ih, b_hh) in enumerate(weights):
            states = [h[k] for h in hx] + [None]
            y, h_n, c_n, _ = self.forward(cell, y, [Direction(
                W_ih, W_hh, b_ih, b_hh, states[0], states[1], False)], None, False)
            for new, value in zip(hy, (h_n, c_n)):
                new[k] = value[0]
        return y[0], hy


@dataclass
class _FusedSaved:
    x: Any
    W_cat: Any
    biased: list
    directions: list
    W_hh: list
    lengths: Any = None
    input_norms: list = None  # per direction: None, or its input-side LN's (mean, inv_std)
    g_ih: list = None


class FusedBackend(Backend):
    """GEMMs once for every fused backend; the subclass supplies the time loop.

    recurrence_forward(cell, x_proj, W_hh, b_hh, h0, c0, lengths, reverse, y, training[, P])
            -> (h_n, c_n, saved)
        x_proj (T, B, G*H): W_ih x_t + b_ih for every step, the caller's scratch (a backend may
        overwrite it: the Numba backend keeps a training forward's gates there). y (T, B, H):
        output to fill, invalid steps with zeros. Both may be views into wider arrays: their
        last axis has unit stride, the other strides are arbitrary. W_hh is what ``prepare_hh``
        returned. b_hh (G*H,) always present (zeros for no bias).
        h0, c0 (B, H) C-contiguous (c0 None unless LSTM). lengths None or a host int64 array
        with 0 <= L_b <= T (0 happens when inference runs in chunks). Returns fresh h_n, c_n
        (B, H) and the backend's saved state (None when not training), laid out as cells.py says.
        P (3, H), the peepholes, comes only for a cell with them (``variant_switches``), and
        the backend keeps it in saved.P; backward then sums dP above the backends from d_gx
        and saved.cs.
    recurrence_backward(cell, saved, W_hh, dy, dh_n, dc_n, d_gx) -> (hh_terms, dh0, dc0)
        dy (T, B, H) with unit last stride; dh_n, dc_n (B, H). d_gx (T, B, G*H): output to fill
        with the gradient with respect to x_proj (zeros at invalid steps); it may be a view.
        hh_terms: list of (d_block (T, B, k), h_in (T, B, H)) whose products d_block^T h_in,
        stacked on the first axis, make dW_hh, and whose row sums make db_hh.

    A backend with ``packs_lengths`` (NumPy arrays only) gets the rows of the per-step arrays
    instead: x_proj and d_gx (R, G*H), hh_terms' (R, k) and (R, H), the R valid (step, row)
    pairs as ``lengths``, a packing.Steps, says (every step valid when the call has no lengths);
    the batch, in y, dy, h0, c0, dh_n, dc_n and what they return, is ordered as the Steps say.
    (Reordering y and dy with one copy each costs less than writing and reading their rows in
    the caller's order within the time loop, which benchmarks/lengths.py measured 25 % slower
    for the RNN.)
    So padding costs no arithmetic above or in the recurrence (packing.py).
    """

    packs_lengths = False

    # Inference projects the input in chunks of time steps above this many elements, so memory
    # does not grow with T beyond the output.
    chunk_elements = tuning.chunk_elements

    def recurrence_forward(self, cell, x_proj, W_hh, b_hh, h0, c0, lengths, reverse, y, training):
        raise NotImplementedError

    def recurrence_backward(self, cell, saved, W_hh, dy, dh_n, dc_n, d_gx):
        raise NotImplementedError

    def prepare_hh(self, cell, W_hh, T, B):
        """What ``recurrence_forward`` gets as W_hh for a call of T steps and B rows: W_hh itself
        here. A backend may return a form of it prepared once per call (packed panels), which
        every chunk of a chunked inference then reuses."""
        return W_hh

    def gate_gradients(self, saved, shape):
        """The array of ``shape`` ((T, B, N), or (R, N) packed rows) that backward fills with
        the gradient of x_proj: a new one here. A backend may hand back memory of the saved
        state instead, where its backward reads every element before it writes the same
        place."""
        return self.xp.empty(shape, saved.x.dtype)

    def matmul(self, a, b, bias=None):
        """a @ b (+ bias, a row vector) of 2-D arrays: every GEMM above the recurrence goes
        through here, so that a backend can run them on its own threads (and add the bias while
        the product is still in cache)."""
        out = a @ b
        if bias is not None:
            out += bias
        return out

    def _packing(self, lengths, T):
        """The call's Packing where this backend packs lengths and some row is shorter than T."""
        if self.packs_lengths and lengths is not None and lengths.min() < T:
            return Packing(lengths, T)
        return None

    def _input_rows(self, x, packing, t0, t1):
        """Steps t0..t1 of x as the rows the input projection multiplies: packed where the
        backend packs lengths, else all (t1-t0)*B."""
        if packing is not None:
            return packing.pack(x, t0, t1)
        return x[t0:t1].reshape(-1, x.shape[2])

    def forward(self, cell, x, dirs, lengths, training):
        xp = self.xp
        T, B, I = x.shape
        GH, Hp = dirs[0].W_hh.shape  # Hp: the width of h and y (proj_size where projected)
        H = GH // cell.gates
        D = len(dirs)
        packing = self._packing(lengths, T)
        if packing is not None:  # the recurrence sees the batch ordered by length
            dirs = [replace(d, h0=packing.ordered(d.h0, 0),
                            c0=None if d.c0 is None else packing.ordered(d.c0, 0)) for d in dirs]
        y = xp.empty((T, B, D * Hp), x.dtype)
        h_n = xp.empty((D, B, Hp), x.dtype)
        c_n = xp.empty((D, B, H), x.dtype) if cell.has_cell_state else None
        W_cat = dirs[0].W_ih if D == 1 else xp.concatenate([d.W_ih for d in dirs])
        chunked = not training and T * B * D * GH > self.chunk_elements
        input_norms = [None] * D
        if not chunked:
            x_proj, input_norms = self._input_projection(
                self._input_rows(x, packing, 0, T), W_cat, dirs)
            if not self.packs_lengths:
                x_proj = x_proj.reshape(T, B, D * GH)
        saved = []
        for k, d in enumerate(dirs):
            y_k = y[..., k * Hp:(k + 1) * Hp]
            if chunked:
                h, c = self._chunked_inference(cell, x, d, lengths, packing, y_k)
                s = None
            else:
                h, c, s = self.recurrence_forward(
                    cell, x_proj[..., k * GH:(k + 1) * GH], self.prepare_hh(cell, d.W_hh, T, B),
                    _hh_bias(xp, d), d.h0, d.c0, self._steps(lengths, packing, T, B),
                    d.reverse, y_k, training, **self._variant_params(d, packing, 0, T))
            h_n[k] = h
            if c_n is not None:
                c_n[k] = c
            saved.append(s)
        if packing is not None:
            y, h_n = packing.restored(y, 1), packing.restored(h_n, 1)
            c_n = None if c_n is None else packing.restored(c_n, 1)
        if not training:
            return y, h_n, c_n, None
        return y, h_n, c_n, _FusedSaved(
            x=x, W_cat=W_cat, biased=[(d.b_ih is not None, d.b_hh is not None) for d in dirs],
            directions=saved, W_hh=[d.W_hh for d in dirs], lengths=lengths,
            input_norms=input_norms, g_ih=[d.g_ih for d in dirs])

    def _input_projection(self, rows, W, dirs):
        """x_proj (N, D*G*H) of ``rows`` (N, I) and the directions' stacked W_ih, with b_ih, and
        each direction's input-side layer-norm statistics (None without layer norm). With
        layer norm (g_ih) a direction's block is LN(x W_ih^T) * g_ih + b_ih (cells.Variant):
        the row statistics are kept, (mean, inv_std) of shape (N, 1) each, and backward
        recomputes the normalised rows with one GEMM rather than keep N*G*H values."""
        if dirs[0].g_ih is None:
            return self.matmul(rows, W.T, _input_bias(self.xp, dirs)), [None] * len(dirs)
        x_proj = self.matmul(rows, W.T)
        GH = W.shape[0] // len(dirs)
        norms = []
        for k, d in enumerate(dirs):
            block = x_proj[:, k * GH:(k + 1) * GH]
            mean, inv_std = _row_statistics(block)
            block -= mean
            block *= inv_std * d.g_ih
            if d.b_ih is not None:
                block += d.b_ih
            norms.append((mean, inv_std))
        return x_proj, norms

    def _variant_params(self, d, packing, t0, t1):
        """The keyword arguments of ``recurrence_forward`` that only a variant cell gets (so that
        a backend without variants keeps the plain signature): its parameters (g_ih is applied
        here, above the backends) and its zoneout mask, steps t0..t1 in x_proj's layout."""
        extra = d.variant_params
        extra.pop("g_ih", None)
        M = d.zoneout_mask
        if M is not None:
            extra["zoneout_mask"] = (self._input_rows(M, packing, t0, t1) if self.packs_lengths
                                     else M[t0:t1])
        return extra

    def _steps(self, lengths, packing, T, B):
        """What ``recurrence_forward`` gets as lengths: packing.Steps where the backend packs
        lengths, else the lengths themselves."""
        if not self.packs_lengths:
            return lengths
        return packing.steps if packing is not None else Steps.full(T, B)

    def _chunked_inference(self, cell, x, d, lengths, packing, y):
        xp = self.xp
        T, B, I = x.shape
        GH = d.W_hh.shape[0]
        steps = max(1, self.chunk_elements // (B * GH))
        starts = list(range(0, T, steps))
        h, c = d.h0, d.c0
        b_hh = _hh_bias(xp, d)
        W_hh = self.prepare_hh(cell, d.W_hh, T, B)
        all_steps = self._steps(lengths, packing, T, B)
        for t0 in reversed(starts) if d.reverse else starts:
            t1 = min(T, t0 + steps)
            x_proj, _ = self._input_projection(self._input_rows(x, packing, t0, t1), d.W_ih, [d])
            if self.packs_lengths:
                L = all_steps.window(t0, t1)
            else:
                x_proj = x_proj.reshape(t1 - t0, B, GH)
                L = None if lengths is None else (lengths - t0).clip(0, t1 - t0)
            h, c, _ = self.recurrence_forward(
                cell, x_proj, W_hh, b_hh, h, c, L, d.reverse, y[t0:t1], False,
                **self._variant_params(d, packing, t0, t1))
        return h, c

    def backward(self, cell, saved, dy, dh_n, dc_n):
        xp = self.xp
        x, W_cat = saved.x, saved.W_cat
        T, B, I = x.shape
        # Packed again rather than kept: a forward keeps no more than training_memory says.
        packing = self._packing(saved.lengths, T)
        D = len(saved.directions)
        GH, Hp = saved.W_hh[0].shape  # Hp: the width of h (proj_size where projected)
        if packing is not None:
            dy, dh_n = packing.ordered(dy, 1), packing.ordered(dh_n, 1)
            dc_n = None if dc_n is None else packing.ordered(dc_n, 1)
        if self.packs_lengths:
            x = self._input_rows(x, packing, 0, T)
            steps = self._steps(saved.lengths, packing, T, B)
            for s in saved.directions:
                s.lengths = steps
        rows = (x.shape[0],) if self.packs_lengths else (T, B)
        d_gx = self.gate_gradients(saved, rows + (D * GH,))
        unpadded = (lambda a: a)  # packed rows have no padding
        if not self.packs_lengths and saved.lengths is not None and saved.lengths.min() < T:
            # Padded steps add nothing to dW even when the padding of x, or a carried state, is
            # NaN or Inf: their d_gx rows are zero, but 0 * NaN is NaN in the GEMMs.
            pad = xp.asarray(np.arange(T)[:, None, None] >= saved.lengths[None, :, None])
            unpadded = (lambda a: xp.where(pad, a.dtype.type(0), a))
        if self.packs_lengths and packing is not None:
            index = steps.index()
            rows_of = (lambda a: a.reshape(T * B, -1)[index])
        else:
            rows_of = (lambda a: unpadded(a).reshape(T * B, -1))
        grads = []
        for k, s in enumerate(saved.directions):
            hh_terms, dh0, dc0, *variant_grads = self.recurrence_backward(
                cell, s, saved.W_hh[k], dy[..., k * Hp:(k + 1) * Hp], dh_n[k],
                None if dc_n is None else dc_n[k], d_gx[..., k * GH:(k + 1) * GH])
            variant_grads = dict(*variant_grads)  # dW_hr, dg_hh, dg_c, db_c, db_hh if any
            saved.directions[k] = None  # release what this direction kept as soon as it is used
            blocks = [d.reshape(-1, d.shape[-1]) for d, _ in hh_terms]
            dW_hh = _stacked(xp, [self.matmul(d2.T, unpadded(h).reshape(-1, h.shape[-1]))
                                  for d2, (_, h) in zip(blocks, hh_terms)])
            if "db_hh" not in variant_grads:
                variant_grads["db_hh"] = _stacked(xp, [d2.sum(axis=0) for d2 in blocks])
            if s.P is not None:
                d_k = d_gx[..., k * GH:(k + 1) * GH].reshape(-1, GH)
                variant_grads["dP"] = _peephole_grad(xp, d_k, *(rows_of(c) for c in s.c_in_out))
            if packing is not None:
                dh0 = packing.restored(dh0, 0)
                dc0 = None if dc0 is None else packing.restored(dc0, 0)
            grads.append(DirectionGrads(None, dW_hh, None, dh0=dh0, dc0=dc0, **variant_grads))
        d2 = d_gx.reshape(-1, D * GH)
        input_grads = [None] * D
        for k, norm in enumerate(saved.input_norms or ()):
            if norm is not None:  # d2's block becomes the gradient of x W_ih^T before LN
                x_rows = unpadded(x).reshape(-1, I)
                block = d2[:, k * GH:(k + 1) * GH]
                input_grads[k] = _input_layer_norm_back(
                    block, self.matmul(x_rows, W_cat[k * GH:(k + 1) * GH].T), *norm, saved.g_ih[k],
                    lambda a: unpadded(a.reshape(rows + (GH,))).reshape(a.shape))
        dx = self.matmul(d2, W_cat)
        dx = packing.unpack(dx, T, B) if packing is not None else dx.reshape(T, B, I)
        dW_cat = self.matmul(d2.T, unpadded(x).reshape(-1, I))
        db_cat = d2.sum(axis=0)
        for k, g in enumerate(grads):
            has_b_ih, has_b_hh = saved.biased[k]
            g.dW_ih = dW_cat[k * GH:(k + 1) * GH]
            g.db_ih = db_cat[k * GH:(k + 1) * GH] if has_b_ih else None
            if input_grads[k] is not None:
                g.db_ih, g.dg_ih = (input_grads[k][0] if has_b_ih else None), input_grads[k][1]
            if not has_b_hh:
                g.db_hh = None
        return dx, grads


def _input_layer_norm_back(d_out, raw, mean, inv_std, gain, unpadded):
    """(db_ih, dg_ih) of out = LN(raw) * gain + b_ih from its gradient ``d_out`` (N, n), which
    becomes, in place, the gradient of raw: d_raw = inv_std (d - mean(d) - v mean(d v)) with
    d = d_out * gain and v = LN(raw). Padded rows (``unpadded`` zeroes them) may hold NaN in
    raw and its statistics; their gradient is zero."""
    v = unpadded((raw - mean) * inv_std)
    db, dg = d_out.sum(axis=0), (d_out * v).sum(axis=0)
    d = d_out * gain
    d_out[...] = unpadded(inv_std * (d - d.mean(axis=1, keepdims=True)
                                     - v * (d * v).mean(axis=1, keepdims=True)))
    return db, dg


def _row_statistics(v):
    """(mean, 1 / sqrt(var + LN_EPS)) of each row of v (N, n), shapes (N, 1): layer norm's."""
    mean = v.mean(axis=1, keepdims=True)
    centred = v - mean
    return mean, ((centred * centred).mean(axis=1, keepdims=True) + LN_EPS) ** -0.5


def _peephole_grad(xp, d_gx, c_in, c_out):
    """dP (3, H) from the gate gradients d_gx (N, 4H) of N (step, row) pairs and the cell
    states entering (c_in) and leaving (c_out) them, (N, H): p_i and p_f multiply c, p_o c'
    (cells.Variant), so each is the sum over every pair of its gate's gradient times that
    state, as db_hh is of the gradient alone."""
    H = c_in.shape[1]
    return xp.stack([(d_gx[:, :H] * c_in).sum(axis=0), (d_gx[:, H:2 * H] * c_in).sum(axis=0),
                     (d_gx[:, 3 * H:] * c_out).sum(axis=0)])


def _stacked(xp, parts):
    """The parts concatenated on the first axis; one part as it is (no copy)."""
    return parts[0] if len(parts) == 1 else xp.concatenate(parts)


def _input_bias(xp, dirs):
    """b_ih of the directions side by side (zeros for a direction without), or None when no
    direction has one."""
    if all(d.b_ih is None for d in dirs):
        return None
    return xp.concatenate([xp.zeros(d.W_ih.shape[0], d.W_ih.dtype) if d.b_ih is None
                           else d.b_ih for d in dirs])


def _hh_bias(xp, d: Direction):
    return d.b_hh if d.b_hh is not None else xp.zeros(d.W_hh.shape[0], d.W_hh.dtype)

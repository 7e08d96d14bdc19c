"""The composition that the fused backends (Numba, CuPy) share: ``FusedBackend``.

It does the GEMMs once, above the backends: the input projection of every step and every
direction is one GEMM before the time loop, and dx, dW_ih, db_ih, dW_hh, db_hh are
GEMMs/reductions over all T*B rows after it, or over the valid steps' rows only where the
backend packs lengths (packing.py); so are the input side's layer norm and the peepholes' dP.
A fused backend only supplies the time loop, ``recurrence_forward`` and
``recurrence_backward``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..cells import LN_EPS
from . import tuning
from .base import Backend, Direction, DirectionGrads
from .packing import Packing, Steps


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

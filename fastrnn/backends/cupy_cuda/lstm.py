"""Launches of kernels/lstm.cu: per step one GEMM and one kernel, forward and backward.

With the projection (W_hr (Hp, H), cells.Variant.proj_size) a step has one more GEMM and one
more kernel, P = Hp wide: forward, GEMM W_hh -> lstm_forward (h_full = o tanh(c')) -> GEMM
W_hr -> lstm_projection_forward (the state and y); backward, lstm_projection_backward (dh_proj,
the carry) -> GEMM W_hr (dL/dh_full) -> lstm_backward -> GEMM W_hh. A training forward keeps
h_full (T, B, H), so that dW_hr is one GEMM after the loop, dh_proj^T h_full over all T*B rows
(both are 0 at invalid steps).

With layer norm (g_hh, g_c, b_c) the pointwise kernels are lstm_layer_norm_forward/backward,
one block per batch row. A training forward keeps gh_norm = LN(W_hh h) (T, B, 4H) and per row
and step (1/std of W_hh h, mean and 1/std of c'), stats (T, B, 3); backward writes d_gh, the
gradient of the raw W_hh h (T, B, 4H: dW_hh's and dh_rec's left operand), and d_c_norm (T, B,
H). dg_hh, db_hh, dg_c and db_c are sums over all T*B rows after the loop.
"""

from __future__ import annotations

import numpy as np

from ...cells import LN_EPS
from ..base import entering_states
from .recurrence import Recurrence


class LstmRecurrence(Recurrence):
    file = "lstm.cu"
    gate_blocks = 4  # i, f, g, o

    def forward_buffers(self, T, training):
        xp, B, H = self.xp, self.B, self.H
        steps = T if training else 1
        if self.g_hh is not None:  # the normalised rows are kept; scratch gates in inference
            self.gh_all = xp.empty((steps, B, 4 * H), self.dtype)
            self.stats = xp.empty((T, B, 3), self.dtype) if training else None
            self.scratch_gates = None if training else xp.empty((B, 4 * H), self.dtype)
        else:
            super().forward_buffers(T, training)
        if self.W_hr is not None:
            self.h_full = xp.empty((steps, B, H), self.dtype)
            self.h_proj = xp.empty((B, self.Hp), self.dtype)

    def forward_step(self, s):
        xp = self.xp
        step = s.t if s.gates is not None else 0  # the kept step, or the one scratch row
        h_full = None if self.W_hr is None else self.h_full[step]
        if self.g_hh is None:
            xp.matmul(s.h_prev, self.W_hh.T, out=self.gh)
            self.launch("lstm_forward", s.x_proj, self.ld_x, self.gh, self.b_hh, s.h_prev,
                        s.c_prev, self.lengths, s.t, s.y, self.ld_y, s.h_next, s.c_next, s.gates,
                        h_full, self.P, self.clip, s.inside, s.zoneout, self.ld_z)
        else:
            gh = self.gh_all[step]
            xp.matmul(s.h_prev, self.W_hh.T, out=gh)
            self.launch("lstm_layer_norm_forward", s.x_proj, self.ld_x, gh, self.g_hh,
                        self.b_hh, self.g_c, self.b_c, self.dtype.type(LN_EPS), s.h_prev,
                        s.c_prev, self.lengths, s.t, s.y, self.ld_y, s.h_next, s.c_next,
                        s.gates if s.gates is not None else self.scratch_gates, h_full,
                        None if self.stats is None else self.stats[s.t], self.P, self.clip,
                        s.inside, s.zoneout, self.ld_z, per_row=True)
        if h_full is not None:
            xp.matmul(h_full, self.W_hr.T, out=self.h_proj)
            self.launch("lstm_projection_forward", self.h_proj, s.h_prev, self.lengths, s.t, s.y,
                        self.ld_y, s.h_next, s.zoneout, self.ld_z, width=self.Hp, template="")

    def kept_for_backward(self, variant):
        kept = dict(variant)
        if self.W_hr is not None:
            kept["h_full"] = self.h_full
        if self.g_hh is not None:
            kept.update(gh_norm=self.gh_all, stats=self.stats)
        return kept

    def backward_buffers(self, T):
        xp, B, H = self.xp, self.B, self.H
        if self.W_hr is not None:
            self.dh_proj = xp.empty((T, B, self.Hp), self.dtype)
            self.dh_full = xp.empty((B, H), self.dtype)
        if self.g_hh is not None:
            self.d_gh = xp.empty((T, B, 4 * H), self.dtype)
            self.d_c_norm = xp.empty((T, B, H), self.dtype)

    def backward_step(self, s):
        xp = self.xp
        dy, ld_dy, dh_rec, dh_carry = s.dy, self.ld_dy, self.dh_rec, self.dh_carry
        zoneout = s.zoneout
        if self.W_hr is not None:
            dh_proj = self.dh_proj[s.t]
            self.launch("lstm_projection_backward", s.dy, self.ld_dy, self.lengths, s.t,
                        self.dh_rec, self.dh_carry, s.zoneout, self.ld_z, dh_proj,
                        width=self.Hp, template="")
            xp.matmul(dh_proj, self.W_hr, out=self.dh_full)
            # the whole gradient of h_full: no h carry, and zoneout is behind
            dy, ld_dy, dh_rec, dh_carry, zoneout = self.dh_full, np.int32(self.H), None, None, None
        if self.g_hh is None:
            self.launch("lstm_backward", s.gates, s.c_prev, s.c_next, dy, ld_dy, self.lengths,
                        s.t, dh_rec, dh_carry, self.dc_carry, s.d_gx, self.ld_g, self.P,
                        s.inside, zoneout, self.ld_z)
            xp.matmul(s.d_gx, self.W_hh, out=self.dh_rec)
        else:
            kept = self.kept
            self.launch("lstm_layer_norm_backward", s.gates, kept["gh_norm"][s.t],
                        kept["stats"][s.t], self.g_hh, self.g_c, self.b_c, s.c_prev, s.c_next,
                        dy, ld_dy, self.lengths, s.t, dh_rec, dh_carry, self.dc_carry, s.d_gx,
                        self.ld_g, self.d_gh[s.t], self.d_c_norm[s.t], self.P, s.inside,
                        zoneout, self.ld_z, per_row=True)
            xp.matmul(self.d_gh[s.t], self.W_hh, out=self.dh_rec)

    def hh_terms(self, d_gx, h_in):
        return [(self.d_gh if self.g_hh is not None else d_gx, h_in)]

    def variant_grads(self):
        grads = {}
        if self.W_hr is not None:
            h_full = self.kept["h_full"]
            grads["dW_hr"] = self.dh_proj.reshape(-1, self.Hp).T @ h_full.reshape(-1, self.H)
        if self.g_hh is not None:
            grads.update(_layer_norm_grads(self.d_gx, self.kept, self.d_c_norm, self.saved.cs,
                                           self.saved.reverse))
        return grads


def _layer_norm_grads(d_gx, kept, d_c_norm, cs, reverse):
    """db_hh, dg_hh, dg_c, db_c: sums over every (step, row) of the gate inputs' gradients d_gx
    (T, B, 4H), times the normalised W_hh h for dg_hh; of d_c_norm (T, B, H), times the
    normalised c' (recomputed from cs and the kept mean and 1/std) for dg_c. Invalid steps
    contribute 0: their d_gx, gh_norm, d_c_norm and statistics are 0."""
    stats = kept["stats"]
    c_out = entering_states(cs, not reverse)
    c_norm = (c_out - stats[..., 1:2]) * stats[..., 2:3]
    return {"db_hh": d_gx.sum(axis=(0, 1)), "dg_hh": (d_gx * kept["gh_norm"]).sum(axis=(0, 1)),
            "dg_c": (d_c_norm * c_norm).sum(axis=(0, 1)), "db_c": d_c_norm.sum(axis=(0, 1))}

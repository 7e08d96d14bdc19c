"""Launches of kernels/lstm.cu: per step one GEMM and one kernel, forward and backward.

With the projection (W_hr (Hp, H), cells.Variant.proj_size) a step has one more GEMM and one
more kernel, P = Hp wide: forward, GEMM W_hh -> lstm_forward (h_full = o tanh(c')) -> GEMM
W_hr -> lstm_projection_forward (the state and y); backward, lstm_projection_backward (dh_proj,
the carry) -> GEMM W_hr (dL/dh_full) -> lstm_backward -> GEMM W_hh. A training forward keeps
h_full (T, B, H), so that dW_hr is one GEMM after the loop, dh_proj^T h_full over all T*B rows
(both are 0 at invalid steps).
"""

from __future__ import annotations

import numpy as np

from .recurrence import Recurrence


class LstmRecurrence(Recurrence):
    file = "lstm.cu"
    gate_blocks = 4  # i, f, g, o

    def forward_buffers(self, T, training):
        super().forward_buffers(T, training)
        if self.W_hr is not None:
            xp, B = self.xp, self.B
            self.h_full = xp.empty((T if training else 1, B, self.H), self.dtype)
            self.h_proj = xp.empty((B, self.Hp), self.dtype)

    def forward_step(self, s):
        xp = self.xp
        xp.matmul(s.h_prev, self.W_hh.T, out=self.gh)
        h_full = None
        if self.W_hr is not None:
            h_full = self.h_full[s.t if self.h_full.shape[0] > 1 else 0]
        self.launch("lstm_forward", s.x_proj, self.ld_x, self.gh, self.b_hh, s.h_prev, s.c_prev,
                    self.lengths, s.t, s.y, self.ld_y, s.h_next, s.c_next, s.gates, h_full,
                    self.P, self.clip, s.inside, s.zoneout, self.ld_z)
        if h_full is not None:
            xp.matmul(h_full, self.W_hr.T, out=self.h_proj)
            self.launch("lstm_projection_forward", self.h_proj, s.h_prev, self.lengths, s.t, s.y,
                        self.ld_y, s.h_next, s.zoneout, self.ld_z, width=self.Hp, template="")

    def kept_for_backward(self, variant):
        kept = dict(variant)
        if self.W_hr is not None:
            kept["h_full"] = self.h_full
        return kept

    def backward_buffers(self, T):
        if self.W_hr is not None:
            self.dh_proj = self.xp.empty((T, self.B, self.Hp), self.dtype)
            self.dh_full = self.xp.empty((self.B, self.H), self.dtype)

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
        self.launch("lstm_backward", s.gates, s.c_prev, s.c_next, dy, ld_dy, self.lengths,
                    s.t, dh_rec, dh_carry, self.dc_carry, s.d_gx, self.ld_g, self.P,
                    s.inside, zoneout, self.ld_z)
        xp.matmul(s.d_gx, self.W_hh, out=self.dh_rec)

    def variant_grads(self):
        if self.W_hr is None:
            return {}
        h_full = self.kept["h_full"]
        return {"dW_hr": self.dh_proj.reshape(-1, self.Hp).T @ h_full.reshape(-1, self.H)}

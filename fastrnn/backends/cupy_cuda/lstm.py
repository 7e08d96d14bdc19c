"""Launches of kernels/lstm.cu: per step one GEMM and one kernel, forward and backward."""

from __future__ import annotations

from .recurrence import Recurrence


class LstmRecurrence(Recurrence):
    file = "lstm.cu"
    gate_blocks = 4  # i, f, g, o

    def forward_step(self, s):
        self.xp.matmul(s.h_prev, self.W_hh.T, out=self.gh)
        self.launch("lstm_forward", s.x_proj, self.ld_x, self.gh, self.b_hh, s.h_prev, s.c_prev,
                    self.lengths, s.t, s.y, self.ld_y, s.h_next, s.c_next, s.gates, self.P,
                    self.clip, s.inside, s.zoneout, self.ld_z)

    def backward_step(self, s):
        self.launch("lstm_backward", s.gates, s.c_prev, s.c_next, s.dy, self.ld_dy, self.lengths,
                    s.t, self.dh_rec, self.dh_carry, self.dc_carry, s.d_gx, self.ld_g, self.P,
                    s.inside, s.zoneout, self.ld_z)
        self.xp.matmul(s.d_gx, self.W_hh, out=self.dh_rec)

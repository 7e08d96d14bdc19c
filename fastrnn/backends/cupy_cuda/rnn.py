"""Launches of kernels/rnn.cu: per step one GEMM and one kernel, forward and backward."""

from __future__ import annotations

from .recurrence import Recurrence


class RnnRecurrence(Recurrence):
    file = "rnn.cu"

    def cell_template(self, cell):
        return ", true" if cell.nonlinearity == "relu" else ", false"

    def forward_step(self, s):
        self.xp.matmul(s.h_prev, self.W_hh.T, out=self.gh)
        self.launch("rnn_forward", s.x_proj, self.ld_x, self.gh, self.b_hh, s.h_prev,
                    self.lengths, s.t, s.y, self.ld_y, s.h_next, self.clip, s.inside)

    def backward_step(self, s):
        self.launch("rnn_backward", s.h_next, s.dy, self.ld_dy, self.lengths, s.t, self.dh_rec,
                    self.dh_carry, s.d_gx, self.ld_g, s.inside)
        self.xp.matmul(s.d_gx, self.W_hh, out=self.dh_rec)

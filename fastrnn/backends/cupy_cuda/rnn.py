"""Launches of kernels/rnn.cu: per step one GEMM and one kernel, forward and backward."""

from __future__ import annotations

from .recurrence import Recurrence


class RnnRecurrence(Recurrence):
    file = "rnn.cu"

    def kept_gate_blocks(self):
        # with zoneout hs holds the zoned-out states, so act's own output is kept for act'
        return 1 if self.zoneout_mask is not None else 0

    def cell_template(self, cell):
        return ", true" if cell.nonlinearity == "relu" else ", false"

    def forward_step(self, s):
        self.xp.matmul(s.h_prev, self.W_hh.T, out=self.gh)
        self.launch("rnn_forward", s.x_proj, self.ld_x, self.gh, self.b_hh, s.h_prev,
                    self.lengths, s.t, s.y, self.ld_y, s.h_next, self.clip, s.inside,
                    s.zoneout, self.ld_z, s.gates)

    def backward_step(self, s):
        h_out = s.h_next if s.gates is None else s.gates
        self.launch("rnn_backward", h_out, s.dy, self.ld_dy, self.lengths, s.t, self.dh_rec,
                    self.dh_carry, s.d_gx, self.ld_g, s.inside, s.zoneout, self.ld_z)
        self.xp.matmul(s.d_gx, self.W_hh, out=self.dh_rec)

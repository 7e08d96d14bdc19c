"""Launches of kernels/gru.cu.

linear_before_reset=True: per step one GEMM and one kernel, forward and backward; backward writes
d_gh (the n block is dn * r, unlike d_gx's dn) for the recurrent GEMM and dW_hh.
linear_before_reset=False (textbook): W_hn multiplies r * h, which needs r first, so a step is
GEMM (W_hr, W_hz) -> kernel -> GEMM W_hn -> kernel, and backward mirrors it.

With layer norm (g_hh; linear_before_reset=True only) the kernels are gru_layer_norm_forward /
backward, one block per batch row. A training forward keeps gh_norm = LN(W_hh h) (T, B, 3H) and
1/std per row and step, stats (T, B, 1); backward's d_gh is then the gradient of the raw W_hh h.
db_hh and dg_hh are sums over all T*B rows after the loop of the gradient of gh, which is d_gx
with dn * r in the n block (times gh_norm for dg_hh).
"""

from __future__ import annotations

from ...cells import LN_EPS
from .recurrence import Recurrence


class GruRecurrence(Recurrence):
    file = "gru.cu"
    gate_blocks = 3  # r, z, n
    keeps_hn = True

    def forward_buffers(self, T, training):
        if self.g_hh is None:
            return super().forward_buffers(T, training)
        shape = (T if training else 1, self.B, 3 * self.H)
        self.gh_all = self.xp.empty(shape, self.dtype)  # the normalised rows are kept
        self.stats = self.xp.empty((T, self.B, 1), self.dtype) if training else None

    def forward_step(self, s):
        if self.g_hh is None:
            self.xp.matmul(s.h_prev, self.W_hh.T, out=self.gh)
            self.launch("gru_forward", s.x_proj, self.ld_x, self.gh, self.b_hh, s.h_prev,
                        self.lengths, s.t, s.y, self.ld_y, s.h_next, s.gates, s.hn, self.clip,
                        s.inside, s.zoneout, self.ld_z)
            return
        gh = self.gh_all[s.t if s.gates is not None else 0]
        self.xp.matmul(s.h_prev, self.W_hh.T, out=gh)
        self.launch("gru_layer_norm_forward", s.x_proj, self.ld_x, gh, self.g_hh, self.b_hh,
                    self.dtype.type(LN_EPS), s.h_prev, self.lengths, s.t, s.y, self.ld_y,
                    s.h_next, s.gates, s.hn, None if self.stats is None else self.stats[s.t],
                    self.clip, s.inside, s.zoneout, self.ld_z, per_row=True)

    def kept_for_backward(self, variant):
        kept = dict(variant)
        if self.g_hh is not None:
            kept.update(gh_norm=self.gh_all, stats=self.stats)
        return kept

    def backward_buffers(self, T):
        self.d_gh = self.xp.empty((T, self.B, 3 * self.H), self.dtype)

    def backward_step(self, s):
        d_gh = self.d_gh[s.t]
        if self.g_hh is None:
            self.launch("gru_backward", s.gates, s.hn, s.h_prev, s.dy, self.ld_dy, self.lengths,
                        s.t, self.dh_rec, self.dh_carry, s.d_gx, self.ld_g, d_gh, s.inside,
                        s.zoneout, self.ld_z)
        else:
            kept = self.kept
            self.launch("gru_layer_norm_backward", s.gates, s.hn, kept["gh_norm"][s.t],
                        kept["stats"][s.t], self.g_hh, s.h_prev, s.dy, self.ld_dy,
                        self.lengths, s.t, self.dh_rec, self.dh_carry, s.d_gx, self.ld_g, d_gh,
                        s.inside, s.zoneout, self.ld_z, per_row=True)
        self.xp.matmul(d_gh, self.W_hh, out=self.dh_rec)

    def variant_grads(self):
        if self.g_hh is None:
            return {}
        H = self.H
        d_gh = self.d_gx.copy()  # the gradient of gh: d_gx with dn * r in the n block
        d_gh[..., 2 * H:] *= self.saved.gates[..., :H]
        return {"db_hh": d_gh.sum(axis=(0, 1)),
                "dg_hh": (d_gh * self.kept["gh_norm"]).sum(axis=(0, 1))}

    def hh_terms(self, d_gx, h_in):
        return [(self.d_gh, h_in)]


class GruTextbookRecurrence(Recurrence):
    file = "gru.cu"
    gate_blocks = 3  # r, z, n

    def __init__(self, backend, cell, W_hh, b_hh, B):
        super().__init__(backend, cell, W_hh, b_hh, B)
        H = self.H
        self.W_rz, self.W_n = W_hh[:2 * H], W_hh[2 * H:]

    def forward_buffers(self, T, training):
        xp, B, H = self.xp, self.B, self.H
        self.gh_rz = xp.empty((B, 2 * H), self.dtype)
        self.gh_n = xp.empty((B, H), self.dtype)
        self.rh = xp.empty((B, H), self.dtype)
        # inference keeps no gates, but z must reach the second kernel of the step
        self.scratch_gates = None if training else xp.empty((B, 3 * H), self.dtype)

    def forward_step(self, s):
        gates = s.gates if s.gates is not None else self.scratch_gates
        self.xp.matmul(s.h_prev, self.W_rz.T, out=self.gh_rz)
        self.launch("gru_textbook_forward_gates", s.x_proj, self.ld_x, self.gh_rz, self.b_hh,
                    s.h_prev, gates, self.rh, self.clip, s.inside)
        self.xp.matmul(self.rh, self.W_n.T, out=self.gh_n)
        self.launch("gru_textbook_forward_state", s.x_proj, self.ld_x, self.gh_n, self.b_hh,
                    s.h_prev, self.lengths, s.t, s.y, self.ld_y, s.h_next, gates, self.clip,
                    s.inside, s.zoneout, self.ld_z)

    def backward_buffers(self, T):
        xp, B, H = self.xp, self.B, self.H
        self.d_rh = xp.empty((B, H), self.dtype)
        self.rh = xp.empty((T, B, H), self.dtype)
        # The GEMMs' left operands, blocks of d_gx's rows, copied to rows of their own:
        # cupy.matmul would copy them anyway (they are neither C- nor F-contiguous), into a
        # temporary it allocates, which a captured graph must not hold (graphs.py).
        self.d_n = xp.empty((B, H), self.dtype)
        self.d_rz = xp.empty((B, 2 * H), self.dtype)

    def backward_step(self, s):
        xp, H = self.xp, self.H
        self.launch("gru_textbook_backward_state", s.gates, s.h_prev, s.dy, self.ld_dy,
                    self.lengths, s.t, self.dh_rec, self.dh_carry, s.d_gx, self.ld_g, s.inside,
                    s.zoneout, self.ld_z)
        xp.copyto(self.d_n, s.d_gx[:, 2 * H:])
        xp.matmul(self.d_n, self.W_n, out=self.d_rh)
        self.launch("gru_textbook_backward_reset", s.gates, s.h_prev, self.d_rh, self.lengths,
                    s.t, self.dh_carry, s.d_gx, self.ld_g, self.rh[s.t], s.inside)
        xp.copyto(self.d_rz, s.d_gx[:, :2 * H])
        xp.matmul(self.d_rz, self.W_rz, out=self.dh_rec)

    def hh_terms(self, d_gx, h_in):
        H = self.H
        return [(d_gx[..., :2 * H], h_in), (d_gx[..., 2 * H:], self.rh)]

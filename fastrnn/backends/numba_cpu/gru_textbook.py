"""GRU steps, linear_before_reset=False (textbook; equations in cells.py): two phases.

n needs r of every unit before its product, so forward phase 0 runs h @ W_rz^T, then per valid
row r, z = sigmoid(gx + gh + b_hh) and r*h; phase 1 runs (r*h) @ W_hn^T, then
n = tanh(gx_n + that + b_hn) and h' = n + z*(h - n). Training keeps r, z, n.

Backward phase 0: dn, dz (gru.dn_dz: dh <- dh*z) and the shares of d_rh = dn @ W_hn; phase 1:
dr = d_rh*h*r*(1-r), dh += d_rh*r, and r*h (the terms of dW_hn); its share [dr, dz] @ W_rz
reaches dh at the step processed next. A clip (variants.py) clamps the inputs of r, z and n,
and zeroes dr, dz, dn where they were clamped.
"""

from __future__ import annotations

from .gru import G, dn_dz
from .packed import panel_width
from .scalars import U
from .driver import Spec, register
from .variants import CLIP, ZONEOUT, cell_tuple, clamp_row, unclamp_row
from .vectors import add_into, copy_row, sigmoid_row, tanh_row


GruTextbook = cell_tuple("GruTextbook", __name__, variants=(CLIP, ZONEOUT))


def _forward(cell, k, geo, pos, xp, b_hh, state, keep, work):
    g, n, nu, H, u0, xo, hs = pos.g, pos.n, geo.nu, geo.H, pos.u0, pos.io, state[0]
    out = work.out
    m0 = pos.tb * G * H + u0  # the row's clamp flags of r
    if k == 0:
        add_into(out, g, xp, xo, b_hh, u0, n)
        add_into(out, g + nu, xp, xo + H, b_hh, H + u0, n)
        for j in range(2):
            clamp_row(cell, out, g + j * nu, n, m0 + j * H, geo.training)
        sigmoid_row(out, g, 2 * nu)
        rh, hb = work.mid, pos.b * H + u0
        for u in range(n):
            rh[U(hb + u)] = out[U(g + u)] * hs[U(pos.i_in + u)]
    else:
        add_into(out, g, xp, xo + 2 * H, b_hh, 2 * H + u0, n)
        clamp_row(cell, out, g, n, m0 + 2 * H, geo.training)
        tanh_row(out, g, n)
        rz = work.ph[0, 3] + pos.row * work.ph[0, 1] * panel_width(out)  # r, z of phase 0
        for u in range(n):
            v = out[U(g + u)]
            hs[U(pos.i_out + u)] = v + out[U(rz + nu + u)] * (hs[U(pos.i_in + u)] - v)


def _backward(cell, k, geo, pos, dgx, state, grads, keep, work):
    H, n, nu, go, hs, gates = geo.H, pos.n, geo.nu, pos.io, state[0], keep[0]
    hb = pos.b * H + pos.u0
    gr = pos.tb * G * H + pos.u0
    d = work.d
    if k == 0:
        dn = pos.g
        dr = work.ph[1, 2] + pos.row * 2 * nu  # phase 1's [dr, dz]
        dn_dz(grads[0], hb, gates, gr, H, hs, pos.i_in, d, dn, d, dr + nu, n)
        unclamp_row(cell, d, dr + nu, n, gr + H)
        unclamp_row(cell, d, dn, n, gr + 2 * H)
        copy_row(dgx, go + H, d, dr + nu, n)
        copy_row(dgx, go + 2 * H, d, dn, n)
    else:
        dh, tmp, rh, dr = grads[0], work.mid, work.terms, pos.g
        ro = pos.tb * H + pos.u0
        one = dh.dtype.type(1)
        for u in range(n):
            r = gates[U(gr + u)]
            d[U(dr + u)] = tmp[U(hb + u)] * hs[U(pos.i_in + u)] * r * (one - r)
        unclamp_row(cell, d, dr, n, gr)
        for u in range(n):
            dh[U(hb + u)] += tmp[U(hb + u)] * gates[U(gr + u)]
        for u in range(n):
            rh[U(ro + u)] = gates[U(gr + u)] * hs[U(pos.i_in + u)]
        copy_row(dgx, go, d, dr, n)


def _hh_terms(d_gx, rh, h_in):
    H = h_in.shape[-1]
    return [(d_gx[..., :2 * H], h_in), (d_gx[..., 2 * H:], rh)]


register("gru_textbook", Spec(GruTextbook(), forward=((0, 1), (2,)), backward=((2,), (0, 1)),
                              states=1, gates=True, hn=False, kt=1, hh_terms=_hh_terms),
         _forward, _backward)

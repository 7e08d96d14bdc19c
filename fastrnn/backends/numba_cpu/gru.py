"""GRU steps (equations in cells.py; gates r, z, n), linear_before_reset=True: one phase.

Forward, per valid row, with gh = h @ W_hh^T: r, z = sigmoid(gx + gh + b_hh); hn = gh_n + b_hn;
n = tanh(gx_n + r*hn); h' = n + z*(h - n). Training keeps r, z, n and hn. Backward, per valid
row, with dh reaching h' (plus dy):

    dn = dh*(1-z)*(1-n^2),  dz = dh*(h-n)*z*(1-z),  dr = dn*hn*r*(1-r)
    d_gx = [dr, dz, dn],  d_gh = [dr, dz, dn*r],  dh_prev = dh*z + d_gh @ W_hh

d_gh (the terms of dW_hh) is written beside d_gx. gru_textbook.py shares _dn_dz.
A clip (variants.py) clamps the inputs of r, z and n (gx_n + r*hn) and zeroes dr, dz, dn
where they were clamped. Layer norm normalises the whole row of W_hh h (one unit chunk) before
b_hh is added, so hn is LN(W_hh h)_n g_n + b_hn; backward turns d_gh into the gradient of W_hh h
(variants.py), which then makes dW_hh in place of d_gh.
"""

from __future__ import annotations

from numba import njit

from .scalars import KERNEL, U
from .driver import Spec, register
from .variants import (CLIP, LAYER_NORM, ZONEOUT, cell_tuple, clamp_row, layer_norm_back_row,
                       layer_norm_row, unclamp_row)
from .vectors import add_into, add_to, copy_row, sigmoid_row, tanh_row

G = 3


Gru = cell_tuple("Gru", __name__, variants=(CLIP, ZONEOUT, LAYER_NORM))


def _forward(cell, k, geo, pos, xp, b_hh, state, keep, work):
    g, n, nu, H, u0, xo, gbuf, hs = pos.g, pos.n, geo.nu, geo.H, pos.u0, pos.io, work.out, \
        state[0]
    # one unit chunk with layer norm: nu = H, u0 = 0
    layer_norm_row(cell, gbuf, g, G * H, pos.tb * G * H, geo.training)
    add_into(gbuf, g, xp, xo, b_hh, u0, n)
    add_into(gbuf, g + nu, xp, xo + H, b_hh, H + u0, n)
    add_to(gbuf, g + 2 * nu, b_hh, 2 * H + u0, n)  # hn = W_hn h + b_hn
    if geo.training:
        copy_row(keep[1], pos.tb * H + u0, gbuf, g + 2 * nu, n)
    m0 = pos.tb * G * H + u0  # the row's clamp flags of r
    for j in range(2):
        clamp_row(cell, gbuf, g + j * nu, n, m0 + j * H, geo.training)
    sigmoid_row(gbuf, g, 2 * nu)
    for u in range(n):
        gbuf[U(g + 2 * nu + u)] = xp[U(xo + 2 * H + u)] + gbuf[U(g + u)] * gbuf[U(g + 2 * nu + u)]
    clamp_row(cell, gbuf, g + 2 * nu, n, m0 + 2 * H, geo.training)
    tanh_row(gbuf, g + 2 * nu, n)
    for u in range(n):
        v = gbuf[U(g + 2 * nu + u)]
        hs[U(pos.i_out + u)] = v + gbuf[U(g + nu + u)] * (hs[U(pos.i_in + u)] - v)


@njit(**KERNEL)
def dn_dz(dh, h0, gs, g0, H, hs, i_in, dn, n0, dz, z0, n):
    """dn = dh*(1-z)*(1-n^2), dz = dh*(h-n)*z*(1-z), then dh <- dh*z (the direct path);
    r, z, n at gs[g0:], gs[g0 + H:], gs[g0 + 2H:]."""
    one = dh.dtype.type(1)
    for u in range(n):
        z = gs[U(g0 + H + u)]
        v = gs[U(g0 + 2 * H + u)]
        dn[U(n0 + u)] = dh[U(h0 + u)] * (one - z) * (one - v * v)
    for u in range(n):
        z = gs[U(g0 + H + u)]
        dz[U(z0 + u)] = dh[U(h0 + u)] * (hs[U(i_in + u)] - gs[U(g0 + 2 * H + u)]) * z * (one - z)
    for u in range(n):
        dh[U(h0 + u)] *= gs[U(g0 + H + u)]


def _backward(cell, k, geo, pos, dgx, state, grads, keep, work):
    H, n, nu, d, d0, go = geo.H, pos.n, geo.nu, work.d, pos.g, pos.io
    gates, hn, tmp, d_gh = keep[0], keep[1], work.mid, work.terms
    hb = pos.b * H + pos.u0
    gh = pos.tb * G * H + pos.u0  # gates, d_gh
    one = d.dtype.type(1)
    dn_dz(grads[0], hb, gates, gh, H, state[0], pos.i_in, tmp, hb, d, d0 + nu, n)
    unclamp_row(cell, d, d0 + nu, n, gh + H)
    unclamp_row(cell, tmp, hb, n, gh + 2 * H)
    ho = pos.tb * H + pos.u0
    for u in range(n):
        r = gates[U(gh + u)]
        d[U(d0 + u)] = tmp[U(hb + u)] * hn[U(ho + u)] * r * (one - r)
    unclamp_row(cell, d, d0, n, gh)
    for u in range(n):
        d[U(d0 + 2 * nu + u)] = tmp[U(hb + u)] * gates[U(gh + u)]
    copy_row(dgx, go, d, d0, n)
    copy_row(dgx, go + H, d, d0 + nu, n)
    copy_row(dgx, go + 2 * H, tmp, hb, n)
    for j in range(G):
        copy_row(d_gh, gh + j * H, d, d0 + j * nu, n)
    layer_norm_back_row(cell, d, d0, G * H, gh, pos.b * 2 * G * H)


def _hh_terms(d_gx, d_gh, h_in):
    return [(d_gh, h_in)]


register("gru", Spec(Gru(), forward=((0, 1, 2),), backward=((0, 1, 2),), states=1, gates=True,
                     hn=True, kt=G, hh_terms=_hh_terms), _forward, _backward)

"""LSTM steps (equations in cells.py; gates i, f, g, o): one phase, four gates.

Forward, per valid row: the pre-activations (h @ W_hh^T + x_proj + b_hh), activations,
c' = f*c + i*g, h' = o*tanh(c'); training keeps i, f, g, o and the states h and c.

Backward, per valid row, with dh reaching h' (plus dy) and dc reaching c':

    do = dh*tanh(c'),  dc += dh*o*(1 - tanh(c')^2),
    d_gates = [dc*g*i(1-i), dc*c*f(1-f), dc*i*(1-g^2), do*o(1-o)],  dc <- dc*f,  dh <- 0
"""

from __future__ import annotations

from typing import NamedTuple

from numba import njit

from .scalars import KERNEL, U
from .driver import Spec, register
from .vectors import add_into, copy_row, sigmoid_row, tanh_of, tanh_row, zero_row

G = 4


class Lstm(NamedTuple):
    pass


@njit(**KERNEL)
def _cell_row(g, g0, nu, n, cs, c_in, c_out, hs):
    """c' = f*c + i*g and h' = o*tanh(c') for n units; activated gate k at g[g0 + k*nu:], c at
    cs[c_in:], c' and h' go to cs[c_out:] and hs[c_out:]."""
    for u in range(n):
        cs[U(c_out + u)] = (g[U(g0 + nu + u)] * cs[U(c_in + u)]
                            + g[U(g0 + u)] * g[U(g0 + 2 * nu + u)])
    tanh_of(hs, c_out, cs, c_out, n)
    for u in range(n):
        hs[U(c_out + u)] *= g[U(g0 + 3 * nu + u)]


def _forward(cell, k, geo, pos, xp, b_hh, state, keep, work):
    g, n, nu, H, gbuf = pos.g, pos.n, geo.nu, geo.H, work.out
    for j in range(G):
        add_into(gbuf, g + j * nu, xp, pos.io + j * H, b_hh, j * H + pos.u0, n)
    sigmoid_row(gbuf, g, 2 * nu)
    tanh_row(gbuf, g + 2 * nu, n)
    sigmoid_row(gbuf, g + 3 * nu, n)
    _cell_row(gbuf, g, nu, n, state[1], pos.i_in, pos.i_out, state[0])


def _backward(cell, k, geo, pos, dgx, state, grads, keep, work):
    H, n, nu, d, d0, gs, cs, dh, dc = (geo.H, pos.n, geo.nu, work.d, pos.g, keep[0], state[1],
                                       grads[0], grads[1])
    h0 = pos.b * H + pos.u0  # dh, dc and the scratch tanh(c') of the row
    g0 = pos.tb * G * H + pos.u0
    tmp, one = work.mid, dh.dtype.type(1)
    tanh_of(tmp, h0, cs, pos.i_out, n)
    for u in range(n):
        o = gs[U(g0 + 3 * H + u)]
        d[U(d0 + 3 * nu + u)] = dh[U(h0 + u)] * tmp[U(h0 + u)] * o * (one - o)
    for u in range(n):
        th = tmp[U(h0 + u)]
        dc[U(h0 + u)] += dh[U(h0 + u)] * gs[U(g0 + 3 * H + u)] * (one - th * th)
    for u in range(n):
        i = gs[U(g0 + u)]
        d[U(d0 + u)] = dc[U(h0 + u)] * gs[U(g0 + 2 * H + u)] * i * (one - i)
    for u in range(n):
        f = gs[U(g0 + H + u)]
        d[U(d0 + nu + u)] = dc[U(h0 + u)] * cs[U(pos.i_in + u)] * f * (one - f)
    for u in range(n):
        g = gs[U(g0 + 2 * H + u)]
        d[U(d0 + 2 * nu + u)] = dc[U(h0 + u)] * gs[U(g0 + u)] * (one - g * g)
    for u in range(n):
        dc[U(h0 + u)] *= gs[U(g0 + H + u)]
    zero_row(dh, h0, n)  # an LSTM's h reaches the previous step only through W_hh
    for j in range(G):
        copy_row(dgx, pos.io + j * H, d, d0 + j * nu, n)


def _hh_terms(d_gx, terms, h_in):
    return [(d_gx, h_in)]


register("lstm", Spec(Lstm(), forward=(tuple(range(G)),), backward=(tuple(range(G)),),
                      states=2, gates=True, hn=False, kt=0, hh_terms=_hh_terms),
         _forward, _backward)

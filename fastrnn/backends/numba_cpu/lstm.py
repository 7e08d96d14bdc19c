"""LSTM steps (equations in cells.py; gates i, f, g, o): one phase, four gates.

Forward, per valid row: the pre-activations (h @ W_hh^T + x_proj + b_hh), activations,
c' = f*c + i*g, h' = o*tanh(c'); training keeps i, f, g, o and the states h and c.

Backward, per valid row, with dh reaching h' (plus dy) and dc reaching c':

    do = dh*tanh(c'),  dc += dh*o*(1 - tanh(c')^2),
    d_gates = [dc*g*i(1-i), dc*c*f(1-f), dc*i*(1-g^2), do*o(1-o)],  dc <- dc*f,  dh <- 0

Variants (cells.Variant, variants.py): peepholes add p_i*c, p_f*c to the inputs of i and f and
p_o*c' to o's, so o is activated after c'; backward adds d_o*p_o to dc before it flows into
i, f, g and d_i*p_i + d_f*p_f to the dc passed back (dP is summed after the loop, above the
backends). A clip clamps each gate's whole input, the peephole term included, and zeroes
the gate's gradient where it was clamped. Layer norm (one unit chunk, so a row is whole):
W_hh h is normalised over its 4H values before b_hh and x_proj are added, and tanh(c') becomes
tanh(LN(c') g_c + b_c); backward takes both normalisations back (variants.py).
"""

from __future__ import annotations

from numba import njit

from .scalars import KERNEL, U
from .driver import Spec, register
from .variants import (CELL_NORM, CLIP, LAYER_NORM, PEEPHOLES, ZONEOUT, cell_tanh,
                       cell_tanh_back, cell_tuple, clamp_row, layer_norm_back_row,
                       layer_norm_row, peep_row, unclamp_row)
from .vectors import add_into, copy_row, sigmoid_row, tanh_row, zero_row

G = 4


Lstm = cell_tuple("Lstm", __name__, variants=(PEEPHOLES, CLIP, ZONEOUT, LAYER_NORM, CELL_NORM))


@njit(**KERNEL)
def _sums(b, H):
    """Where batch row b's sums of dg_hh, db_hh, dg_c, db_c start in cell.acc (variants.py)."""
    return b * (2 * G * H + 2 * H)


def _forward(cell, k, geo, pos, xp, b_hh, state, keep, work):
    g, n, nu, H, u0, gbuf = pos.g, pos.n, geo.nu, geo.H, pos.u0, work.out
    cs, hs, c_in, c_out = state[1], state[0], pos.i_in, pos.i_out
    m0 = pos.tb * G * H + u0  # the row's clamp flags of gate 0
    layer_norm_row(cell, gbuf, g, G * H, m0, geo.training)  # one unit chunk: nu = H, u0 = 0
    for j in range(G):
        add_into(gbuf, g + j * nu, xp, pos.io + j * H, b_hh, j * H + u0, n)
    for j in range(2):
        peep_row(cell, j, u0, gbuf, g + j * nu, cs, c_in, n)
    for j in range(3):
        clamp_row(cell, gbuf, g + j * nu, n, m0 + j * H, geo.training)
    sigmoid_row(gbuf, g, 2 * nu)
    tanh_row(gbuf, g + 2 * nu, n)
    for u in range(n):
        cs[U(c_out + u)] = (gbuf[U(g + nu + u)] * cs[U(c_in + u)]
                            + gbuf[U(g + u)] * gbuf[U(g + 2 * nu + u)])
    peep_row(cell, 2, u0, gbuf, g + 3 * nu, cs, c_out, n)  # o looks at c'
    clamp_row(cell, gbuf, g + 3 * nu, n, m0 + 3 * H, geo.training)
    sigmoid_row(gbuf, g + 3 * nu, n)
    cell_tanh(cell, hs, c_out, cs, c_out, n)
    for u in range(n):
        hs[U(c_out + u)] *= gbuf[U(g + 3 * nu + u)]


def _backward(cell, k, geo, pos, dgx, state, grads, keep, work):
    H, n, nu, d, d0, gs, cs, dh, dc = (geo.H, pos.n, geo.nu, work.d, pos.g, keep[0], state[1],
                                       grads[0], grads[1])
    h0 = pos.b * H + pos.u0  # dh, dc and the scratch tanh(c') of the row
    g0 = pos.tb * G * H + pos.u0  # the row's gates, and its clamp flags
    tmp, one = work.mid, dh.dtype.type(1)
    cell_tanh(cell, tmp, h0, cs, pos.i_out, n)
    for u in range(n):
        o = gs[U(g0 + 3 * H + u)]
        d[U(d0 + 3 * nu + u)] = dh[U(h0 + u)] * tmp[U(h0 + u)] * o * (one - o)
    unclamp_row(cell, d, d0 + 3 * nu, n, g0 + 3 * H)
    cell_tanh_back(cell, dc, h0, dh, gs, g0 + 3 * H, tmp, cs, pos.i_out, n,
                   _sums(pos.b, H) + 2 * G * H)
    peep_row(cell, 2, pos.u0, dc, h0, d, d0 + 3 * nu, n)
    for u in range(n):
        i = gs[U(g0 + u)]
        d[U(d0 + u)] = dc[U(h0 + u)] * gs[U(g0 + 2 * H + u)] * i * (one - i)
    for u in range(n):
        f = gs[U(g0 + H + u)]
        d[U(d0 + nu + u)] = dc[U(h0 + u)] * cs[U(pos.i_in + u)] * f * (one - f)
    for u in range(n):
        g = gs[U(g0 + 2 * H + u)]
        d[U(d0 + 2 * nu + u)] = dc[U(h0 + u)] * gs[U(g0 + u)] * (one - g * g)
    for j in range(3):
        unclamp_row(cell, d, d0 + j * nu, n, g0 + j * H)
    for u in range(n):
        dc[U(h0 + u)] *= gs[U(g0 + H + u)]
    for j in range(2):
        peep_row(cell, j, pos.u0, dc, h0, d, d0 + j * nu, n)
    zero_row(dh, h0, n)  # an LSTM's h reaches the previous step only through W_hh
    for j in range(G):
        copy_row(dgx, pos.io + j * H, d, d0 + j * nu, n)
    layer_norm_back_row(cell, d, d0, G * H, g0, _sums(pos.b, H))


def _hh_terms(d_gx, terms, h_in):
    return [(d_gx, h_in)]


register("lstm", Spec(Lstm(), forward=(tuple(range(G)),), backward=(tuple(range(G)),),
                      states=2, gates=True, hn=False, kt=0, hh_terms=_hh_terms),
         _forward, _backward)

"""Elman RNN steps (equations in cells.py), tanh or relu: one phase, one gate.

Forward, per valid row: h' = act(h @ W_hh^T + x_proj + b_hh). Training keeps only the states.
Backward, with dh reaching h' (plus dy): d_pre = dh * act'(h'), act' = 1 - h'^2 (tanh) or
[h' > 0] (relu); dh <- 0, as h reaches the previous step only through d_pre @ W_hh.
With a clip (variants.py) the pre-activation is clamped first, and d_pre is 0 where it was.
With zoneout, hs holds the zoned-out h', so training keeps h_new as the cell's one gate.
"""

from __future__ import annotations

from .scalars import U
from .driver import Spec, register
from .variants import CLIP, ZONEOUT, cell_tuple, clamp_row, h_new_of, keep_h_new, unclamp_row
from .vectors import add_into, copy_row, tanh_of, zero_row


Rnn = cell_tuple("Rnn", __name__, ("relu",), (CLIP, ZONEOUT))


def _forward(cell, k, geo, pos, xp, b_hh, state, keep, work):
    g, n, gbuf, hs = pos.g, pos.n, work.out, state[0]
    add_into(gbuf, g, xp, pos.io, b_hh, pos.u0, n)
    clamp_row(cell, gbuf, g, n, pos.tb * geo.H + pos.u0, geo.training)
    if cell.relu:
        zero = gbuf.dtype.type(0)
        for u in range(n):
            v = gbuf[U(g + u)]
            hs[U(pos.i_out + u)] = zero if v < zero else v  # NaN stays NaN
    else:
        tanh_of(hs, pos.i_out, gbuf, g, n)
    keep_h_new(cell, gbuf, g, hs, pos.i_out, n)


def _backward(cell, k, geo, pos, dgx, state, grads, keep, work):
    d, g, n, dh = work.d, pos.g, pos.n, grads[0]
    hb = pos.b * geo.H + pos.u0
    hs, ho = h_new_of(cell, state[0], pos.i_out, keep[0], pos.tb * geo.H + pos.u0)
    one = dh.dtype.type(1)
    zero = dh.dtype.type(0)
    if cell.relu:  # a product, not a select, so that a NaN in dh stays NaN
        for u in range(n):
            d[U(g + u)] = dh[U(hb + u)] * (one if hs[U(ho + u)] > zero else zero)
    else:
        for u in range(n):
            v = hs[U(ho + u)]
            d[U(g + u)] = dh[U(hb + u)] * (one - v * v)
    unclamp_row(cell, d, g, n, pos.tb * geo.H + pos.u0)
    zero_row(dh, hb, n)
    copy_row(dgx, pos.io, d, g, n)


def _hh_terms(d_gx, terms, h_in):
    return [(d_gx, h_in)]


for _relu in (False, True):
    register("rnn_relu" if _relu else "rnn_tanh",
             Spec(Rnn(_relu), forward=((0,),), backward=((0,),), states=1, gates=False,
                  hn=False, kt=0, hh_terms=_hh_terms), _forward, _backward)

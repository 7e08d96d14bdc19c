"""The time loop of an LSTM with a projection (cells.Variant.proj_size): h = W_hr (o tanh(c')).

Its h is Hp wide and c is H wide, so each step has two products where the skeleton's loop has
one width for every state: forward, the gates from h @ W_hh^T (W_hh (4H, Hp)), the LSTM's row
function (lstm.py, unchanged: it writes m = o tanh(c') where the plain cell writes h), then
h' = m @ W_hr^T; backward, dm = dh' @ W_hr, the LSTM's backward row function with dm as its
dh, then the share d @ W_hh into the previous dh. Both products are packed.gemm on panels
packed once per call (pack_forward / pack_backward with H rows a gate and Hp columns).

The threads split the batch only (NumbaBackend._plan): each runs its row group through every
step, so no barrier and no exchange of shares between threads; every block buffer holds row b
at b times its row width. Zoneout acts on the projected h, as skeleton.py does on a plain h.

A training forward keeps m in a buffer shaped like c's (the state slots of base.state_slots),
and backward keeps dh' of every valid (step, row) in dh_proj (R, Hp): dW_hr = dh_proj^T m
after the loop, one GEMM (NumbaBackend.recurrence_backward).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .packed import gemm, panel_width
from .scalars import KERNEL
from .skeleton import (BWork, FWork, Geometry, Pos, _keep_gates, backward_row, count_valid,
                       forward_row, product_rows, slots)
from .variants import zoneout_join, zoneout_row, zoneout_split
from .vectors import add_to, copy_row, zero_row


@njit(**KERNEL)
def _forward_group(cell, geo, c, x, y, steps, b_hh, state, keep, work, proj):
    """Every step of row group c: state (hs (S, B, Hp), cs (S, B, H), ms (S, B, H) m);
    proj (W_hr's forward panels, their count, the product's buffer (B, panels*NR), Hp)."""
    geo, work = Geometry(*geo), FWork(*work)
    T, B, H, G = geo.T, geo.B, geo.H, geo.G
    lengths, rows, bounds = steps
    b0, b1 = bounds[c], bounds[c + 1]
    xp, xs = x
    yf, ys_t, ys_b = y
    hs, cs, ms = state
    WR, PR, hp, Hp = proj
    Ng = work.ph[0, 1] * panel_width(work.W)  # a gate row's width in work.out
    Nh = PR * panel_width(WR)
    for s in range(T):
        t, r_in, r_out = slots(s, T, geo.reverse, geo.training)
        nv = count_valid(lengths, t, b0, b1)
        nb = product_rows(nv, b0, b1)
        if nb > 0:
            gemm(hs, (r_in * B + b0) * Hp, Hp, nb, work.W, 0, work.ph[0, 1], work.out, b0 * Ng)
        for b in range(b0, b0 + nv):
            tb = rows[t] + b
            forward_row(cell, 0, geo, Pos(t, b, 0, H, (r_in * B + b) * H, (r_out * B + b) * H,
                                          b, b * Ng, tb * xs, tb), xp, b_hh, (ms, cs), keep,
                        work)
            if geo.training and keep[0].size > 0:
                _keep_gates(keep[0], tb * G * H, H, H, H, b, work)
        if nb > 0:
            gemm(ms, (r_out * B + b0) * H, H, nb, WR, 0, PR, hp, b0 * Nh)
        for b in range(b0, b1):
            i_in, i_out = (r_in * B + b) * Hp, (r_out * B + b) * Hp
            yo = t * ys_t + b * ys_b
            if b >= b0 + nv:  # the states carry, y is 0
                copy_row(hs, i_out, hs, i_in, Hp)
                copy_row(cs, (r_out * B + b) * H, cs, (r_in * B + b) * H, H)
                zero_row(yf, yo, Hp)
                continue
            copy_row(hs, i_out, hp, b * Nh, Hp)
            zoneout_row(cell, hs, i_out, i_in, (rows[t] + b) * Hp, Hp)
            copy_row(yf, yo, hs, i_out, Hp)


@njit(parallel=True, **KERNEL)
def forward_loop(cell, geo, x, y, steps, b_hh, state, keep, work, proj):
    """Every step of one direction; argument groups as skeleton.time_loop's forward, with state
    and proj as ``_forward_group`` says."""
    rows = geo[4]  # Geometry.rows
    if rows == 1:
        _forward_group(cell, geo, 0, x, y, steps, b_hh, state, keep, work, proj)
    else:
        for c in prange(rows):
            _forward_group(cell, geo, np.int64(c), x, y, steps, b_hh, state, keep, work, proj)


@njit(**KERNEL)
def _backward_group(cell, geo, c, dy, dgx, steps, state, grads, keep, work, proj):
    """Every step of row group c, last first: grads (dh (B, Hp), dc (B, H)) end as the initial
    states' gradients; proj (W_hr's backward panels, their count, the product's buffer
    (B, panels*NR), dm (B, H), dh_proj (R*Hp), the share's buffer (B, work.P*NR), Hp)."""
    geo, work = Geometry(*geo), BWork(*work)
    T, B, H, K = geo.T, geo.B, geo.H, geo.G * geo.H
    lengths, rows, bounds = steps
    b0, b1 = bounds[c], bounds[c + 1]
    dyf, ds_t, ds_b = dy
    dgf, gs = dgx
    dh, dc = grads
    WR, PR, dmq, dm, dh_proj, share, Hp = proj
    Nm = PR * panel_width(WR)
    Ns = work.P * panel_width(work.WT)
    for s in range(T):
        t, r_in, r_out = slots(T - 1 - s, T, geo.reverse, True)
        nv = count_valid(lengths, t, b0, b1)  # rows b0..b0+nv; dh, dc pass the others unchanged
        nb = product_rows(nv, b0, b1)
        for b in range(b0, b0 + nv):
            tb = rows[t] + b
            add_to(dh, b * Hp, dyf, t * ds_t + b * ds_b, Hp)
            zoneout_split(cell, dh, b * Hp, tb * Hp, Hp)
            copy_row(dh_proj, tb * Hp, dh, b * Hp, Hp)
        if nb > 0:
            gemm(dh, b0 * Hp, Hp, nb, WR, 0, PR, dmq, b0 * Nm)
        for b in range(b0, b0 + nv):
            tb = rows[t] + b
            copy_row(dm, b * H, dmq, b * Nm, H)
            backward_row(cell, 0, geo, Pos(t, b, 0, H, (r_in * B + b) * H,
                                           (r_out * B + b) * H, b, b * K, tb * gs, tb),
                         dgf, state, (dm, dc), keep, work)
            zero_row(dh, b * Hp, Hp)  # h' reached the previous step through m only
            zoneout_join(cell, dh, b * Hp, Hp)
        if nb > 0:
            gemm(work.d, b0 * K, K, nb, work.WT, 0, work.P, share, b0 * Ns)
        for b in range(b0, b0 + nv):
            add_to(dh, b * Hp, share, b * Ns, Hp)


@njit(parallel=True, **KERNEL)
def backward_loop(cell, geo, dy, dgx, steps, state, grads, keep, work, proj):
    """Every step of one direction in reverse; argument groups as skeleton.time_loop's
    backward, with grads and proj as ``_backward_group`` says."""
    rows = geo[4]  # Geometry.rows
    if rows == 1:
        _backward_group(cell, geo, 0, dy, dgx, steps, state, grads, keep, work, proj)
    else:
        for c in prange(rows):
            _backward_group(cell, geo, np.int64(c), dy, dgx, steps, state, grads, keep, work,
                            proj)

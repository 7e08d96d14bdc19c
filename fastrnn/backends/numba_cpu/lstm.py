"""LSTM time loops (equations in cells.py; gates i, f, g, o).

A step of a block (rows b0..b1, unit chunk u; see common.Plan), forward: the product of the
rows' states with the chunk's rows of W_hh, then per valid row the pre-activations (+ x_proj +
b_hh), activations, c' = f*c + i*g, h' = o*tanh(c') and the save of i, f, g, o (training).
Invalid rows carry h and c and write y = 0.

Backward, in reverse processing order: dh of the block's rows and units first receives every
chunk's share of d_gates @ W_hh from the step processed before; then per valid row, with dh
the gradient reaching h' (plus dy),

    do = dh*tanh(c'),  dc += dh*o*(1 - tanh(c')^2),
    d_gates = [dc*g*i(1-i), dc*c*f(1-f), dc*i*(1-g^2), do*o(1-o)],  dc <- dc*f,  dh <- 0

and the chunk's share d_gates[:, chunk] @ W_hh[chunk rows] for the next step. Invalid rows pass
dh and dc on (their d_gates are zero).

Flat layouts: state row (slot, b) at (slot*B + b)*H; saved gate k of (t, b) at
(t*B + b)*4H + k*H; a block's rows in the step buffers (gate k at k*size) at b0*U*Np +
u*(b1-b0)*Np with Np the padded row length; the shares of dh of slot p, chunk v at
((p*U + v)*B + b)*Hp.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (JIT, U, add_into, add_to, block_of, copy_row, count_valid, final_slot,
                     first_slot, flat, flat_input, gate_store, gemm, pack_backward, padded,
                     panel_width, receive, sigmoid_row, slots, tanh_of, tanh_row, zero_row)

G = 4


@njit(**JIT)
def _cell_row(g, g0, nu, n, cs, c_in, c_out, hs):
    """c' = f*c + i*g and h' = o*tanh(c') for n units; activated gate k at g[g0 + k*nu:], c at
    cs[c_in:], c' and h' go to cs[c_out:] and hs[c_out:]."""
    for u in range(n):
        cs[U(c_out + u)] = (g[U(g0 + nu + u)] * cs[U(c_in + u)]
                            + g[U(g0 + u)] * g[U(g0 + 2 * nu + u)])
    tanh_of(hs, c_out, cs, c_out, n)
    for u in range(n):
        hs[U(c_out + u)] *= g[U(g0 + 3 * nu + u)]


@njit(**JIT)
def _forward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, training, xp, xs_t, xs_b, y,
                   ys_t, ys_b, W, b_hh, lengths, hs, cs, gates, gbuf):
    Np = P * panel_width(W)
    nb = b1 - b0
    u0 = u * nu
    n = min(nu, H - u0)
    t, r_in, r_out = slots(s, T, reverse, training)
    blk = b0 * units * Np + u * nb * Np
    if count_valid(lengths, t, b0, b1) > 0:
        gemm(hs, (r_in * B + b0) * H, H, nb, W, u * P * H * panel_width(W), P, gbuf, blk)
    for b in range(b0, b1):
        i_in = (r_in * B + b) * H + u0
        i_out = (r_out * B + b) * H + u0
        yo = t * ys_t + b * ys_b + u0
        if t >= lengths[b]:
            copy_row(hs, i_out, hs, i_in, n)
            copy_row(cs, i_out, cs, i_in, n)
            zero_row(y, yo, n)
            continue
        g = blk + (b - b0) * Np
        xo = t * xs_t + b * xs_b + u0
        for k in range(G):
            add_into(gbuf, g + k * nu, xp, xo + k * H, b_hh, k * H + u0, n)
        sigmoid_row(gbuf, g, 2 * nu)
        tanh_row(gbuf, g + 2 * nu, n)
        sigmoid_row(gbuf, g + 3 * nu, n)
        _cell_row(gbuf, g, nu, n, cs, i_in, i_out, hs)
        copy_row(y, yo, hs, i_out, n)
        if training:
            for k in range(G):
                copy_row(gates, (t * B + b) * G * H + k * H + u0, gbuf, g + k * nu, n)


@njit(parallel=True, **JIT)
def forward_kernel(T, B, H, rows, units, nu, P, reverse, training, xp, xs_t, xs_b, y, ys_t, ys_b,
                   W, b_hh, lengths, hs, cs, gates, gbuf):
    if rows * units == 1:
        for s in range(T):
            _forward_block(0, B, 0, s, T, B, H, units, nu, P, reverse, training, xp, xs_t, xs_b,
                           y, ys_t, ys_b, W, b_hh, lengths, hs, cs, gates, gbuf)
    elif units == 1:  # independent row groups: no barrier between steps
        for c in prange(rows):
            b0, b1, _ = block_of(c, rows, 1, B)
            for s in range(T):
                _forward_block(b0, b1, 0, s, T, B, H, units, nu, P, reverse, training, xp, xs_t,
                               xs_b, y, ys_t, ys_b, W, b_hh, lengths, hs, cs, gates, gbuf)
    else:
        for s in range(T):
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _forward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, training, xp, xs_t,
                               xs_b, y, ys_t, ys_b, W, b_hh, lengths, hs, cs, gates, gbuf)


@njit(**JIT)
def _backward_row(gs, g0, H, n, dh, dc, h0, cs, c_in, c_out, d, d0, nu, tmp, t0):
    """One valid row of n units: gate k's activations at gs[g0 + k*H:], dh (reaching h') and dc
    at h0, c and c' at cs[c_in:], cs[c_out:]. Writes d_gates at d[d0 + k*nu:], dc <- dc*f;
    tmp[t0:t0+n] is scratch."""
    one = dh.dtype.type(1)
    tanh_of(tmp, t0, cs, c_out, n)
    for u in range(n):
        o = gs[U(g0 + 3 * H + u)]
        d[U(d0 + 3 * nu + u)] = dh[U(h0 + u)] * tmp[U(t0 + u)] * o * (one - o)
    for u in range(n):
        th = tmp[U(t0 + u)]
        dc[U(h0 + u)] += dh[U(h0 + u)] * gs[U(g0 + 3 * H + u)] * (one - th * th)
    for u in range(n):
        i = gs[U(g0 + u)]
        d[U(d0 + u)] = dc[U(h0 + u)] * gs[U(g0 + 2 * H + u)] * i * (one - i)
    for u in range(n):
        f = gs[U(g0 + H + u)]
        d[U(d0 + nu + u)] = dc[U(h0 + u)] * cs[U(c_in + u)] * f * (one - f)
    for u in range(n):
        g = gs[U(g0 + 2 * H + u)]
        d[U(d0 + 2 * nu + u)] = dc[U(h0 + u)] * gs[U(g0 + u)] * (one - g * g)
    for u in range(n):
        dc[U(h0 + u)] *= gs[U(g0 + H + u)]


@njit(**JIT)
def _backward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx, gs_t,
                    gs_b, WT, lengths, cs, gates, dh, dc, part, dbuf, tmp):
    N = G * nu
    Hp = P * panel_width(WT)
    nb = b1 - b0
    u0 = u * nu
    n = min(nu, H - u0)
    t, r_in, r_out = slots(T - 1 - s, T, reverse, True)
    if s > 0:
        receive(dh, part, 1 - s % 2, b0, b1, u0, n, B, H, units, Hp)
    blk = b0 * units * N + u * nb * N
    for b in range(b0, b1):
        go = t * gs_t + b * gs_b + u0
        d = blk + (b - b0) * N
        if t >= lengths[b]:
            zero_row(dbuf, d, N)
            for k in range(G):
                zero_row(dgx, go + k * H, n)
            continue
        hb = b * H + u0
        add_to(dh, hb, dy, t * ds_t + b * ds_b + u0, n)
        _backward_row(gates, (t * B + b) * G * H + u0, H, n, dh, dc, hb, cs,
                      (r_in * B + b) * H + u0, (r_out * B + b) * H + u0, dbuf, d, nu, tmp,
                      b * H + u0)
        zero_row(dh, hb, n)  # an LSTM's h reaches the previous step only through W_hh
        for k in range(G):
            copy_row(dgx, go + k * H, dbuf, d + k * nu, n)
    share = ((s % 2) * units + u) * B * Hp + b0 * Hp
    if count_valid(lengths, t, b0, b1) > 0:
        gemm(dbuf, blk, N, nb, WT, u * P * N * panel_width(WT), P, part, share)
    else:
        zero_row(part, share, Hp * nb)


@njit(parallel=True, **JIT)
def backward_kernel(T, B, H, rows, units, nu, P, reverse, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                    lengths, cs, gates, dh, dc, part, dbuf, tmp):
    if rows * units == 1:
        for s in range(T):
            _backward_block(0, B, 0, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx,
                            gs_t, gs_b, WT, lengths, cs, gates, dh, dc, part, dbuf, tmp)
    elif units == 1:
        for c in prange(rows):
            b0, b1, _ = block_of(c, rows, 1, B)
            for s in range(T):
                _backward_block(b0, b1, 0, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b,
                                dgx, gs_t, gs_b, WT, lengths, cs, gates, dh, dc, part, dbuf, tmp)
    else:
        for s in range(T):
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _backward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b,
                                dgx, gs_t, gs_b, WT, lengths, cs, gates, dh, dc, part, dbuf, tmp)
    for c in range(rows):
        b0, b1, _ = block_of(c, rows, 1, B)
        receive(dh, part, (T - 1) % 2, b0, b1, 0, H, B, H, units, P * panel_width(WT))


# ----------------------------------------------------------------------------------------------
# Python side


def forward(cell, x_proj, y, weights, b_hh, h0, c0, lengths, reverse, training):
    """One direction; weights a common.Packed; y (T, B, H) is filled. Returns
    (h_n, c_n, Saved or None)."""
    from . import Saved

    T, B, _ = x_proj.shape
    H = weights.array.shape[1]
    plan = weights.plan
    dtype = x_proj.dtype
    rows = T + 1 if training else 2
    hs = np.empty((rows, B, H), dtype)
    cs = np.empty((rows, B, H), dtype)
    first = first_slot(T, reverse, training)
    hs[first] = h0
    cs[first] = c0
    gates = gate_store(x_proj, training, G, H)
    xp, xs_t, xs_b = flat_input(x_proj)
    yf, ys_t, ys_b = flat(y)
    W, P = weights.forward(range(G))
    forward_kernel(T, B, H, plan.rows, plan.units, plan.size, P, reverse, training, xp, xs_t,
                   xs_b, yf, ys_t, ys_b, W, b_hh, lengths, hs.reshape(-1), cs.reshape(-1),
                   gates.reshape(-1), np.empty(B * plan.units * padded(G * plan.size, W), dtype))
    last = final_slot(T, reverse, training)
    saved = Saved(hs, cs, gates, None, lengths, reverse) if training else None
    return hs[last].copy(), cs[last].copy(), saved


def backward(cell, saved, W_hh, dy, dh_n, dc_n, d_gx, plan):
    """Fills d_gx (T, B, 4H); returns (hh_terms, dh0, dc0)."""
    T, B, H = dy.shape
    dtype = dy.dtype
    dh = np.array(dh_n, dtype, order="C")
    dc = np.array(dc_n, dtype, order="C")
    dyf, ds_t, ds_b = flat_input(dy)
    dg, gs_t, gs_b = flat(d_gx)
    WT, P = pack_backward(W_hh, range(G), plan)
    backward_kernel(T, B, H, plan.rows, plan.units, plan.size, P, saved.reverse, dyf, ds_t, ds_b,
                    dg, gs_t, gs_b, WT, saved.lengths, saved.cs.reshape(-1),
                    saved.gates.reshape(-1), dh.reshape(-1), dc.reshape(-1),
                    np.empty(2 * plan.units * B * padded(H, WT), dtype),
                    np.zeros(B * plan.units * G * plan.size, dtype), np.empty(B * H, dtype))
    h_in = saved.hs[1:] if saved.reverse else saved.hs[:-1]
    return [(d_gx, h_in)], dh, dc

"""Elman RNN time loops (equations in cells.py), tanh or relu.

A step of a block (rows b0..b1, unit chunk u; see common.Plan), forward: the product of the
rows' states with the chunk's rows of W_hh, then per valid row h' = act(that + x_proj + b_hh).
Invalid rows carry h and write y = 0. Training keeps only the states hs.

Backward, in reverse processing order: dh receives every chunk's share of d_pre @ W_hh from the
step processed before; per valid row d_pre = (dh + dy) * act'(h'), act' = 1 - h'^2 (tanh) or
[h' > 0] (relu), dh <- 0; then the chunk's share for the next step. Invalid rows pass dh on.
Flat layouts as in lstm.py, with one gate.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (JIT, U, add_into, add_to, block_of, copy_row, count_valid, final_slot,
                     first_slot, flat, flat_input, gemm, pack_backward, padded,
                     panel_width, receive, slots, tanh_of, zero_row)


@njit(**JIT)
def _activate(hs, h0, g, g0, n, relu):
    if relu:
        zero = g.dtype.type(0)
        for u in range(n):
            v = g[U(g0 + u)]
            hs[U(h0 + u)] = zero if v < zero else v  # NaN stays NaN
    else:
        tanh_of(hs, h0, g, g0, n)


@njit(**JIT)
def _forward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, training, relu, xp, xs_t, xs_b,
                   y, ys_t, ys_b, W, b_hh, lengths, hs, gbuf):
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
            zero_row(y, yo, n)
            continue
        g = blk + (b - b0) * Np
        add_into(gbuf, g, xp, t * xs_t + b * xs_b + u0, b_hh, u0, n)
        _activate(hs, i_out, gbuf, g, n, relu)
        copy_row(y, yo, hs, i_out, n)


@njit(parallel=True, **JIT)
def forward_kernel(T, B, H, rows, units, nu, P, reverse, training, relu, xp, xs_t, xs_b, y, ys_t,
                   ys_b, W, b_hh, lengths, hs, gbuf):
    if rows * units == 1:
        for s in range(T):
            _forward_block(0, B, 0, s, T, B, H, units, nu, P, reverse, training, relu, xp, xs_t,
                           xs_b, y, ys_t, ys_b, W, b_hh, lengths, hs, gbuf)
    elif units == 1:  # independent row groups: no barrier between steps
        for c in prange(rows):
            b0, b1, _ = block_of(c, rows, 1, B)
            for s in range(T):
                _forward_block(b0, b1, 0, s, T, B, H, units, nu, P, reverse, training, relu, xp,
                               xs_t, xs_b, y, ys_t, ys_b, W, b_hh, lengths, hs, gbuf)
    else:
        for s in range(T):
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _forward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, training, relu, xp,
                               xs_t, xs_b, y, ys_t, ys_b, W, b_hh, lengths, hs, gbuf)


@njit(**JIT)
def _backward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, relu, dy, ds_t, ds_b, dgx, gs_t,
                    gs_b, WT, lengths, hs, dh, part, dbuf):
    Hp = P * panel_width(WT)
    nb = b1 - b0
    u0 = u * nu
    n = min(nu, H - u0)
    t, _, r_out = slots(T - 1 - s, T, reverse, True)
    if s > 0:
        receive(dh, part, 1 - s % 2, b0, b1, u0, n, B, H, units, Hp)
    blk = b0 * units * nu + u * nb * nu
    one = dh.dtype.type(1)
    zero = dh.dtype.type(0)
    for b in range(b0, b1):
        go = t * gs_t + b * gs_b + u0
        d = blk + (b - b0) * nu
        if t >= lengths[b]:
            zero_row(dbuf, d, nu)
            zero_row(dgx, go, n)
            continue
        hb = b * H + u0
        add_to(dh, hb, dy, t * ds_t + b * ds_b + u0, n)
        ho = (r_out * B + b) * H + u0
        if relu:  # a product, not a select, so that a NaN in dh stays NaN
            for k in range(n):
                dbuf[U(d + k)] = dh[U(hb + k)] * (one if hs[U(ho + k)] > zero else zero)
        else:
            for k in range(n):
                v = hs[U(ho + k)]
                dbuf[U(d + k)] = dh[U(hb + k)] * (one - v * v)
        zero_row(dh, hb, n)  # h reaches the previous step only through W_hh
        copy_row(dgx, go, dbuf, d, n)
    share = (((s % 2) * units + u) * B + b0) * Hp
    if count_valid(lengths, t, b0, b1) > 0:
        gemm(dbuf, blk, nu, nb, WT, u * P * nu * panel_width(WT), P, part, share)
    else:
        zero_row(part, share, Hp * nb)


@njit(parallel=True, **JIT)
def backward_kernel(T, B, H, rows, units, nu, P, reverse, relu, dy, ds_t, ds_b, dgx, gs_t, gs_b,
                    WT, lengths, hs, dh, part, dbuf):
    if rows * units == 1:
        for s in range(T):
            _backward_block(0, B, 0, s, T, B, H, units, nu, P, reverse, relu, dy, ds_t, ds_b, dgx,
                            gs_t, gs_b, WT, lengths, hs, dh, part, dbuf)
    elif units == 1:
        for c in prange(rows):
            b0, b1, _ = block_of(c, rows, 1, B)
            for s in range(T):
                _backward_block(b0, b1, 0, s, T, B, H, units, nu, P, reverse, relu, dy, ds_t,
                                ds_b, dgx, gs_t, gs_b, WT, lengths, hs, dh, part, dbuf)
    else:
        for s in range(T):
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _backward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, relu, dy, ds_t,
                                ds_b, dgx, gs_t, gs_b, WT, lengths, hs, dh, part, dbuf)
    for c in range(rows):
        b0, b1, _ = block_of(c, rows, 1, B)
        receive(dh, part, (T - 1) % 2, b0, b1, 0, H, B, H, units, P * panel_width(WT))


# ----------------------------------------------------------------------------------------------
# Python side


def forward(cell, x_proj, y, weights, b_hh, h0, c0, lengths, reverse, training):
    """One direction; weights a common.Packed; y (T, B, H) is filled. Returns
    (h_n, None, Saved or None)."""
    from . import Saved

    T, B, _ = x_proj.shape
    H = weights.array.shape[1]
    plan = weights.plan
    dtype = x_proj.dtype
    hs = np.empty((T + 1 if training else 2, B, H), dtype)
    hs[first_slot(T, reverse, training)] = h0
    xp, xs_t, xs_b = flat_input(x_proj)
    yf, ys_t, ys_b = flat(y)
    W, P = weights.forward((0,))
    forward_kernel(T, B, H, plan.rows, plan.units, plan.size, P, reverse, training,
                   cell.nonlinearity == "relu", xp, xs_t, xs_b, yf, ys_t, ys_b, W, b_hh, lengths,
                   hs.reshape(-1), np.empty(B * plan.units * padded(plan.size, W), dtype))
    saved = Saved(hs, None, None, None, lengths, reverse) if training else None
    return hs[final_slot(T, reverse, training)].copy(), None, saved


def backward(cell, saved, W_hh, dy, dh_n, dc_n, d_gx, plan):
    """Fills d_gx (T, B, H); returns (hh_terms, dh0, None)."""
    T, B, H = dy.shape
    dtype = dy.dtype
    dh = np.array(dh_n, dtype, order="C")
    dyf, ds_t, ds_b = flat_input(dy)
    dg, gs_t, gs_b = flat(d_gx)
    WT, P = pack_backward(W_hh, (0,), plan)
    backward_kernel(T, B, H, plan.rows, plan.units, plan.size, P, saved.reverse,
                    cell.nonlinearity == "relu", dyf, ds_t, ds_b, dg, gs_t, gs_b, WT,
                    saved.lengths, saved.hs.reshape(-1), dh.reshape(-1),
                    np.empty(2 * plan.units * B * padded(H, WT), dtype),
                    np.zeros(B * plan.units * plan.size, dtype))
    h_in = saved.hs[1:] if saved.reverse else saved.hs[:-1]
    return [(d_gx, h_in)], dh, None

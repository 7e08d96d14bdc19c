"""LSTM time loops (equations in cells.py; gates i, f, g, o).

forward: per step, gates = h @ W_hh^T for the chunk's rows, then per valid row the
pre-activations (+ x_proj + b_hh), activations, c' = f*c + i*g, h' = o*tanh(c'), and the save of
i, f, g, o (training). Invalid rows carry h and c and write y = 0.

backward: per step in reverse processing order, per valid row with dh the gradient reaching h'

    do = dh*tanh(c'),  dc += dh*o*(1 - tanh(c')^2),
    d_gates = [dc*g*i(1-i), dc*c*f(1-f), dc*i*(1-g^2), do*o(1-o)],  dc <- dc*f

then dh <- d_gates @ W_hh for the chunk's rows. Invalid rows pass dh and dc on.

Flat layouts: a state row (slot, b) at (slot*B + b)*H; gate k of row b at b*4H + k*H in the step
buffers and at (t*B + b)*4H + k*H in the saved gates.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (JIT, U, add_into, add_to, copy_row, count_valid, final_slot, first_slot,
                     flat, flat_input, gemm_nt, rows_of, sigmoid_row, slots, tanh_of, tanh_row,
                     transpose, zero_row)

G = 4


@njit(**JIT)
def _cell_row(g, g0, H, cs, c_in, c_out, hs):
    """c' = f*c + i*g and h' = o*tanh(c'); activated gate k at g[g0 + k*H:], c at cs[c_in:],
    c' and h' go to cs[c_out:] and hs[c_out:]."""
    for u in range(H):
        cs[U(c_out + u)] = (g[U(g0 + H + u)] * cs[U(c_in + u)]
                            + g[U(g0 + u)] * g[U(g0 + 2 * H + u)])
    tanh_of(hs, c_out, cs, c_out, H)
    for u in range(H):
        hs[U(c_out + u)] *= g[U(g0 + 3 * H + u)]


@njit(**JIT)
def _forward_rows(b0, b1, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t, ys_b, W,
                  b_hh, lengths, hs, cs, gates, gbuf):
    """Rows b0..b1 through every step."""
    GH = G * H
    for s in range(T):
        t, r_in, r_out = slots(s, T, reverse, training)
        if count_valid(lengths, t, b0, b1) > 0:
            gemm_nt(hs, (r_in * B + b0) * H, W, 0, gbuf, b0 * GH, b1 - b0, H, GH, use_blas)
        for b in range(b0, b1):
            i_in = (r_in * B + b) * H
            i_out = (r_out * B + b) * H
            yo = t * ys_t + b * ys_b
            if t >= lengths[b]:
                copy_row(hs, i_out, hs, i_in, H)
                copy_row(cs, i_out, cs, i_in, H)
                zero_row(y, yo, H)
                continue
            g = b * GH
            add_into(gbuf, g, xp, t * xs_t + b * xs_b, b_hh, 0, GH)
            sigmoid_row(gbuf, g, 2 * H)
            tanh_row(gbuf, g + 2 * H, H)
            sigmoid_row(gbuf, g + 3 * H, H)
            _cell_row(gbuf, g, H, cs, i_in, i_out, hs)
            copy_row(y, yo, hs, i_out, H)
            if training:
                copy_row(gates, (t * B + b) * GH, gbuf, g, GH)


@njit(parallel=True, **JIT)
def forward_kernel(T, B, H, chunks, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t, ys_b, W,
                   b_hh, lengths, hs, cs, gates, gbuf):
    if chunks == 1:
        _forward_rows(0, B, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t, ys_b, W,
                      b_hh, lengths, hs, cs, gates, gbuf)
        return
    for c in prange(chunks):
        b0, b1 = rows_of(c, chunks, B)
        _forward_rows(b0, b1, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t, ys_b,
                      W, b_hh, lengths, hs, cs, gates, gbuf)


@njit(**JIT)
def _backward_row(gs, g0, H, dh, dc, h0, cs, c_in, c_out, d, d0, tmp, t0):
    """One valid row: gate k's activations at gs[g0 + k*H:], dh (reaching h') and dc at h0,
    c and c' at cs[c_in:], cs[c_out:]. Writes d_gates at d[d0 + k*H:], dc <- dc*f; tmp[t0:] is
    scratch."""
    one = dh.dtype.type(1)
    tanh_of(tmp, t0, cs, c_out, H)
    for u in range(H):
        o = gs[U(g0 + 3 * H + u)]
        d[U(d0 + 3 * H + u)] = dh[U(h0 + u)] * tmp[U(t0 + u)] * o * (one - o)
    for u in range(H):
        th = tmp[U(t0 + u)]
        dc[U(h0 + u)] += dh[U(h0 + u)] * gs[U(g0 + 3 * H + u)] * (one - th * th)
    for u in range(H):
        i = gs[U(g0 + u)]
        d[U(d0 + u)] = dc[U(h0 + u)] * gs[U(g0 + 2 * H + u)] * i * (one - i)
    for u in range(H):
        f = gs[U(g0 + H + u)]
        d[U(d0 + H + u)] = dc[U(h0 + u)] * cs[U(c_in + u)] * f * (one - f)
    for u in range(H):
        g = gs[U(g0 + 2 * H + u)]
        d[U(d0 + 2 * H + u)] = dc[U(h0 + u)] * gs[U(g0 + u)] * (one - g * g)
    for u in range(H):
        dc[U(h0 + u)] *= gs[U(g0 + H + u)]


@njit(**JIT)
def _backward_rows(b0, b1, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                   lengths, cs, gates, dh, dc, dbuf, hbuf):
    GH = G * H
    for s in range(T):
        t, r_in, r_out = slots(T - 1 - s, T, reverse, True)
        if count_valid(lengths, t, b0, b1) == 0:
            for b in range(b0, b1):
                zero_row(dgx, t * gs_t + b * gs_b, GH)
            continue
        for b in range(b0, b1):
            go = t * gs_t + b * gs_b
            if t >= lengths[b]:
                zero_row(dbuf, b * GH, GH)
                zero_row(dgx, go, GH)
                continue
            add_to(dh, b * H, dy, t * ds_t + b * ds_b, H)
            _backward_row(gates, (t * B + b) * GH, H, dh, dc, b * H, cs, (r_in * B + b) * H,
                          (r_out * B + b) * H, dbuf, b * GH, hbuf, b * H)
            copy_row(dgx, go, dbuf, b * GH, GH)
        gemm_nt(dbuf, b0 * GH, WT, 0, hbuf, b0 * H, b1 - b0, GH, H, use_blas)
        for b in range(b0, b1):
            if t < lengths[b]:  # an LSTM's h reaches the previous step only through W_hh
                copy_row(dh, b * H, hbuf, b * H, H)


@njit(parallel=True, **JIT)
def backward_kernel(T, B, H, chunks, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                    lengths, cs, gates, dh, dc, dbuf, hbuf):
    if chunks == 1:
        _backward_rows(0, B, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                       lengths, cs, gates, dh, dc, dbuf, hbuf)
        return
    for c in prange(chunks):
        b0, b1 = rows_of(c, chunks, B)
        _backward_rows(b0, b1, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                       lengths, cs, gates, dh, dc, dbuf, hbuf)


# ----------------------------------------------------------------------------------------------
# Python side


def forward(cell, x_proj, y, W_hh, b_hh, h0, c0, lengths, reverse, training, chunks, use_blas):
    """One direction; y (T, B, H) is filled. Returns (h_n, c_n, Saved or None)."""
    from . import Saved

    T, B, _ = x_proj.shape
    H = W_hh.shape[1]
    dtype = x_proj.dtype
    rows = T + 1 if training else 2
    hs = np.empty((rows, B, H), dtype)
    cs = np.empty((rows, B, H), dtype)
    first = first_slot(T, reverse, training)
    hs[first] = h0
    cs[first] = c0
    gates = np.empty((T, B, G * H) if training else (1, 1, 1), dtype)
    xp, xs_t, xs_b = flat_input(x_proj)
    yf, ys_t, ys_b = flat(y)
    gbuf = np.empty(B * G * H, dtype)
    forward_kernel(T, B, H, chunks, reverse, training, use_blas, xp, xs_t, xs_b, yf, ys_t, ys_b,
                   W_hh.reshape(-1), b_hh, lengths, hs.reshape(-1), cs.reshape(-1),
                   gates.reshape(-1), gbuf)
    last = final_slot(T, reverse, training)
    saved = Saved(hs, cs, gates, None, lengths, reverse) if training else None
    return hs[last].copy(), cs[last].copy(), saved


def backward(cell, saved, W_hh, dy, dh_n, dc_n, d_gx, chunks, use_blas):
    """Fills d_gx (T, B, 4H); returns (hh_terms, dh0, dc0)."""
    T, B, H = dy.shape
    dtype = dy.dtype
    dh = np.array(dh_n, dtype, order="C")
    dc = np.array(dc_n, dtype, order="C")
    dyf, ds_t, ds_b = flat_input(dy)
    dg, gs_t, gs_b = flat(d_gx)
    backward_kernel(T, B, H, chunks, saved.reverse, use_blas, dyf, ds_t, ds_b, dg, gs_t, gs_b,
                    transpose(W_hh.reshape(-1), G * H, H), saved.lengths, saved.cs.reshape(-1),
                    saved.gates.reshape(-1), dh.reshape(-1), dc.reshape(-1),
                    np.empty(B * G * H, dtype), np.empty(B * H, dtype))
    h_in = saved.hs[1:] if saved.reverse else saved.hs[:-1]
    return [(d_gx, h_in)], dh, dc

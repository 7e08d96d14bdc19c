"""Elman RNN time loops (equations in cells.py), tanh or relu.

forward: per step, h @ W_hh^T for the chunk's rows, then per valid row h' = act(that + x_proj +
b_hh). Invalid rows carry h and write y = 0. Training keeps only the states hs.

backward: per step in reverse processing order, per valid row d_pre = dh * act'(h'), with
act' = 1 - h'^2 (tanh) or [h' > 0] (relu); then dh <- d_pre @ W_hh for the chunk's rows.
Invalid rows pass dh on. Flat layouts as in lstm.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (JIT, U, add_into, add_to, copy_row, count_valid, final_slot, first_slot,
                     flat, flat_input, gemm_nt, rows_of, slots, tanh_of, transpose, zero_row)


@njit(**JIT)
def _activate(hs, h0, g, g0, H, relu):
    if relu:
        zero = g.dtype.type(0)
        for u in range(H):
            v = g[U(g0 + u)]
            hs[U(h0 + u)] = zero if v < zero else v  # NaN stays NaN
    else:
        tanh_of(hs, h0, g, g0, H)


@njit(**JIT)
def _forward_rows(b0, b1, T, B, H, reverse, training, relu, use_blas, xp, xs_t, xs_b, y, ys_t,
                  ys_b, W, b_hh, lengths, hs, gbuf):
    for s in range(T):
        t, r_in, r_out = slots(s, T, reverse, training)
        if count_valid(lengths, t, b0, b1) > 0:
            gemm_nt(hs, (r_in * B + b0) * H, W, 0, gbuf, b0 * H, b1 - b0, H, H, use_blas)
        for b in range(b0, b1):
            i_in = (r_in * B + b) * H
            i_out = (r_out * B + b) * H
            yo = t * ys_t + b * ys_b
            if t >= lengths[b]:
                copy_row(hs, i_out, hs, i_in, H)
                zero_row(y, yo, H)
                continue
            add_into(gbuf, b * H, xp, t * xs_t + b * xs_b, b_hh, 0, H)
            _activate(hs, i_out, gbuf, b * H, H, relu)
            copy_row(y, yo, hs, i_out, H)


@njit(parallel=True, **JIT)
def forward_kernel(T, B, H, chunks, reverse, training, relu, use_blas, xp, xs_t, xs_b, y, ys_t,
                   ys_b, W, b_hh, lengths, hs, gbuf):
    if chunks == 1:
        _forward_rows(0, B, T, B, H, reverse, training, relu, use_blas, xp, xs_t, xs_b, y, ys_t,
                      ys_b, W, b_hh, lengths, hs, gbuf)
        return
    for c in prange(chunks):
        b0, b1 = rows_of(c, chunks, B)
        _forward_rows(b0, b1, T, B, H, reverse, training, relu, use_blas, xp, xs_t, xs_b, y, ys_t,
                      ys_b, W, b_hh, lengths, hs, gbuf)


@njit(**JIT)
def _backward_rows(b0, b1, T, B, H, reverse, relu, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                   lengths, hs, dh, dbuf, hbuf):
    one = dh.dtype.type(1)
    zero = dh.dtype.type(0)
    for s in range(T):
        t, _, r_out = slots(T - 1 - s, T, reverse, True)
        if count_valid(lengths, t, b0, b1) == 0:
            for b in range(b0, b1):
                zero_row(dgx, t * gs_t + b * gs_b, H)
            continue
        for b in range(b0, b1):
            go = t * gs_t + b * gs_b
            d = b * H
            if t >= lengths[b]:
                zero_row(dbuf, d, H)
                zero_row(dgx, go, H)
                continue
            add_to(dh, d, dy, t * ds_t + b * ds_b, H)
            ho = (r_out * B + b) * H
            if relu:
                for u in range(H):
                    dbuf[U(d + u)] = dh[U(d + u)] if hs[U(ho + u)] > zero else zero
            else:
                for u in range(H):
                    v = hs[U(ho + u)]
                    dbuf[U(d + u)] = dh[U(d + u)] * (one - v * v)
            copy_row(dgx, go, dbuf, d, H)
        gemm_nt(dbuf, b0 * H, WT, 0, hbuf, b0 * H, b1 - b0, H, H, use_blas)
        for b in range(b0, b1):
            if t < lengths[b]:  # h reaches the previous step only through W_hh
                copy_row(dh, b * H, hbuf, b * H, H)


@njit(parallel=True, **JIT)
def backward_kernel(T, B, H, chunks, reverse, relu, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                    lengths, hs, dh, dbuf, hbuf):
    if chunks == 1:
        _backward_rows(0, B, T, B, H, reverse, relu, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b,
                       WT, lengths, hs, dh, dbuf, hbuf)
        return
    for c in prange(chunks):
        b0, b1 = rows_of(c, chunks, B)
        _backward_rows(b0, b1, T, B, H, reverse, relu, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b,
                       WT, lengths, hs, dh, dbuf, hbuf)


# ----------------------------------------------------------------------------------------------
# Python side


def forward(cell, x_proj, y, W_hh, b_hh, h0, c0, lengths, reverse, training, chunks, use_blas):
    """One direction; y (T, B, H) is filled. Returns (h_n, None, Saved or None)."""
    from . import Saved

    T, B, _ = x_proj.shape
    H = W_hh.shape[1]
    hs = np.empty((T + 1 if training else 2, B, H), x_proj.dtype)
    hs[first_slot(T, reverse, training)] = h0
    xp, xs_t, xs_b = flat_input(x_proj)
    yf, ys_t, ys_b = flat(y)
    forward_kernel(T, B, H, chunks, reverse, training, cell.nonlinearity == "relu", use_blas, xp,
                   xs_t, xs_b, yf, ys_t, ys_b, W_hh.reshape(-1), b_hh, lengths, hs.reshape(-1),
                   np.empty(B * H, x_proj.dtype))
    saved = Saved(hs, None, None, None, lengths, reverse) if training else None
    return hs[final_slot(T, reverse, training)].copy(), None, saved


def backward(cell, saved, W_hh, dy, dh_n, dc_n, d_gx, chunks, use_blas):
    """Fills d_gx (T, B, H); returns (hh_terms, dh0, None)."""
    T, B, H = dy.shape
    dh = np.array(dh_n, dy.dtype, order="C")
    dyf, ds_t, ds_b = flat_input(dy)
    dg, gs_t, gs_b = flat(d_gx)
    backward_kernel(T, B, H, chunks, saved.reverse, cell.nonlinearity == "relu", use_blas, dyf,
                    ds_t, ds_b, dg, gs_t, gs_b, transpose(W_hh.reshape(-1), H, H), saved.lengths,
                    saved.hs.reshape(-1), dh.reshape(-1), np.empty(B * H, dy.dtype),
                    np.empty(B * H, dy.dtype))
    h_in = saved.hs[1:] if saved.reverse else saved.hs[:-1]
    return [(d_gx, h_in)], dh, None

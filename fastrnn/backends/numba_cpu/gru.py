"""GRU time loops (equations in cells.py; gates r, z, n), both forms.

linear_before_reset=True, per step: gh = h @ W_hh^T for the chunk's rows;
r, z = sigmoid(gx + gh + b_hh); hn = gh_n + b_hn; n = tanh(gx_n + r*hn); h' = n + z*(h - n).
Training keeps r, z, n and hn. Backward, per valid row, with dh reaching h':

    dn = dh*(1-z)*(1-n^2),  dz = dh*(h-n)*z*(1-z),  dr = dn*hn*r*(1-r)
    d_gx = [dr, dz, dn],  d_gh = [dr, dz, dn*r],  dh_prev = dh*z + d_gh @ W_hh

linear_before_reset=False (textbook) needs r of every unit before the n product, so each step
makes two products: r, z from h @ W_rz^T, then n = tanh(gx_n + (r*h) @ W_hn^T + b_hn) and h'.
Backward: dn, dz, then d_rh = dn @ W_hn, dr = d_rh*h*r*(1-r), dh_prev = dh*z + d_rh*r +
[dr, dz] @ W_hh[:2H]. Training keeps r, z, n.

Invalid rows carry h, write y = 0 and pass dh on. Arrays are flat, addressed as in lstm.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (JIT, U, add_into, add_to, copy_row, count_valid, final_slot, first_slot,
                     flat, flat_input, gemm_nt, rows_of, sigmoid_row, slots, tanh, tanh_row,
                     transpose, zero_row)

G = 3


@njit(**JIT)
def _update(hs, i_in, i_out, g, n0, z0, H):
    """h' = n + z*(h - n); n at g[n0:], z at g[z0:]."""
    for u in range(H):
        v = g[U(n0 + u)]
        hs[U(i_out + u)] = v + g[U(z0 + u)] * (hs[U(i_in + u)] - v)


@njit(**JIT)
def _carry(hs, i_in, i_out, y, yo, H):
    copy_row(hs, i_out, hs, i_in, H)
    zero_row(y, yo, H)


@njit(**JIT)
def _dn_dz(dh, h0, gs, g0, H, hs, i_in, dn, n0, dz, z0):
    """dn = dh*(1-z)*(1-n^2), dz = dh*(h-n)*z*(1-z), then dh <- dh*z (the direct path);
    r, z, n at gs[g0:], gs[g0 + H:], gs[g0 + 2H:]."""
    one = dh.dtype.type(1)
    for u in range(H):
        z = gs[U(g0 + H + u)]
        v = gs[U(g0 + 2 * H + u)]
        dn[U(n0 + u)] = dh[U(h0 + u)] * (one - z) * (one - v * v)
    for u in range(H):
        z = gs[U(g0 + H + u)]
        dz[U(z0 + u)] = dh[U(h0 + u)] * (hs[U(i_in + u)] - gs[U(g0 + 2 * H + u)]) * z * (one - z)
    for u in range(H):
        dh[U(h0 + u)] *= gs[U(g0 + H + u)]


@njit(**JIT)
def _add_valid(dh, hbuf, lengths, t, b0, b1, H):
    """dh += hbuf on the rows whose step t is valid."""
    for b in range(b0, b1):
        if t < lengths[b]:
            add_to(dh, b * H, hbuf, b * H, H)


# ----------------------------------------------------------------------------------------------
# linear_before_reset=True


@njit(**JIT)
def _forward_rows(b0, b1, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t, ys_b, W,
                  b_hh, lengths, hs, gates, hn, gbuf):
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
                _carry(hs, i_in, i_out, y, yo, H)
                continue
            g = b * GH
            xo = t * xs_t + b * xs_b
            add_into(gbuf, g, xp, xo, b_hh, 0, 2 * H)
            add_to(gbuf, g + 2 * H, b_hh, 2 * H, H)  # hn = W_hn h + b_hn
            if training:
                copy_row(hn, (t * B + b) * H, gbuf, g + 2 * H, H)
            sigmoid_row(gbuf, g, 2 * H)
            for u in range(H):
                gbuf[U(g + 2 * H + u)] = tanh(xp[U(xo + 2 * H + u)]
                                              + gbuf[U(g + u)] * gbuf[U(g + 2 * H + u)])
            _update(hs, i_in, i_out, gbuf, g + 2 * H, g + H, H)
            copy_row(y, yo, hs, i_out, H)
            if training:
                copy_row(gates, (t * B + b) * GH, gbuf, g, GH)


@njit(parallel=True, **JIT)
def forward_kernel(T, B, H, chunks, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t, ys_b, W,
                   b_hh, lengths, hs, gates, hn, gbuf):
    if chunks == 1:
        _forward_rows(0, B, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t, ys_b, W,
                      b_hh, lengths, hs, gates, hn, gbuf)
        return
    for c in prange(chunks):
        b0, b1 = rows_of(c, chunks, B)
        _forward_rows(b0, b1, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t, ys_b,
                      W, b_hh, lengths, hs, gates, hn, gbuf)


@njit(**JIT)
def _backward_rows(b0, b1, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                   lengths, hs, gates, hn, d_gh, dh, dn, hbuf):
    GH = G * H
    one = dh.dtype.type(1)
    for s in range(T):
        t, r_in, _ = slots(T - 1 - s, T, reverse, True)
        valid = count_valid(lengths, t, b0, b1)
        for b in range(b0, b1):
            go = t * gs_t + b * gs_b
            gh = (t * B + b) * GH  # gates, d_gh
            if t >= lengths[b]:
                zero_row(dgx, go, GH)
                zero_row(d_gh, gh, GH)
                continue
            add_to(dh, b * H, dy, t * ds_t + b * ds_b, H)
            _dn_dz(dh, b * H, gates, gh, H, hs, (r_in * B + b) * H, dn, b * H, d_gh, gh + H)
            ho = (t * B + b) * H
            for u in range(H):
                r = gates[U(gh + u)]
                d_gh[U(gh + u)] = dn[U(b * H + u)] * hn[U(ho + u)] * r * (one - r)
            for u in range(H):
                d_gh[U(gh + 2 * H + u)] = dn[U(b * H + u)] * gates[U(gh + u)]
            copy_row(dgx, go, d_gh, gh, 2 * H)
            copy_row(dgx, go + 2 * H, dn, b * H, H)
        if valid > 0:
            gemm_nt(d_gh, (t * B + b0) * GH, WT, 0, hbuf, b0 * H, b1 - b0, GH, H, use_blas)
            _add_valid(dh, hbuf, lengths, t, b0, b1, H)


@njit(parallel=True, **JIT)
def backward_kernel(T, B, H, chunks, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                    lengths, hs, gates, hn, d_gh, dh, dn, hbuf):
    if chunks == 1:
        _backward_rows(0, B, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                       lengths, hs, gates, hn, d_gh, dh, dn, hbuf)
        return
    for c in prange(chunks):
        b0, b1 = rows_of(c, chunks, B)
        _backward_rows(b0, b1, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                       lengths, hs, gates, hn, d_gh, dh, dn, hbuf)


# ----------------------------------------------------------------------------------------------
# linear_before_reset=False (textbook)


@njit(**JIT)
def _textbook_forward_rows(b0, b1, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t,
                           ys_b, W, b_hh, lengths, hs, gates, grz, gn, rh):
    nb = b1 - b0
    for s in range(T):
        t, r_in, r_out = slots(s, T, reverse, training)
        valid = count_valid(lengths, t, b0, b1)
        if valid > 0:
            gemm_nt(hs, (r_in * B + b0) * H, W, 0, grz, b0 * 2 * H, nb, H, 2 * H, use_blas)
        for b in range(b0, b1):
            if t >= lengths[b]:
                zero_row(rh, b * H, H)
                continue
            g = b * 2 * H
            add_into(grz, g, xp, t * xs_t + b * xs_b, b_hh, 0, 2 * H)
            sigmoid_row(grz, g, 2 * H)
            i_in = (r_in * B + b) * H
            for u in range(H):
                rh[U(b * H + u)] = grz[U(g + u)] * hs[U(i_in + u)]
        if valid > 0:
            gemm_nt(rh, b0 * H, W, 2 * H * H, gn, b0 * H, nb, H, H, use_blas)
        for b in range(b0, b1):
            i_in = (r_in * B + b) * H
            i_out = (r_out * B + b) * H
            yo = t * ys_t + b * ys_b
            if t >= lengths[b]:
                _carry(hs, i_in, i_out, y, yo, H)
                continue
            add_into(gn, b * H, xp, t * xs_t + b * xs_b + 2 * H, b_hh, 2 * H, H)
            tanh_row(gn, b * H, H)
            g = b * 2 * H
            for u in range(H):
                v = gn[U(b * H + u)]
                hs[U(i_out + u)] = v + grz[U(g + H + u)] * (hs[U(i_in + u)] - v)
            copy_row(y, yo, hs, i_out, H)
            if training:
                go = (t * B + b) * G * H
                copy_row(gates, go, grz, g, 2 * H)
                copy_row(gates, go + 2 * H, gn, b * H, H)


@njit(parallel=True, **JIT)
def textbook_forward_kernel(T, B, H, chunks, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t,
                            ys_b, W, b_hh, lengths, hs, gates, grz, gn, rh):
    if chunks == 1:
        _textbook_forward_rows(0, B, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y, ys_t,
                               ys_b, W, b_hh, lengths, hs, gates, grz, gn, rh)
        return
    for c in prange(chunks):
        b0, b1 = rows_of(c, chunks, B)
        _textbook_forward_rows(b0, b1, T, B, H, reverse, training, use_blas, xp, xs_t, xs_b, y,
                               ys_t, ys_b, W, b_hh, lengths, hs, gates, grz, gn, rh)


@njit(**JIT)
def _textbook_backward_rows(b0, b1, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b,
                            WT_rz, WT_n, lengths, hs, gates, rh, dh, drz, dn, q, hbuf):
    GH = G * H
    nb = b1 - b0
    one = dh.dtype.type(1)
    for s in range(T):
        t, r_in, _ = slots(T - 1 - s, T, reverse, True)
        valid = count_valid(lengths, t, b0, b1)
        for b in range(b0, b1):
            go = t * gs_t + b * gs_b
            if t >= lengths[b]:
                zero_row(dn, b * H, H)
                zero_row(drz, b * 2 * H, 2 * H)
                zero_row(dgx, go, GH)
                zero_row(rh, (t * B + b) * H, H)
                continue
            add_to(dh, b * H, dy, t * ds_t + b * ds_b, H)
            _dn_dz(dh, b * H, gates, (t * B + b) * GH, H, hs, (r_in * B + b) * H, dn, b * H, drz,
                   b * 2 * H + H)
            copy_row(dgx, go + H, drz, b * 2 * H + H, H)
            copy_row(dgx, go + 2 * H, dn, b * H, H)
        if valid == 0:
            continue
        gemm_nt(dn, b0 * H, WT_n, 0, q, b0 * H, nb, H, H, use_blas)  # d_rh = dn @ W_hn
        for b in range(b0, b1):
            if t >= lengths[b]:
                continue
            gr = (t * B + b) * GH
            i_in = (r_in * B + b) * H
            d = b * H
            for u in range(H):
                r = gates[U(gr + u)]
                drz[U(b * 2 * H + u)] = q[U(d + u)] * hs[U(i_in + u)] * r * (one - r)
            for u in range(H):
                dh[U(d + u)] += q[U(d + u)] * gates[U(gr + u)]
            for u in range(H):
                rh[U((t * B + b) * H + u)] = gates[U(gr + u)] * hs[U(i_in + u)]
            copy_row(dgx, t * gs_t + b * gs_b, drz, b * 2 * H, H)
        gemm_nt(drz, b0 * 2 * H, WT_rz, 0, hbuf, b0 * H, nb, 2 * H, H, use_blas)
        _add_valid(dh, hbuf, lengths, t, b0, b1, H)


@njit(parallel=True, **JIT)
def textbook_backward_kernel(T, B, H, chunks, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b,
                             WT_rz, WT_n, lengths, hs, gates, rh, dh, drz, dn, q, hbuf):
    if chunks == 1:
        _textbook_backward_rows(0, B, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t, gs_b,
                                WT_rz, WT_n, lengths, hs, gates, rh, dh, drz, dn, q, hbuf)
        return
    for c in prange(chunks):
        b0, b1 = rows_of(c, chunks, B)
        _textbook_backward_rows(b0, b1, T, B, H, reverse, use_blas, dy, ds_t, ds_b, dgx, gs_t,
                                gs_b, WT_rz, WT_n, lengths, hs, gates, rh, dh, drz, dn, q, hbuf)


# ----------------------------------------------------------------------------------------------
# Python side


def forward(cell, x_proj, y, W_hh, b_hh, h0, c0, lengths, reverse, training, chunks, use_blas):
    """One direction; y (T, B, H) is filled. Returns (h_n, None, Saved or None)."""
    from . import Saved

    T, B, _ = x_proj.shape
    H = W_hh.shape[1]
    dtype = x_proj.dtype
    hs = np.empty((T + 1 if training else 2, B, H), dtype)
    hs[first_slot(T, reverse, training)] = h0
    gates = np.empty((T, B, G * H) if training else (1, 1, 1), dtype)
    xp, xs_t, xs_b = flat_input(x_proj)
    yf, ys_t, ys_b = flat(y)
    args = (T, B, H, chunks, reverse, training, use_blas, xp, xs_t, xs_b, yf, ys_t, ys_b,
            W_hh.reshape(-1), b_hh, lengths, hs.reshape(-1), gates.reshape(-1))
    if cell.linear_before_reset:
        hn = np.empty((T, B, H) if training else (1, 1, 1), dtype)
        forward_kernel(*args, hn.reshape(-1), np.empty(B * G * H, dtype))
    else:
        hn = None
        textbook_forward_kernel(*args, np.empty(B * 2 * H, dtype), np.empty(B * H, dtype),
                                np.empty(B * H, dtype))
    saved = Saved(hs, None, gates, hn, lengths, reverse) if training else None
    return hs[final_slot(T, reverse, training)].copy(), None, saved


def backward(cell, saved, W_hh, dy, dh_n, dc_n, d_gx, chunks, use_blas):
    """Fills d_gx (T, B, 3H); returns (hh_terms, dh0, None)."""
    T, B, H = dy.shape
    dtype = dy.dtype
    dh = np.array(dh_n, dtype, order="C")
    dyf, ds_t, ds_b = flat_input(dy)
    dg, gs_t, gs_b = flat(d_gx)
    h_in = saved.hs[1:] if saved.reverse else saved.hs[:-1]
    args = (T, B, H, chunks, saved.reverse, use_blas, dyf, ds_t, ds_b, dg, gs_t, gs_b)
    W = W_hh.reshape(-1)
    if cell.linear_before_reset:
        d_gh = np.empty((T, B, G * H), dtype)
        backward_kernel(*args, transpose(W, G * H, H), saved.lengths, saved.hs.reshape(-1),
                        saved.gates.reshape(-1), saved.hn.reshape(-1), d_gh.reshape(-1),
                        dh.reshape(-1), np.empty(B * H, dtype), np.empty(B * H, dtype))
        return [(d_gh, h_in)], dh, None
    rh = np.empty((T, B, H), dtype)
    textbook_backward_kernel(*args, transpose(W[:2 * H * H], 2 * H, H),
                             transpose(W[2 * H * H:], H, H), saved.lengths, saved.hs.reshape(-1),
                             saved.gates.reshape(-1), rh.reshape(-1), dh.reshape(-1),
                             np.empty(B * 2 * H, dtype), np.empty(B * H, dtype),
                             np.empty(B * H, dtype), np.empty(B * H, dtype))
    return [(d_gx[..., :2 * H], h_in), (d_gx[..., 2 * H:], rh)], dh, None

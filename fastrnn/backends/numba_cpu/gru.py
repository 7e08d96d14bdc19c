"""GRU time loops (equations in cells.py; gates r, z, n), both forms.

A step of a block (rows b0..b1, unit chunk u; see common.Plan). linear_before_reset=True:
gh = the rows' states times the chunk's rows of W_hh;
r, z = sigmoid(gx + gh + b_hh); hn = gh_n + b_hn; n = tanh(gx_n + r*hn); h' = n + z*(h - n).
Training keeps r, z, n and hn. Backward, per valid row, with dh reaching h':

    dn = dh*(1-z)*(1-n^2),  dz = dh*(h-n)*z*(1-z),  dr = dn*hn*r*(1-r)
    d_gx = [dr, dz, dn],  d_gh = [dr, dz, dn*r],  dh_prev = dh*z + d_gh @ W_hh

where the product reaches dh_prev as every chunk's share, received at the next step.

linear_before_reset=False (textbook) needs r of every unit before the n product, so a step has
two phases (with several unit chunks, two parallel regions): r, z from h @ W_rz^T and r*h; then
n = tanh(gx_n + (r*h) @ W_hn^T + b_hn) and h'. Backward: dn, dz and the shares of
d_rh = dn @ W_hn; then dr = d_rh*h*r*(1-r), dh_prev = dh*z + d_rh*r + [dr, dz] @ W_hh[:2H].
Training keeps r, z, n.

Invalid rows carry h, write y = 0 and pass dh on. Flat layouts as in lstm.py, with 3 gates
(2 and 1 in the textbook phases).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import (JIT, U, add_into, add_to, block_of, copy_row, count_valid, final_slot,
                     first_slot, flat, flat_input, gate_store, gemm, pack_backward, padded,
                     panel_width, receive, sigmoid_row, slots, tanh, tanh_row, zero_row)

G = 3


@njit(**JIT)
def _update(hs, i_in, i_out, g, n0, z0, n):
    """h' = n + z*(h - n); n at g[n0:], z at g[z0:]."""
    for u in range(n):
        v = g[U(n0 + u)]
        hs[U(i_out + u)] = v + g[U(z0 + u)] * (hs[U(i_in + u)] - v)


@njit(**JIT)
def _carry(hs, i_in, i_out, y, yo, n):
    copy_row(hs, i_out, hs, i_in, n)
    zero_row(y, yo, n)


@njit(**JIT)
def _save_gates(gates, go, H, g, r0, z0, n0, n):
    copy_row(gates, go, g, r0, n)
    copy_row(gates, go + H, g, z0, n)
    copy_row(gates, go + 2 * H, g, n0, n)


@njit(**JIT)
def _dn_dz(dh, h0, gs, g0, H, hs, i_in, dn, n0, dz, z0, n):
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


@njit(**JIT)
def _share(d, d0, K, WT, u, P, part, share, b0, b1, lengths, t):
    """The block's share of d @ W_hh: d's rows b0..b1 (K values each, at d0) times chunk u's
    panels; zeros when no row of the block is valid at step t."""
    Hp = P * panel_width(WT)
    if count_valid(lengths, t, b0, b1) > 0:
        gemm(d, d0, K, b1 - b0, WT, u * P * K * panel_width(WT), P, part, share)
    else:
        zero_row(part, share, Hp * (b1 - b0))


# ----------------------------------------------------------------------------------------------
# linear_before_reset=True


@njit(**JIT)
def _forward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, training, xp, xs_t, xs_b, y, ys_t,
                   ys_b, W, b_hh, lengths, hs, gates, hn, gbuf):
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
            _carry(hs, i_in, i_out, y, yo, n)
            continue
        g = blk + (b - b0) * Np
        xo = t * xs_t + b * xs_b + u0
        add_into(gbuf, g, xp, xo, b_hh, u0, n)
        add_into(gbuf, g + nu, xp, xo + H, b_hh, H + u0, n)
        add_to(gbuf, g + 2 * nu, b_hh, 2 * H + u0, n)  # hn = W_hn h + b_hn
        if training:
            copy_row(hn, (t * B + b) * H + u0, gbuf, g + 2 * nu, n)
        sigmoid_row(gbuf, g, 2 * nu)
        for k in range(n):
            gbuf[U(g + 2 * nu + k)] = tanh(xp[U(xo + 2 * H + k)]
                                           + gbuf[U(g + k)] * gbuf[U(g + 2 * nu + k)])
        _update(hs, i_in, i_out, gbuf, g + 2 * nu, g + nu, n)
        copy_row(y, yo, hs, i_out, n)
        if training:
            _save_gates(gates, (t * B + b) * G * H + u0, H, gbuf, g, g + nu, g + 2 * nu, n)


@njit(parallel=True, **JIT)
def forward_kernel(T, B, H, rows, units, nu, P, reverse, training, xp, xs_t, xs_b, y, ys_t, ys_b,
                   W, b_hh, lengths, hs, gates, hn, gbuf):
    if rows * units == 1:
        for s in range(T):
            _forward_block(0, B, 0, s, T, B, H, units, nu, P, reverse, training, xp, xs_t, xs_b,
                           y, ys_t, ys_b, W, b_hh, lengths, hs, gates, hn, gbuf)
    elif units == 1:  # independent row groups: no barrier between steps
        for c in prange(rows):
            b0, b1, _ = block_of(c, rows, 1, B)
            for s in range(T):
                _forward_block(b0, b1, 0, s, T, B, H, units, nu, P, reverse, training, xp, xs_t,
                               xs_b, y, ys_t, ys_b, W, b_hh, lengths, hs, gates, hn, gbuf)
    else:
        for s in range(T):
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _forward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, training, xp, xs_t,
                               xs_b, y, ys_t, ys_b, W, b_hh, lengths, hs, gates, hn, gbuf)


@njit(**JIT)
def _backward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx, gs_t, gs_b,
                    WT, lengths, hs, gates, hn, d_gh, dh, part, dbuf, tmp):
    N = G * nu
    Hp = P * panel_width(WT)
    nb = b1 - b0
    u0 = u * nu
    n = min(nu, H - u0)
    t, r_in, _ = slots(T - 1 - s, T, reverse, True)
    if s > 0:
        receive(dh, part, 1 - s % 2, b0, b1, u0, n, B, H, units, Hp)
    blk = b0 * units * N + u * nb * N
    one = dh.dtype.type(1)
    for b in range(b0, b1):
        go = t * gs_t + b * gs_b + u0
        gh = (t * B + b) * G * H + u0  # gates, d_gh
        d = blk + (b - b0) * N
        if t >= lengths[b]:
            zero_row(dbuf, d, N)
            for k in range(G):
                zero_row(dgx, go + k * H, n)
                zero_row(d_gh, gh + k * H, n)
            continue
        hb = b * H + u0
        add_to(dh, hb, dy, t * ds_t + b * ds_b + u0, n)
        _dn_dz(dh, hb, gates, gh, H, hs, (r_in * B + b) * H + u0, tmp, hb, dbuf, d + nu, n)
        ho = (t * B + b) * H + u0
        for k in range(n):
            r = gates[U(gh + k)]
            dbuf[U(d + k)] = tmp[U(hb + k)] * hn[U(ho + k)] * r * (one - r)
        for k in range(n):
            dbuf[U(d + 2 * nu + k)] = tmp[U(hb + k)] * gates[U(gh + k)]
        copy_row(dgx, go, dbuf, d, n)
        copy_row(dgx, go + H, dbuf, d + nu, n)
        copy_row(dgx, go + 2 * H, tmp, hb, n)
        _save_gates(d_gh, gh, H, dbuf, d, d + nu, d + 2 * nu, n)
    _share(dbuf, blk, N, WT, u, P, part, (((s % 2) * units + u) * B + b0) * Hp, b0, b1, lengths, t)


@njit(parallel=True, **JIT)
def backward_kernel(T, B, H, rows, units, nu, P, reverse, dy, ds_t, ds_b, dgx, gs_t, gs_b, WT,
                    lengths, hs, gates, hn, d_gh, dh, part, dbuf, tmp):
    if rows * units == 1:
        for s in range(T):
            _backward_block(0, B, 0, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx, gs_t,
                            gs_b, WT, lengths, hs, gates, hn, d_gh, dh, part, dbuf, tmp)
    elif units == 1:
        for c in prange(rows):
            b0, b1, _ = block_of(c, rows, 1, B)
            for s in range(T):
                _backward_block(b0, b1, 0, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx,
                                gs_t, gs_b, WT, lengths, hs, gates, hn, d_gh, dh, part, dbuf, tmp)
    else:
        for s in range(T):
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _backward_block(b0, b1, u, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx,
                                gs_t, gs_b, WT, lengths, hs, gates, hn, d_gh, dh, part, dbuf, tmp)
    for c in range(rows):
        b0, b1, _ = block_of(c, rows, 1, B)
        receive(dh, part, (T - 1) % 2, b0, b1, 0, H, B, H, units, P * panel_width(WT))


# ----------------------------------------------------------------------------------------------
# linear_before_reset=False (textbook)


@njit(**JIT)
def _textbook_rz(b0, b1, u, s, T, B, H, units, nu, P, reverse, training, xp, xs_t, xs_b, Wrz,
                 b_hh, lengths, hs, grz, rh):
    """r, z of the block and r*h, which the n product of every chunk reads."""
    Np = P * panel_width(Wrz)
    nb = b1 - b0
    u0 = u * nu
    n = min(nu, H - u0)
    t, r_in, _ = slots(s, T, reverse, training)
    blk = b0 * units * Np + u * nb * Np
    if count_valid(lengths, t, b0, b1) > 0:
        gemm(hs, (r_in * B + b0) * H, H, nb, Wrz, u * P * H * panel_width(Wrz), P, grz, blk)
    for b in range(b0, b1):
        hb = b * H + u0
        if t >= lengths[b]:
            zero_row(rh, hb, n)
            continue
        g = blk + (b - b0) * Np
        xo = t * xs_t + b * xs_b + u0
        add_into(grz, g, xp, xo, b_hh, u0, n)
        add_into(grz, g + nu, xp, xo + H, b_hh, H + u0, n)
        sigmoid_row(grz, g, 2 * nu)
        i_in = (r_in * B + b) * H + u0
        for k in range(n):
            rh[U(hb + k)] = grz[U(g + k)] * hs[U(i_in + k)]


@njit(**JIT)
def _textbook_n(b0, b1, u, s, T, B, H, units, nu, Prz, Pn, reverse, training, xp, xs_t, xs_b, y,
                ys_t, ys_b, Wn, b_hh, lengths, hs, gates, grz, gn, rh):
    NR = panel_width(Wn)
    nb = b1 - b0
    u0 = u * nu
    n = min(nu, H - u0)
    t, r_in, r_out = slots(s, T, reverse, training)
    blk = b0 * units * Pn * NR + u * nb * Pn * NR
    brz = b0 * units * Prz * NR + u * nb * Prz * NR
    if count_valid(lengths, t, b0, b1) > 0:
        gemm(rh, b0 * H, H, nb, Wn, u * Pn * H * NR, Pn, gn, blk)
    for b in range(b0, b1):
        i_in = (r_in * B + b) * H + u0
        i_out = (r_out * B + b) * H + u0
        yo = t * ys_t + b * ys_b + u0
        if t >= lengths[b]:
            _carry(hs, i_in, i_out, y, yo, n)
            continue
        g = blk + (b - b0) * Pn * NR
        add_into(gn, g, xp, t * xs_t + b * xs_b + 2 * H + u0, b_hh, 2 * H + u0, n)
        tanh_row(gn, g, n)
        rz = brz + (b - b0) * Prz * NR
        for k in range(n):
            v = gn[U(g + k)]
            hs[U(i_out + k)] = v + grz[U(rz + nu + k)] * (hs[U(i_in + k)] - v)
        copy_row(y, yo, hs, i_out, n)
        if training:
            go = (t * B + b) * G * H + u0
            copy_row(gates, go, grz, rz, n)
            copy_row(gates, go + H, grz, rz + nu, n)
            copy_row(gates, go + 2 * H, gn, g, n)


@njit(parallel=True, **JIT)
def textbook_forward_kernel(T, B, H, rows, units, nu, Prz, Pn, reverse, training, xp, xs_t, xs_b,
                            y, ys_t, ys_b, Wrz, Wn, b_hh, lengths, hs, gates, grz, gn, rh):
    if units == 1:
        for c in prange(rows):
            b0, b1, _ = block_of(c, rows, 1, B)
            for s in range(T):
                _textbook_rz(b0, b1, 0, s, T, B, H, units, nu, Prz, reverse, training, xp, xs_t,
                             xs_b, Wrz, b_hh, lengths, hs, grz, rh)
                _textbook_n(b0, b1, 0, s, T, B, H, units, nu, Prz, Pn, reverse, training, xp,
                            xs_t, xs_b, y, ys_t, ys_b, Wn, b_hh, lengths, hs, gates, grz, gn, rh)
    else:
        for s in range(T):
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _textbook_rz(b0, b1, u, s, T, B, H, units, nu, Prz, reverse, training, xp, xs_t,
                             xs_b, Wrz, b_hh, lengths, hs, grz, rh)
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _textbook_n(b0, b1, u, s, T, B, H, units, nu, Prz, Pn, reverse, training, xp,
                            xs_t, xs_b, y, ys_t, ys_b, Wn, b_hh, lengths, hs, gates, grz, gn, rh)


@njit(**JIT)
def _textbook_back_n(b0, b1, u, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx, gs_t,
                     gs_b, WTn, lengths, hs, gates, dh, part, drz, dnb, q):
    """dn, dz of the block, dh <- dh*z, and the block's share of d_rh = dn @ W_hn."""
    Hp = P * panel_width(WTn)
    nb = b1 - b0
    u0 = u * nu
    n = min(nu, H - u0)
    t, r_in, _ = slots(T - 1 - s, T, reverse, True)
    if s > 0:
        receive(dh, part, 1 - s % 2, b0, b1, u0, n, B, H, units, Hp)
    blk = b0 * units * nu + u * nb * nu
    for b in range(b0, b1):
        go = t * gs_t + b * gs_b + u0
        dn = blk + (b - b0) * nu
        dr = 2 * dn
        if t >= lengths[b]:
            zero_row(dnb, dn, nu)
            zero_row(drz, dr, 2 * nu)
            for k in range(G):
                zero_row(dgx, go + k * H, n)
            continue
        hb = b * H + u0
        add_to(dh, hb, dy, t * ds_t + b * ds_b + u0, n)
        _dn_dz(dh, hb, gates, (t * B + b) * G * H + u0, H, hs, (r_in * B + b) * H + u0, dnb, dn,
               drz, dr + nu, n)
        copy_row(dgx, go + H, drz, dr + nu, n)
        copy_row(dgx, go + 2 * H, dnb, dn, n)
    _share(dnb, blk, nu, WTn, u, P, q, (u * B + b0) * Hp, b0, b1, lengths, t)


@njit(**JIT)
def _textbook_back_rz(b0, b1, u, s, T, B, H, units, nu, P, reverse, dgx, gs_t, gs_b, WTrz,
                      lengths, hs, gates, rh, dh, part, drz, q, tmp):
    """dr of the block from the summed shares of d_rh, dh += d_rh*r, and the block's share of
    [dr, dz] @ W_hh[:2H]."""
    Hp = P * panel_width(WTrz)
    nb = b1 - b0
    u0 = u * nu
    n = min(nu, H - u0)
    t, r_in, _ = slots(T - 1 - s, T, reverse, True)
    for b in range(b0, b1):
        zero_row(tmp, b * H + u0, n)
    receive(tmp, q, 0, b0, b1, u0, n, B, H, units, Hp)  # d_rh
    blk = b0 * units * 2 * nu + u * nb * 2 * nu
    one = dh.dtype.type(1)
    for b in range(b0, b1):
        ro = (t * B + b) * H + u0  # rh
        if t >= lengths[b]:
            zero_row(rh, ro, n)
            continue
        hb = b * H + u0
        gr = (t * B + b) * G * H + u0
        i_in = (r_in * B + b) * H + u0
        dr = blk + (b - b0) * 2 * nu
        for k in range(n):
            r = gates[U(gr + k)]
            drz[U(dr + k)] = tmp[U(hb + k)] * hs[U(i_in + k)] * r * (one - r)
        for k in range(n):
            dh[U(hb + k)] += tmp[U(hb + k)] * gates[U(gr + k)]
        for k in range(n):
            rh[U(ro + k)] = gates[U(gr + k)] * hs[U(i_in + k)]
        copy_row(dgx, t * gs_t + b * gs_b + u0, drz, dr, n)
    _share(drz, blk, 2 * nu, WTrz, u, P, part, (((s % 2) * units + u) * B + b0) * Hp, b0, b1,
           lengths, t)


@njit(parallel=True, **JIT)
def textbook_backward_kernel(T, B, H, rows, units, nu, P, reverse, dy, ds_t, ds_b, dgx, gs_t, gs_b,
                             WTrz, WTn, lengths, hs, gates, rh, dh, part, drz, dnb, q, tmp):
    if units == 1:
        for c in prange(rows):
            b0, b1, _ = block_of(c, rows, 1, B)
            for s in range(T):
                _textbook_back_n(b0, b1, 0, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx,
                                 gs_t, gs_b, WTn, lengths, hs, gates, dh, part, drz, dnb, q)
                _textbook_back_rz(b0, b1, 0, s, T, B, H, units, nu, P, reverse, dgx, gs_t, gs_b,
                                  WTrz, lengths, hs, gates, rh, dh, part, drz, q, tmp)
    else:
        for s in range(T):
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _textbook_back_n(b0, b1, u, s, T, B, H, units, nu, P, reverse, dy, ds_t, ds_b, dgx,
                                 gs_t, gs_b, WTn, lengths, hs, gates, dh, part, drz, dnb, q)
            for c in prange(rows * units):
                b0, b1, u = block_of(c, rows, units, B)
                _textbook_back_rz(b0, b1, u, s, T, B, H, units, nu, P, reverse, dgx, gs_t, gs_b,
                                  WTrz, lengths, hs, gates, rh, dh, part, drz, q, tmp)
    for c in range(rows):
        b0, b1, _ = block_of(c, rows, 1, B)
        receive(dh, part, (T - 1) % 2, b0, b1, 0, H, B, H, units, P * panel_width(WTrz))


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
    gates = gate_store(x_proj, training, G, H)
    xp, xs_t, xs_b = flat_input(x_proj)
    yf, ys_t, ys_b = flat(y)
    k, size = plan.units, plan.size
    args = (xp, xs_t, xs_b, yf, ys_t, ys_b)
    if cell.linear_before_reset:
        hn = np.empty((T, B, H) if training else (1, 1, 1), dtype)
        W, P = weights.forward(range(G))
        forward_kernel(T, B, H, plan.rows, k, size, P, reverse, training, *args, W, b_hh, lengths,
                       hs.reshape(-1), gates.reshape(-1), hn.reshape(-1),
                       np.empty(B * k * padded(G * size, W), dtype))
    else:
        hn = None
        Wrz, Prz = weights.forward((0, 1))
        Wn, Pn = weights.forward((2,))
        textbook_forward_kernel(T, B, H, plan.rows, k, size, Prz, Pn, reverse, training, *args,
                                Wrz, Wn, b_hh, lengths, hs.reshape(-1), gates.reshape(-1),
                                np.empty(B * k * padded(2 * size, Wrz), dtype),
                                np.empty(B * k * padded(size, Wn), dtype), np.empty(B * H, dtype))
    saved = Saved(hs, None, gates, hn, lengths, reverse) if training else None
    return hs[final_slot(T, reverse, training)].copy(), None, saved


def backward(cell, saved, W_hh, dy, dh_n, dc_n, d_gx, plan):
    """Fills d_gx (T, B, 3H); returns (hh_terms, dh0, None)."""
    T, B, H = dy.shape
    dtype = dy.dtype
    dh = np.array(dh_n, dtype, order="C")
    dyf, ds_t, ds_b = flat_input(dy)
    dg, gs_t, gs_b = flat(d_gx)
    h_in = saved.hs[1:] if saved.reverse else saved.hs[:-1]
    k, size = plan.units, plan.size
    Hp = padded(H, dh)
    part = np.empty(2 * k * B * Hp, dtype)
    head = (T, B, H, plan.rows, k, size)
    args = (saved.reverse, dyf, ds_t, ds_b, dg, gs_t, gs_b)
    if cell.linear_before_reset:
        d_gh = np.empty((T, B, G * H), dtype)
        WT, P = pack_backward(W_hh, range(G), plan)
        backward_kernel(*head, P, *args, WT, saved.lengths, saved.hs.reshape(-1),
                        saved.gates.reshape(-1), saved.hn.reshape(-1), d_gh.reshape(-1),
                        dh.reshape(-1), part, np.zeros(B * k * G * size, dtype),
                        np.empty(B * H, dtype))
        return [(d_gh, h_in)], dh, None
    rh = np.empty((T, B, H), dtype)
    WTrz, P = pack_backward(W_hh, (0, 1), plan)
    WTn, _ = pack_backward(W_hh, (2,), plan)
    textbook_backward_kernel(*head, P, *args, WTrz, WTn, saved.lengths, saved.hs.reshape(-1),
                             saved.gates.reshape(-1), rh.reshape(-1), dh.reshape(-1), part,
                             np.zeros(B * k * 2 * size, dtype), np.zeros(B * k * size, dtype),
                             np.empty(k * B * Hp, dtype), np.empty(B * H, dtype))
    return [(d_gx[..., :2 * H], h_in), (d_gx[..., 2 * H:], rh)], dh, None

"""The pointwise variants of the cells' row functions (cells.Variant): the clip of a gate's
input and the peephole terms, each a row loop selected at compile time.

A cell's NamedTuple carries them as fields (``driver.kernel_cell``): ``clip`` the bound in the
arrays' dtype, ``inside`` (R*G*H,) uint8, whether each gate input of a training forward lay
within [-clip, clip] (the clamp's derivative, which backward reads), ``P`` (3*H,) the
peepholes p_i, p_f, p_o. A plain cell has None in each: the overloads below then compile to
nothing, so the plain cells run the same machine code as before the variants existed.

Offsets: a gate row of n units at a[a0:], its unit u0 of gate j of step row tb at
inside[(tb*G + j)*H + u0:] and P[j*H + u0:].
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ...cells import LN_EPS
from .scalars import KERNEL, U
from .vectors import tanh_of, tanh_row


# The fields each variant adds to a cell's NamedTuple (None for the plain cell).
CLIP = ("clip", "inside")
PEEPHOLES = ("P",)
ZONEOUT = ("M", "carry")
LAYER_NORM = ("g_hh", "ln_hh", "acc")
CELL_NORM = ("g_c", "b_c")  # the LSTM's LN of c'


def cell_tuple(name, module, fields=(), variants=()):
    """A cell's NamedTuple class: its own ``fields``, then those of ``variants`` (groups above),
    which default to None. Each class is its own Numba type (skeleton.py)."""
    extra = tuple(f for group in variants for f in group)
    return namedtuple(name, tuple(fields) + extra, defaults=(None,) * len(extra), module=module)


def _plain(cell, field):
    """Whether the cell's NamedTuple type leaves ``field`` off (None, or no such field)."""
    fields = getattr(cell, "fields", ())
    return field not in fields or isinstance(cell.types[fields.index(field)], types.NoneType)


def clamp_row(cell, a, a0, n, m0, training):
    """a[a0:a0+n] clamped to [-cell.clip, cell.clip]; a training call also writes whether each
    input lay within the bounds to cell.inside[m0:] (NaN counts as outside, as in the
    reference)."""
    raise TypeError("compiled code only")


@njit(**KERNEL)
def _clamp(cell, a, a0, n, m0, training):
    hi = cell.clip
    lo = -hi
    if training:
        inside = cell.inside
        for u in range(n):
            v = a[U(a0 + u)]
            inside[U(m0 + u)] = lo <= v <= hi
    for u in range(n):
        v = a[U(a0 + u)]
        a[U(a0 + u)] = lo if v < lo else (hi if v > hi else v)


# The overloads are inlined, so that a plain cell's call leaves nothing; a clipped cell's is a
# call (Numba's inliner loses the selects' variables of _clamp and _unclamp in the loops of the
# callers, a NumbaIRAssumptionWarning; LLVM inlines the call).
@overload(clamp_row, jit_options=KERNEL, inline="always")
def _clamp_row_impl(cell, a, a0, n, m0, training):
    if _plain(cell, "clip"):
        return lambda cell, a, a0, n, m0, training: None
    return lambda cell, a, a0, n, m0, training: _clamp(cell, a, a0, n, m0, training)


def unclamp_row(cell, d, d0, n, m0):
    """d[d0:d0+n] times the clamp's derivative, cell.inside[m0:] (0 where the input was
    clamped)."""
    raise TypeError("compiled code only")


@njit(**KERNEL)
def _unclamp(cell, d, d0, n, m0):
    inside, zero, one = cell.inside, d.dtype.type(0), d.dtype.type(1)
    for u in range(n):
        # a product, not a select, so that a NaN in d stays NaN
        d[U(d0 + u)] *= (one if inside[U(m0 + u)] else zero)


@overload(unclamp_row, jit_options=KERNEL, inline="always")
def _unclamp_row_impl(cell, d, d0, n, m0):
    if _plain(cell, "clip"):
        return lambda cell, d, d0, n, m0: None
    return lambda cell, d, d0, n, m0: _unclamp(cell, d, d0, n, m0)


def peep_row(cell, j, p0, a, a0, c, c0, n):
    """a[a0:a0+n] += p_j * c[c0:c0+n] with p_j at cell.P[j*H + p0:] (p0 = u0 of the row): the
    peephole term of gate j's input, or, with a and c swapped to (dc, d_gate), its gradient
    with respect to the cell state."""
    raise TypeError("compiled code only")


@overload(peep_row, jit_options=KERNEL, inline="always")
def _peep_row_impl(cell, j, p0, a, a0, c, c0, n):
    if _plain(cell, "P"):
        return lambda cell, j, p0, a, a0, c, c0, n: None

    def peep(cell, j, p0, a, a0, c, c0, n):
        P = cell.P
        H = P.shape[0] // 3
        for u in range(n):
            a[U(a0 + u)] += P[U(j * H + p0 + u)] * c[U(c0 + u)]
    return peep


# ----------------------------------------------------------------------------------------------
# Zoneout (every cell): ``M`` (R*H,) the mask M of h' = h + M (h_new - h), row tb at M[tb*H:]
# (x_proj's packed rows); ``carry`` (B*H,) backward's scratch, (1 - M) dh' of the row being
# processed, which reaches the previous h directly. The skeleton calls these once for every
# cell, after the cell's row function.


def zoneout_row(cell, hs, i_out, i_in, m0, n):
    """hs[i_out:i_out+n] (h_new, just written) <- h + M (h_new - h), h = hs[i_in:], M at
    cell.M[m0:]."""
    raise TypeError("compiled code only")


@overload(zoneout_row, jit_options=KERNEL, inline="always")
def _zoneout_row_impl(cell, hs, i_out, i_in, m0, n):
    if _plain(cell, "M"):
        return lambda cell, hs, i_out, i_in, m0, n: None

    def zoneout(cell, hs, i_out, i_in, m0, n):
        M = cell.M
        for u in range(n):
            h = hs[U(i_in + u)]
            hs[U(i_out + u)] = h + M[U(m0 + u)] * (hs[U(i_out + u)] - h)
    return zoneout


def zoneout_split(cell, dh, h0, m0, n):
    """With dh' at dh[h0:h0+n]: cell.carry[h0:] <- (1 - M) dh', the share that reaches the
    previous h directly, and dh <- M dh', the gradient of h_new."""
    raise TypeError("compiled code only")


@overload(zoneout_split, jit_options=KERNEL, inline="always")
def _zoneout_split_impl(cell, dh, h0, m0, n):
    if _plain(cell, "M"):
        return lambda cell, dh, h0, m0, n: None

    def split(cell, dh, h0, m0, n):
        M, carry, one = cell.M, cell.carry, dh.dtype.type(1)
        for u in range(n):
            m = M[U(m0 + u)]
            carry[U(h0 + u)] = (one - m) * dh[U(h0 + u)]
            dh[U(h0 + u)] *= m
    return split


def zoneout_join(cell, dh, h0, n):
    """dh[h0:h0+n] (the cell's gradient of the previous h) += cell.carry[h0:]."""
    raise TypeError("compiled code only")


@overload(zoneout_join, jit_options=KERNEL, inline="always")
def _zoneout_join_impl(cell, dh, h0, n):
    if _plain(cell, "M"):
        return lambda cell, dh, h0, n: None

    def join(cell, dh, h0, n):
        carry = cell.carry
        for u in range(n):
            dh[U(h0 + u)] += carry[U(h0 + u)]
    return join


def h_new_of(cell, hs, i_out, kept, k0):
    """(array, offset) of the RNN's h_new = act(pre) of a row in backward: hs[i_out:] for the
    plain cell; with zoneout hs holds the zoned-out h', so the forward kept h_new at
    kept[k0:] (the gates store)."""
    raise TypeError("compiled code only")


@overload(h_new_of, jit_options=KERNEL, inline="always")
def _h_new_of_impl(cell, hs, i_out, kept, k0):
    if _plain(cell, "M"):
        return lambda cell, hs, i_out, kept, k0: (hs, i_out)
    return lambda cell, hs, i_out, kept, k0: (kept, k0)


def keep_h_new(cell, out, o0, hs, i_out, n):
    """With zoneout, out[o0:o0+n] <- h_new (hs[i_out:]), so that training keeps it as the
    RNN's one gate (skeleton._keep_gates) before zoneout overwrites hs."""
    raise TypeError("compiled code only")


@overload(keep_h_new, jit_options=KERNEL, inline="always")
def _keep_h_new_impl(cell, out, o0, hs, i_out, n):
    if _plain(cell, "M"):
        return lambda cell, out, o0, hs, i_out, n: None

    def keep(cell, out, o0, hs, i_out, n):
        for u in range(n):
            out[U(o0 + u)] = hs[U(i_out + u)]
    return keep


# ----------------------------------------------------------------------------------------------
# Layer norm on the recurrent side (LSTM, GRU): ``g_hh`` (G*H,) the gain of LN(W_hh h);
# ``ln_hh`` (R*G*H,) what a training forward keeps of each row: the raw W_hh h (backward
# recomputes its mean and 1/std, and then overwrites it with the gradient of W_hh h, the
# operand of dW_hh); ``acc`` (B*(2*G*H + 2*H),) backward's per-batch-row sums of dg_hh, db_hh,
# (LSTM) dg_c, db_c: a batch row is processed by one thread only, since layer-normalised cells
# run one unit chunk (the row statistics need the whole row), so the sums need no lock.
# The LSTM's ``g_c``, ``b_c`` (H,): h' = o tanh(LN(c') g_c + b_c), whose statistics backward
# recomputes from the kept c'.


@njit(**KERNEL)
def _row_stats(a, a0, n):
    """(mean, 1/sqrt(var + LN_EPS)) of a[a0:a0+n], two passes as the reference."""
    one = a.dtype.type(1)
    inv_n = one / a.dtype.type(n)  # so that float32 stays float32
    s = a.dtype.type(0)
    for u in range(n):
        s += a[U(a0 + u)]
    mu = s * inv_n
    v = a.dtype.type(0)
    for u in range(n):
        e = a[U(a0 + u)] - mu
        v += e * e
    return mu, one / np.sqrt(v * inv_n + a.dtype.type(LN_EPS))


def layer_norm_row(cell, a, a0, n, k0, training):
    """a[a0:a0+n] (the whole row of W_hh h) <- LN(a) * cell.g_hh; a training call keeps the
    raw row at cell.ln_hh[k0:]."""
    raise TypeError("compiled code only")


@overload(layer_norm_row, jit_options=KERNEL, inline="always")
def _layer_norm_row_impl(cell, a, a0, n, k0, training):
    if _plain(cell, "g_hh"):
        return lambda cell, a, a0, n, k0, training: None
    return lambda cell, a, a0, n, k0, training: _layer_norm(cell, a, a0, n, k0, training)


@njit(**KERNEL)
def _layer_norm(cell, a, a0, n, k0, training):
    if training:
        kept = cell.ln_hh
        for u in range(n):
            kept[U(k0 + u)] = a[U(a0 + u)]
    mu, rstd = _row_stats(a, a0, n)
    g = cell.g_hh
    for u in range(n):
        a[U(a0 + u)] = (a[U(a0 + u)] - mu) * rstd * g[U(u)]


@njit(**KERNEL)
def _norm_back(d, d0, raw, r0, g, n, acc, s0):
    """The first pass of the backward of LN(raw[r0:r0+n]) * g + b, with the gradient of its
    output at d[d0:]: acc[s0:] += d * v_hat and acc[s0+n:] += d (the sums of dg and db).
    Returns (mean, 1/std, mean(d*g), mean(d*g*v_hat)), from which the gradient of raw is
    1/std * (d*g - mean(d*g) - v_hat * mean(d*g*v_hat))."""
    mu, rstd = _row_stats(raw, r0, n)
    zero = d.dtype.type(0)
    m1 = zero
    m2 = zero
    for u in range(n):
        v_hat = (raw[U(r0 + u)] - mu) * rstd
        dv = d[U(d0 + u)]
        acc[U(s0 + u)] += dv * v_hat
        acc[U(s0 + n + u)] += dv
        dv *= g[U(u)]
        m1 += dv
        m2 += dv * v_hat
    inv_n = d.dtype.type(1) / d.dtype.type(n)
    return mu, rstd, m1 * inv_n, m2 * inv_n


def layer_norm_back_row(cell, d, d0, n, k0, s0):
    """With d[d0:d0+n] the gradient of gh = LN(W_hh h) * g_hh + b_hh (the whole row): add its
    sums for dg_hh and db_hh to cell.acc[s0:], and replace it by the gradient of W_hh h, which
    is also written over the kept raw row cell.ln_hh[k0:] (the operand of dW_hh)."""
    raise TypeError("compiled code only")


@overload(layer_norm_back_row, jit_options=KERNEL, inline="always")
def _layer_norm_back_row_impl(cell, d, d0, n, k0, s0):
    if _plain(cell, "g_hh"):
        return lambda cell, d, d0, n, k0, s0: None

    def back(cell, d, d0, n, k0, s0):
        raw, g = cell.ln_hh, cell.g_hh
        mu, rstd, m1, m2 = _norm_back(d, d0, raw, k0, g, n, cell.acc, s0)
        for u in range(n):
            v_hat = (raw[U(k0 + u)] - mu) * rstd
            da = rstd * (d[U(d0 + u)] * g[U(u)] - m1 - v_hat * m2)
            d[U(d0 + u)] = da
            raw[U(k0 + u)] = da
    return back


def cell_tanh(cell, dst, d0, cs, c0, n):
    """dst[d0:d0+n] <- tanh(c') of the LSTM's c' at cs[c0:], or with layer norm
    tanh(LN(c') * g_c + b_c) (the whole row)."""
    raise TypeError("compiled code only")


@overload(cell_tanh, jit_options=KERNEL, inline="always")
def _cell_tanh_impl(cell, dst, d0, cs, c0, n):
    if _plain(cell, "g_c"):
        return lambda cell, dst, d0, cs, c0, n: tanh_of(dst, d0, cs, c0, n)

    def normed(cell, dst, d0, cs, c0, n):
        mu, rstd = _row_stats(cs, c0, n)
        g, b = cell.g_c, cell.b_c
        for u in range(n):
            dst[U(d0 + u)] = (cs[U(c0 + u)] - mu) * rstd * g[U(u)] + b[U(u)]
        tanh_row(dst, d0, n)
    return normed


def cell_tanh_back(cell, dc, h0, dh, gates, o0, th, cs, c0, n, s0):
    """dc[h0:h0+n] += the gradient of c' through h' = o * cell_tanh(c'), from dh[h0:], o at
    gates[o0:] and cell_tanh's value at th[h0:] (overwritten); with layer norm the sums of
    dg_c and db_c go to cell.acc[s0:]."""
    raise TypeError("compiled code only")


@overload(cell_tanh_back, jit_options=KERNEL, inline="always")
def _cell_tanh_back_impl(cell, dc, h0, dh, gates, o0, th, cs, c0, n, s0):
    if _plain(cell, "g_c"):
        def plain(cell, dc, h0, dh, gates, o0, th, cs, c0, n, s0):
            one = dh.dtype.type(1)
            for u in range(n):
                t = th[U(h0 + u)]
                dc[U(h0 + u)] += dh[U(h0 + u)] * gates[U(o0 + u)] * (one - t * t)
        return plain

    def normed(cell, dc, h0, dh, gates, o0, th, cs, c0, n, s0):
        one = dh.dtype.type(1)
        for u in range(n):  # th <- the gradient of LN(c') * g_c + b_c
            t = th[U(h0 + u)]
            th[U(h0 + u)] = dh[U(h0 + u)] * gates[U(o0 + u)] * (one - t * t)
        g = cell.g_c
        mu, rstd, m1, m2 = _norm_back(th, h0, cs, c0, g, n, cell.acc, s0)
        for u in range(n):
            c_hat = (cs[U(c0 + u)] - mu) * rstd
            dc[U(h0 + u)] += rstd * (th[U(h0 + u)] * g[U(u)] - m1 - c_hat * m2)
    return normed


@njit(parallel=True, **KERNEL)
def layer_norm_rows(a, ld, c0, n, g, b, mean, inv_std):
    """The input side's layer norm in place, on the threads: columns c0..c0+n of each of the
    N rows of a (flat, row stride ld) <- LN(row) * g + b (b empty: no bias); each row's mean
    and 1/std to mean[r], inv_std[r] (N,), which backward reads again."""
    for r in prange(mean.shape[0]):
        o = r * ld + c0
        mu, rstd = _row_stats(a, o, n)
        mean[r], inv_std[r] = mu, rstd
        if b.size > 0:
            for u in range(n):
                a[U(o + u)] = (a[U(o + u)] - mu) * rstd * g[U(u)] + b[U(u)]
        else:
            for u in range(n):
                a[U(o + u)] = (a[U(o + u)] - mu) * rstd * g[U(u)]

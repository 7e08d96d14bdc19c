"""The NumPy reference: plain, step-by-step, obviously right. Every kernel is checked against it.

It shares no math with the fast backends. Each cell is a pair of functions on one time step of B
rows: ``*_step`` computes the new state from the input x_t and keeps a cache, ``*_step_back``
turns the gradient of the new state into gradients of x_t, the previous state and the parameters.
``_run`` and ``_run_back`` own time: order, lengths (an invalid step keeps the state and writes a
zero output), and the accumulation of parameter gradients. The equations are in ``cells.py``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit as sigmoid

from . import reference_variants
from .backends.base import Backend, DirectionGrads, step_times
from .cells import Variant


def _affine(x, W, b):
    out = x @ W.T
    return out if b is None else out + b


# ----------------------------------------------------------------------------------------------
# One step of each cell. p = (W_ih, W_hh, b_ih, b_hh); state = (h,) or (h, c).


def rnn_step(cell, p, x_t, state):
    W_ih, W_hh, b_ih, b_hh = p
    (h,) = state
    pre = _affine(x_t, W_ih, b_ih) + _affine(h, W_hh, b_hh)
    h_new = np.tanh(pre) if cell.nonlinearity == "tanh" else np.maximum(pre, 0)
    return (h_new,), (x_t, h, h_new)


def rnn_step_back(cell, p, cache, d_state):
    W_ih, W_hh, _, _ = p
    x_t, h, h_new = cache
    (dh_new,) = d_state
    if cell.nonlinearity == "tanh":
        d_pre = dh_new * (1 - h_new * h_new)
    else:
        d_pre = dh_new * (h_new > 0)
    # (dx_t, d_state_prev, ((d_gx, x_t), (d_gh, h_in)) pairs whose products give dW_ih / dW_hh)
    return d_pre @ W_ih, (d_pre @ W_hh,), (d_pre, x_t), [(d_pre, h)]


def lstm_step(cell, p, x_t, state):
    W_ih, W_hh, b_ih, b_hh = p
    h, c = state
    H = h.shape[1]
    gates = _affine(x_t, W_ih, b_ih) + _affine(h, W_hh, b_hh)
    i = sigmoid(gates[:, 0 * H:1 * H])
    f = sigmoid(gates[:, 1 * H:2 * H])
    g = np.tanh(gates[:, 2 * H:3 * H])
    o = sigmoid(gates[:, 3 * H:4 * H])
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    h_new = o * tanh_c
    return (h_new, c_new), (x_t, h, c, i, f, g, o, tanh_c)


def lstm_step_back(cell, p, cache, d_state):
    W_ih, W_hh, _, _ = p
    x_t, h, c, i, f, g, o, tanh_c = cache
    dh_new, dc_new = d_state
    do = dh_new * tanh_c
    dc = dc_new + dh_new * o * (1 - tanh_c * tanh_c)
    di = dc * g
    df = dc * c
    dg = dc * i
    d_gates = np.concatenate(
        [di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1)
    return d_gates @ W_ih, (d_gates @ W_hh, dc * f), (d_gates, x_t), [(d_gates, h)]


def gru_step(cell, p, x_t, state):
    W_ih, W_hh, b_ih, b_hh = p
    (h,) = state
    H = h.shape[1]
    gx = _affine(x_t, W_ih, b_ih)
    if cell.linear_before_reset:
        gh = _affine(h, W_hh, b_hh)
        r = sigmoid(gx[:, :H] + gh[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:]
        n = np.tanh(gx[:, 2 * H:] + r * hn)
    else:
        b_rz = None if b_hh is None else b_hh[:2 * H]
        b_n = None if b_hh is None else b_hh[2 * H:]
        gh = _affine(h, W_hh[:2 * H], b_rz)
        r = sigmoid(gx[:, :H] + gh[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        hn = _affine(r * h, W_hh[2 * H:], b_n)
        n = np.tanh(gx[:, 2 * H:] + hn)
    h_new = (1 - z) * n + z * h
    return (h_new,), (x_t, h, r, z, n, hn)


def gru_step_back(cell, p, cache, d_state):
    W_ih, W_hh, _, _ = p
    x_t, h, r, z, n, hn = cache
    H = h.shape[1]
    (dh_new,) = d_state
    dn_pre = dh_new * (1 - z) * (1 - n * n)
    dz_pre = dh_new * (h - n) * z * (1 - z)
    dh = dh_new * z
    if cell.linear_before_reset:
        dr_pre = dn_pre * hn * r * (1 - r)
        d_gx = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        d_gh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
        dh = dh + d_gh @ W_hh
        hh = [(d_gh, h)]
    else:
        d_rh = dn_pre @ W_hh[2 * H:]
        dr_pre = d_rh * h * r * (1 - r)
        d_rz = np.concatenate([dr_pre, dz_pre], axis=1)
        d_gx = np.concatenate([d_rz, dn_pre], axis=1)
        dh = dh + d_rh * r + d_rz @ W_hh[:2 * H]
        hh = [(d_rz, h), (dn_pre, r * h)]
    return d_gx @ W_ih, (dh,), (d_gx, x_t), hh


STEPS = {
    "rnn": (rnn_step, rnn_step_back),
    "lstm": (lstm_step, lstm_step_back),
    "gru": (gru_step, gru_step_back),
}


# ----------------------------------------------------------------------------------------------
# Time.


def _valid(lengths, t, B):
    """(B, 1) boolean: is step t valid for each sequence."""
    if lengths is None:
        return np.ones((B, 1), dtype=bool)
    return (t < lengths)[:, None]


def _run(cell, x, d, lengths, training):
    step = STEPS[cell.kind][0]
    T, B, _ = x.shape
    H = d.W_hh.shape[1]
    p = (d.W_ih, d.W_hh, d.b_ih, d.b_hh)
    state = (d.h0, d.c0) if cell.has_cell_state else (d.h0,)
    y = np.zeros((T, B, H), x.dtype)
    caches = {}
    for t in step_times(T, d.reverse):
        new_state, cache = step(cell, p, x[t], state)
        valid = _valid(lengths, t, B)
        state = tuple(np.where(valid, new, old) for new, old in zip(new_state, state))
        y[t] = np.where(valid, new_state[0], 0)
        if training:
            caches[t] = (cache, valid)
    return y, state, (p, caches, d.reverse) if training else None


def _run_back(cell, saved, dy, d_state_n):
    step_back = STEPS[cell.kind][1]
    p, caches, reverse = saved
    W_ih, W_hh, b_ih, b_hh = p
    T, B, _ = dy.shape
    dx = np.zeros((T, B, W_ih.shape[1]), dy.dtype)
    dW_ih, dW_hh = np.zeros_like(W_ih), np.zeros_like(W_hh)
    db_ih, db_hh = np.zeros(W_ih.shape[0], dy.dtype), np.zeros(W_hh.shape[0], dy.dtype)
    d_state = d_state_n
    for t in reversed(step_times(T, reverse)):
        cache, valid = caches[t]
        d_new = (d_state[0] + np.where(valid, dy[t], 0),) + d_state[1:]
        d_in = tuple(np.where(valid, v, 0) for v in d_new)
        dx_t, d_prev, (d_gx, x_t), hh = step_back(cell, p, cache, d_in)
        # An invalid step contributes nothing, even when its padding or its unused cache holds
        # NaN or Inf (0 * NaN would be NaN).
        dx_t, d_gx, x_t = (np.where(valid, v, 0) for v in (dx_t, d_gx, x_t))
        hh = [(np.where(valid, d_gh, 0), np.where(valid, h_in, 0)) for d_gh, h_in in hh]
        dx[t] = dx_t
        dW_ih += d_gx.T @ x_t
        db_ih += d_gx.sum(axis=0)
        row = 0
        for d_gh, h_in in hh:
            dW_hh[row:row + d_gh.shape[1]] += d_gh.T @ h_in
            db_hh[row:row + d_gh.shape[1]] += d_gh.sum(axis=0)
            row += d_gh.shape[1]
        # An invalid step passed the state through unchanged, so its gradient passes through too.
        d_state = tuple(np.where(valid, dp, dn) for dp, dn in zip(d_prev, d_new))
    return dx, d_state, DirectionGrads(
        dW_ih, dW_hh, None if b_ih is None else db_ih, None if b_hh is None else db_hh,
        d_state[0], d_state[1] if len(d_state) > 1 else None)


def _run_variant(cell, x, d, lengths, training):
    """``_run`` of a variant cell: one direction through reference_variants."""
    params = dict(W_ih=d.W_ih, W_hh=d.W_hh, b_ih=d.b_ih, b_hh=d.b_hh, **d.variant_params)
    y, h_n, c_n, saved = reference_variants.forward(
        cell, cell.variant, x, params, d.h0, d.c0, lengths=lengths, reverse=d.reverse,
        zoneout_mask=d.zoneout_mask, training=training)
    return y, (h_n, c_n), saved


def _run_variant_back(cell, saved, dy, d_state_n):
    """``_run_back`` of a variant cell."""
    g = reference_variants.backward(saved, dy, *d_state_n)
    names = ("dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0")
    extra = {name: value for name, value in g.items()
             if name not in names and name != "dx" and value is not None}
    return g["dx"], None, DirectionGrads(*(g.get(name) for name in names), **extra)


class NumpyBackend(Backend):
    """The reference as a backend: each direction run step by step, independently. A variant
    cell runs through ``reference_variants``, the variants' oracle."""

    name = "numpy"
    xp = np
    variant_switches = frozenset(Variant.__dataclass_fields__)

    def forward(self, cell, x, dirs, lengths, training):
        ys, hs, cs, saved = [], [], [], []
        run = _run_variant if cell.variant.switches else _run
        for d in dirs:
            y, state, s = run(cell, x, d, lengths, training)
            ys.append(y)
            hs.append(state[0])
            cs.append(state[1] if cell.has_cell_state else None)
            saved.append(s)
        # One direction's y is returned as it is: no second output-sized array.
        return (ys[0] if len(ys) == 1 else np.concatenate(ys, axis=2), np.stack(hs),
                np.stack(cs) if cell.has_cell_state else None,
                saved if training else None)

    def backward(self, cell, saved, dy, dh_n, dc_n):
        H = dh_n.shape[2]
        dx = 0
        grads = []
        run_back = _run_variant_back if cell.variant.switches else _run_back
        for k, s in enumerate(saved):
            d_state_n = (dh_n[k], dc_n[k]) if cell.has_cell_state else (dh_n[k],)
            dx_k, _, g = run_back(cell, s, dy[..., k * H:(k + 1) * H], d_state_n)
            saved[k] = None
            dx = dx + dx_k
            grads.append(g)
        return dx, grads

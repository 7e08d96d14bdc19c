"""The stack written in plain torch operations: the differentiable fallback for higher-order
gradients (``create_graph=True``), which the fused kernels do not give.

It follows cells.py's equations and stack.py's conventions (lengths, dropout masks between
layers, PyTorch's parameter names) one step at a time, so it is slow: a Python loop over T
steps per layer and direction, each a few small torch ops. It is only run when torch records
the backward itself.
"""

from __future__ import annotations

import torch

from ..cells import LN_EPS
from ..stack import Stack


def _layer_norm(v):
    """LN(v) over each row, biased variance, eps LN_EPS (cells.Variant)."""
    mean = v.mean(dim=-1, keepdim=True)
    centred = v - mean
    return centred * torch.rsqrt((centred * centred).mean(dim=-1, keepdim=True) + LN_EPS)


def _project(inp, W, b, gain):
    """W inp + b, or with layer norm (gain given) LN(W inp) * gain + b."""
    pre = inp @ W.T
    if gain is not None:
        pre = _layer_norm(pre) * gain
    return pre if b is None else pre + b


def _step(cell, gx, h, c, p):
    """One step of ``cell`` for gx (the input projection of x_t, layer norm included) from state
    h (B, H_out) (and c); ``p`` the direction's parameters by cells.Variant's names. Returns
    (h', c'), h' before zoneout."""
    v = cell.variant
    clamp = (lambda a: a) if v.clip is None else (lambda a: a.clamp(-v.clip, v.clip))
    H = p["W_hh"].shape[0] // cell.gates
    if cell.kind == "gru" and not cell.linear_before_reset:
        b_hh = p["b_hh"]
        gh_rz = _project(h, p["W_hh"][:2 * H], None if b_hh is None else b_hh[:2 * H], None)
        r, z = torch.sigmoid(clamp(gx[:, :2 * H] + gh_rz)).chunk(2, -1)
        n = torch.tanh(clamp(gx[:, 2 * H:] + _project(
            r * h, p["W_hh"][2 * H:], None if b_hh is None else b_hh[2 * H:], None)))
        return (1 - z) * n + z * h, None
    gh = _project(h, p["W_hh"], p["b_hh"], p.get("g_hh"))
    if cell.kind == "rnn":
        act = torch.tanh if cell.nonlinearity == "tanh" else torch.relu
        return act(clamp(gx + gh)), None
    if cell.kind == "lstm":
        a_i, a_f, a_g, a_o = (gx + gh).chunk(4, -1)
        P = p.get("P")
        if P is not None:
            a_i, a_f = a_i + P[0] * c, a_f + P[1] * c
        c_new = torch.sigmoid(clamp(a_f)) * c + torch.sigmoid(clamp(a_i)) * torch.tanh(
            clamp(a_g))
        if P is not None:
            a_o = a_o + P[2] * c_new
        c_out = c_new if p.get("g_c") is None else _layer_norm(c_new) * p["g_c"] + p["b_c"]
        h_new = torch.sigmoid(clamp(a_o)) * torch.tanh(c_out)
        return (h_new if p.get("W_hr") is None else h_new @ p["W_hr"].T), c_new
    r, z = torch.sigmoid(clamp(gx[:, :2 * H] + gh[:, :2 * H])).chunk(2, -1)
    n = torch.tanh(clamp(gx[:, 2 * H:] + r * gh[:, 2 * H:]))
    return (1 - z) * n + z * h, None


def _direction(cell, x, p, h, c, valid, reverse, zoneout_mask):
    """One direction over x (T, B, I); valid (T, B, 1) bool or None; zoneout_mask (T, B, H_out)
    or None. Returns (y (T, B, H_out), h, c)."""
    gx = _project(x, p["W_ih"], p["b_ih"], p.get("g_ih"))
    T = x.shape[0]
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_new, c_new = _step(cell, gx[t], h, c, p)
        if zoneout_mask is not None:
            h_new = h + zoneout_mask[t] * (h_new - h)
        if valid is None:
            h, c, ys[t] = h_new, c_new, h_new
        else:
            # An invalid step keeps the state and writes zeros (packed-sequence semantics).
            h = torch.where(valid[t], h_new, h)
            c = None if c is None else torch.where(valid[t], c_new, c)
            ys[t] = torch.where(valid[t], h_new, torch.zeros_like(h_new))
    return torch.stack(ys), h, c


def forward(stack: Stack, x, states, params, lengths=None, masks=(), dropout=0.0):
    """The stack on time-major x (T, B, I); states a tuple of (L*D, B, H) tensors (h, and c for
    the LSTM); params name -> tensor; lengths None or an int64 tensor (B,); masks as the custom
    op takes them, drawn in training mode only: per layer, zoneout's per direction, then with
    ``dropout`` > 0 dropout's (T, B, D*H_out) after each layer but the last.
    Returns (y (T, B, D*H_out), final states tuple)."""
    cell, D = stack.cell, stack.num_directions
    T = x.shape[0]
    valid = None
    if lengths is not None:
        steps = torch.arange(T, device=lengths.device)[:, None]
        valid = (steps < lengths[None, :]).to(x.device)[..., None]
    finals = [[] for _ in states]
    training, masks = bool(masks), iter(masks)
    zoneout = cell.variant.zoneout
    inp = x
    for k in range(stack.num_layers):
        outs = []
        for j, suffix in enumerate(stack.suffixes):
            row = k * D + j
            p = stack.direction_params(params, k, suffix)
            c0 = states[1][row] if len(states) > 1 else None
            mask = None if not zoneout else next(masks) if training else torch.full(
                (T, x.shape[1], stack.output_size), 1 - zoneout, dtype=x.dtype, device=x.device)
            y, h, c = _direction(cell, inp, p, states[0][row], c0, valid, j == 1, mask)
            outs.append(y)
            for final, value in zip(finals, (h, c)):
                final.append(value)
        inp = torch.cat(outs, -1) if D > 1 else outs[0]
        if training and dropout > 0 and k < stack.num_layers - 1:
            inp = inp * next(masks)
    return inp, tuple(torch.stack(f) for f in finals)

"""The stack written in plain torch operations: the differentiable fallback for higher-order
gradients (``create_graph=True``), which the fused kernels do not give.

It follows cells.py's equations and stack.py's conventions (lengths, dropout masks between
layers, PyTorch's parameter names) one step at a time, so it is slow: a Python loop over T
steps per layer and direction, each a few small torch ops. It is only run when torch records
the backward itself.
"""

from __future__ import annotations

import torch

from ..stack import PARAM_KINDS, Stack


def _step(cell, gx, h, c, W_hh, b_hh):
    """One step of ``cell`` for gx = W_ih x_t + b_ih (B, G*H) from state h (B, H) (and c);
    returns (h', c')."""
    H = h.shape[-1]
    if cell.kind == "gru" and not cell.linear_before_reset:
        gh_rz = h @ W_hh[:2 * H].T + (0 if b_hh is None else b_hh[:2 * H])
        r, z = torch.sigmoid(gx[:, :2 * H] + gh_rz).chunk(2, -1)
        n = torch.tanh(gx[:, 2 * H:] + (r * h) @ W_hh[2 * H:].T
                       + (0 if b_hh is None else b_hh[2 * H:]))
        return (1 - z) * n + z * h, None
    gh = h @ W_hh.T + (0 if b_hh is None else b_hh)
    if cell.kind == "rnn":
        act = torch.tanh if cell.nonlinearity == "tanh" else torch.relu
        return act(gx + gh), None
    if cell.kind == "lstm":
        i, f, g, o = (gx + gh).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    r, z = torch.sigmoid(gx[:, :2 * H] + gh[:, :2 * H]).chunk(2, -1)
    n = torch.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h, None


def _direction(cell, x, W_ih, W_hh, b_ih, b_hh, h, c, valid, reverse):
    """One direction over x (T, B, I); valid (T, B, 1) bool or None. Returns (y (T, B, H), h, c)."""
    gx = x @ W_ih.T + (0 if b_ih is None else b_ih)
    T = x.shape[0]
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_new, c_new = _step(cell, gx[t], h, c, W_hh, b_hh)
        if valid is None:
            h, c, ys[t] = h_new, c_new, h_new
        else:
            # An invalid step keeps the state and writes zeros (packed-sequence semantics).
            h = torch.where(valid[t], h_new, h)
            c = None if c is None else torch.where(valid[t], c_new, c)
            ys[t] = torch.where(valid[t], h_new, torch.zeros_like(h_new))
    return torch.stack(ys), h, c


def forward(stack: Stack, x, states, params, lengths=None, masks=()):
    """The stack on time-major x (T, B, I); states a tuple of (L*D, B, H) tensors (h, and c for
    the LSTM); params name -> tensor; lengths None or an int64 tensor (B,); masks the dropout
    masks (T, B, D*H) after each layer but the last (empty without dropout).
    Returns (y (T, B, D*H), final states tuple)."""
    cell, D = stack.cell, stack.num_directions
    T = x.shape[0]
    valid = None
    if lengths is not None:
        steps = torch.arange(T, device=lengths.device)[:, None]
        valid = (steps < lengths[None, :]).to(x.device)[..., None]
    finals = [[] for _ in states]
    inp = x
    for k in range(stack.num_layers):
        outs = []
        for j, suffix in enumerate(stack.suffixes):
            row = k * D + j
            W_ih, W_hh, b_ih, b_hh = (params.get(f"{kind}_l{k}{suffix}") for kind in PARAM_KINDS)
            c0 = states[1][row] if len(states) > 1 else None
            y, h, c = _direction(cell, inp, W_ih, W_hh, b_ih, b_hh, states[0][row], c0, valid,
                                 reverse=j == 1)
            outs.append(y)
            for final, value in zip(finals, (h, c)):
                final.append(value)
        inp = torch.cat(outs, -1) if D > 1 else outs[0]
        if k < len(masks):
            inp = inp * masks[k]
    return inp, tuple(torch.stack(f) for f in finals)

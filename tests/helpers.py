"""Shared test helpers: random problems, finite differences and PyTorch runs of one direction."""

from __future__ import annotations

import numpy as np

import fastrnn
from fastrnn.cells import Cell

FORWARD = {"rnn": fastrnn.rnn_forward, "lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward}
BACKWARD = {"rnn": fastrnn.rnn_backward, "lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward}
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}
GRAD_NAMES = ("dx", "dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0")


def variant_kwargs(cell: Cell) -> dict:
    if cell.kind == "rnn":
        return {"nonlinearity": cell.nonlinearity}
    if cell.kind == "gru":
        return {"linear_before_reset": cell.linear_before_reset}
    return {}


def make_problem(cell: Cell, T, B, I, H, dtype=np.float64, seed=0, bias=True, states=True,
                 lengths=False, scale=0.5):
    """Random inputs for one direction, as a dict of keyword arguments for *_forward."""
    rng = np.random.default_rng(seed)
    G = cell.gates
    p = {
        "x": rng.standard_normal((T, B, I)),
        "W_ih": rng.uniform(-scale, scale, (G * H, I)),
        "W_hh": rng.uniform(-scale, scale, (G * H, H)),
        "b_ih": rng.uniform(-scale, scale, G * H) if bias else None,
        "b_hh": rng.uniform(-scale, scale, G * H) if bias else None,
        "h0": rng.standard_normal((B, H)) * 0.5 if states else None,
    }
    if cell.has_cell_state:
        p["c0"] = rng.standard_normal((B, H)) * 0.5 if states else None
    if lengths:
        L = rng.integers(1, T + 1, B)
        L[0] = T  # one full-length sequence
        if B > 2:
            L[2] = L[1]  # a tie
        p["lengths"] = L
    p = {k: (v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
         for k, v in p.items()}
    return p


def make_cotangents(cell, T, B, H, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    g = {"dy": rng.standard_normal((T, B, H)).astype(dtype),
         "dh_n": rng.standard_normal((B, H)).astype(dtype)}
    if cell.has_cell_state:
        g["dc_n"] = rng.standard_normal((B, H)).astype(dtype)
    return g


def run(cell, problem, cot, backend, reverse=False):
    """Forward and backward through the functional API; returns (outputs dict, grads dict)."""
    out = FORWARD[cell.kind](**problem, **variant_kwargs(cell), reverse=reverse, backend=backend)
    outs = {"y": out[0], "h_n": out[1]}
    if cell.has_cell_state:
        outs["c_n"] = out[2]
    g = BACKWARD[cell.kind](out[-1], **cot)
    grads = {n: getattr(g, n) for n in GRAD_NAMES if getattr(g, n) is not None}
    return outs, grads


def assert_close(actual: dict, expected: dict, dtype, label=""):
    assert set(actual) == set(expected), (label, sorted(actual), sorted(expected))
    for k in expected:
        np.testing.assert_allclose(np.asarray(actual[k]), np.asarray(expected[k]),
                                   err_msg=f"{label} {k}", **TOL[dtype])


# ----------------------------------------------------------------------------------------------
# PyTorch


def torch_run(cell, problem, cot, reverse=False):
    """The same direction in torch.nn: reverse is the reverse half of a bidirectional layer,
    lengths go through pack_padded_sequence(enforce_sorted=False)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    x = problem["x"]
    T, B, I = x.shape
    H = problem["W_hh"].shape[1]
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    bias = problem["b_ih"] is not None
    kw = dict(input_size=I, hidden_size=H, bias=bias, bidirectional=reverse, dtype=dtype)
    if cell.kind == "rnn":
        mod = torch.nn.RNN(nonlinearity=cell.nonlinearity, **kw)
    elif cell.kind == "lstm":
        mod = torch.nn.LSTM(**kw)
    else:
        assert cell.linear_before_reset, "torch has only the linear_before_reset GRU"
        mod = torch.nn.GRU(**kw)
    suffix = "_reverse" if reverse else ""
    D = 2 if reverse else 1
    G = cell.gates
    with torch.no_grad():
        for name, key in (("weight_ih", "W_ih"), ("weight_hh", "W_hh"), ("bias_ih", "b_ih"),
                          ("bias_hh", "b_hh")):
            if problem[key] is None:
                continue
            getattr(mod, f"{name}_l0{suffix}").copy_(torch.from_numpy(problem[key]))
            if reverse:  # the unused forward half gets zeros
                getattr(mod, f"{name}_l0").zero_()
    xt = torch.from_numpy(x.copy()).requires_grad_()
    zeros = np.zeros((B, H), x.dtype)
    h0 = problem.get("h0")
    h0 = zeros if h0 is None else h0
    h0t = torch.from_numpy(np.stack([zeros, h0][-D:]).copy()).requires_grad_()
    hx = h0t
    if cell.has_cell_state:
        c0 = problem.get("c0")
        c0 = zeros if c0 is None else c0
        c0t = torch.from_numpy(np.stack([zeros, c0][-D:]).copy()).requires_grad_()
        hx = (h0t, c0t)
    lengths = problem.get("lengths")
    inp = xt if lengths is None else pack_padded_sequence(
        xt, torch.as_tensor(lengths), enforce_sorted=False)
    out, state = mod(inp, hx)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    h_n = state[0] if cell.has_cell_state else state
    c_n = state[1] if cell.has_cell_state else None
    y = out[..., (D - 1) * H:]
    loss = (y * torch.from_numpy(cot["dy"])).sum() + (h_n[D - 1] * torch.from_numpy(cot["dh_n"])).sum()
    if cell.has_cell_state:
        loss = loss + (c_n[D - 1] * torch.from_numpy(cot["dc_n"])).sum()
    loss.backward()
    outs = {"y": y.detach().numpy(), "h_n": h_n[D - 1].detach().numpy()}
    if cell.has_cell_state:
        outs["c_n"] = c_n[D - 1].detach().numpy()
    grads = {"dx": xt.grad.numpy(), "dW_ih": getattr(mod, f"weight_ih_l0{suffix}").grad.numpy(),
             "dW_hh": getattr(mod, f"weight_hh_l0{suffix}").grad.numpy(),
             "dh0": h0t.grad[D - 1].numpy()}
    if bias:
        grads["db_ih"] = getattr(mod, f"bias_ih_l0{suffix}").grad.numpy()
        grads["db_hh"] = getattr(mod, f"bias_hh_l0{suffix}").grad.numpy()
    if cell.has_cell_state:
        grads["dc0"] = c0t.grad[D - 1].numpy()
    return outs, grads

"""Shared test helpers: random problems, finite differences and PyTorch runs of one direction."""

from __future__ import annotations

from operator import attrgetter

import numpy as np

from fastrnn.cells import Cell, Variant
from fastrnn.tolerances import tolerance
from fastrnn.tools.runners import (BACKWARD, FORWARD, GRAD_NAMES, fastrnn_backward,
                                   fastrnn_forward, gradients, make_cotangents, make_params,
                                   outputs)

__all__ = ["BACKWARD", "CLIP", "FORWARD", "GRAD_NAMES", "TOL", "VARIANT_CASES", "ZONEOUT",
           "assert_close", "make_cotangents", "make_problem", "run", "torch_run",
           "variant_cases", "variant_kwargs"]

TOL = {dtype: tolerance(dtype) for dtype in (np.float32, np.float64)}
variant_kwargs = attrgetter("options")  # variant_kwargs(cell) is cell.options

# The cell variants the backends' tests run, name -> (plain cell name, Variant); each test
# file takes those its backend runs (``variant_cases``). With the tests' problems CLIP clamps
# part of every gate's inputs, not all.
CLIP, ZONEOUT = 0.6, 0.3
VARIANT_CASES = {
    "rnn_tanh-clip": ("rnn_tanh", Variant(clip=CLIP)),
    "rnn_relu-clip": ("rnn_relu", Variant(clip=CLIP)),
    "lstm-clip": ("lstm", Variant(clip=CLIP)),
    "lstm-peepholes": ("lstm", Variant(peepholes=True)),
    "lstm-peepholes-clip": ("lstm", Variant(peepholes=True, clip=CLIP)),
    "gru-clip": ("gru", Variant(clip=CLIP)),
    "gru_textbook-clip": ("gru_textbook", Variant(clip=CLIP)),
    "rnn_tanh-zoneout": ("rnn_tanh", Variant(zoneout=ZONEOUT)),
    "rnn_relu-zoneout-clip": ("rnn_relu", Variant(zoneout=ZONEOUT, clip=CLIP)),
    "lstm-zoneout": ("lstm", Variant(zoneout=ZONEOUT)),
    "gru-zoneout": ("gru", Variant(zoneout=ZONEOUT)),
    "gru_textbook-zoneout": ("gru_textbook", Variant(zoneout=ZONEOUT)),
    "gru_textbook-zoneout-clip": ("gru_textbook", Variant(zoneout=ZONEOUT, clip=CLIP)),
    "lstm-zoneout-peepholes-clip": ("lstm", Variant(zoneout=ZONEOUT, peepholes=True, clip=CLIP)),
    "lstm-proj": ("lstm", Variant(proj_size=5)),
    "lstm-proj-zoneout-peepholes-clip": (
        "lstm", Variant(proj_size=5, zoneout=ZONEOUT, peepholes=True, clip=CLIP)),
    "lstm-layer_norm": ("lstm", Variant(layer_norm=True)),
    "gru-layer_norm": ("gru", Variant(layer_norm=True)),
    "lstm-layer_norm-zoneout-peepholes-clip": (
        "lstm", Variant(layer_norm=True, zoneout=ZONEOUT, peepholes=True, clip=CLIP)),
    "lstm-layer_norm-all": (
        "lstm", Variant(layer_norm=True, proj_size=5, zoneout=ZONEOUT, peepholes=True,
                        clip=CLIP)),
    "gru-layer_norm-zoneout-clip": ("gru", Variant(layer_norm=True, zoneout=ZONEOUT, clip=CLIP)),
}


def variant_cases(*names) -> dict:
    """The entries of VARIANT_CASES named, in that order."""
    return {name: VARIANT_CASES[name] for name in names}


def make_problem(cell: Cell, T, B, I, H, dtype=np.float64, seed=0, bias=True, states=True,
                 lengths=False, scale=0.5):
    """Random inputs for one direction, as a dict of keyword arguments for *_forward: those of
    ``make_params`` with weights in +-``scale``, then (``lengths=True``) sequence lengths from
    the same generator."""
    rng = np.random.default_rng(seed)
    p = make_params(cell, T, B, I, H, dtype, rng, bias=bias, states=states, scale=scale)
    if lengths:
        L = rng.integers(1, T + 1, B)
        L[0] = T  # one full-length sequence
        if B > 2:
            L[2] = L[1]  # a tie
        p["lengths"] = L
    return p


def run(cell, problem, cot, backend, reverse=False):
    """Forward and backward through the functional API; returns (outputs dict, grads dict)."""
    out = fastrnn_forward(cell, problem, reverse=reverse, backend=backend)
    return outputs(cell, out), gradients(fastrnn_backward(cell, out[-1], cot))


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
    states = []  # h0 (and c0) as (D, B, H), the unused forward half zeros
    for name in cell.named("{}0"):
        s0 = zeros if problem.get(name) is None else problem[name]
        states.append(torch.from_numpy(np.stack([zeros, s0][-D:]).copy()).requires_grad_())
    lengths = problem.get("lengths")
    inp = xt if lengths is None else pack_padded_sequence(
        xt, torch.as_tensor(lengths), enforce_sorted=False)
    out, state = mod(inp, cell.as_hx(states))
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    finals = [s[D - 1] for s in cell.from_hx(state)]  # h_n (and c_n) of this direction
    y = out[..., (D - 1) * H:]
    loss = (y * torch.from_numpy(cot["dy"])).sum()
    for name, s in zip(cell.named("d{}_n"), finals):
        loss = loss + (s * torch.from_numpy(cot[name])).sum()
    loss.backward()
    outs = outputs(cell, [t.detach().numpy() for t in (y, *finals)])
    grads = {"dx": xt.grad.numpy(), "dW_ih": getattr(mod, f"weight_ih_l0{suffix}").grad.numpy(),
             "dW_hh": getattr(mod, f"weight_hh_l0{suffix}").grad.numpy()}
    if bias:
        grads["db_ih"] = getattr(mod, f"bias_ih_l0{suffix}").grad.numpy()
        grads["db_hh"] = getattr(mod, f"bias_hh_l0{suffix}").grad.numpy()
    for name, s0 in zip(cell.named("d{}0"), states):
        grads[name] = s0.grad[D - 1].numpy()
    return outs, grads

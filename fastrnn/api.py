"""The functional API: check inputs, pick a backend, run the engine.

Every check happens before any kernel runs, and names the argument, what was expected and what
was given. Inputs are never modified; non-contiguous inputs are copied to contiguous ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, Optional

import numpy as np

from . import dispatch
from .backends.base import Direction
from .cells import ALL_CELLS, Cell, Variant, cell_by_name, saved_bytes
from .checks import (check_dtype, check_flag, check_lengths, check_same, check_shape, check_size,
                     contiguous)
from .engine import Context, check_ctx, check_grad, run_backward, run_forward

# ----------------------------------------------------------------------------------------------
# Results


class RNNResult(NamedTuple):
    y: Any
    h_n: Any
    ctx: Optional[Context]


class LSTMResult(NamedTuple):
    y: Any
    h_n: Any
    c_n: Any
    ctx: Optional[Context]


@dataclass
class Gradients:
    """Gradients of one backward call. db_* is None where the bias was None; dc0 only for LSTM;
    dP (3, H) only for an LSTM with peepholes."""

    dx: Any
    dW_ih: Any
    dW_hh: Any
    db_ih: Any
    db_hh: Any
    dh0: Any
    dc0: Any = None
    dP: Any = None


# ----------------------------------------------------------------------------------------------
# One direction's checks


@lru_cache(maxsize=None)
def _cell(kind, **options):
    """The Cell of a call, made once per variant (a one-step call feels each microsecond)."""
    return Cell(kind, **options)


def _variant_cell(kind, peepholes=None, clip=None, **options):
    """The Cell of a call with the variant its arguments select: ``peepholes`` an array or None,
    ``clip`` None or a positive number (checked here, naming the argument)."""
    if clip is not None:
        if isinstance(clip, (bool, np.bool_)) or not isinstance(clip, (int, float, np.number)):
            raise TypeError(f"clip must be None or a positive number, got {type(clip).__name__}")
        clip = float(clip)
        if not clip > 0 or clip == float("inf"):
            raise ValueError(f"clip must be None or a positive finite number, got {clip!r}")
    if peepholes is None and clip is None:
        return _cell(kind, **options)
    return _cell(kind, variant=Variant(peepholes=peepholes is not None, clip=clip), **options)


def prepare(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, backend,
            peepholes=None):
    """Check one direction's inputs; returns (backend, x, Direction, lengths, training)."""
    named = {"x": x, "W_ih": W_ih, "W_hh": W_hh}
    for name, a in (("b_ih", b_ih), ("b_hh", b_hh), ("h0", h0), ("c0", c0),
                    ("peepholes", peepholes)):
        if a is not None:
            named[name] = a
    library, dtype = check_same(named)
    reverse = check_flag("reverse", reverse)
    training = check_flag("training", training)
    G = cell.gates
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, I), got shape {tuple(x.shape)}")
    T, B, I = x.shape
    if W_hh.ndim != 2 or W_hh.shape[0] != G * W_hh.shape[1] or W_hh.shape[1] < 1:
        raise ValueError(
            f"W_hh must have shape (G*H, H) with G = {G} for {cell.name} and H >= 1, "
            f"got {tuple(W_hh.shape)}")
    H = W_hh.shape[1]
    if I < 1:
        raise ValueError(f"x must have input size I >= 1, got shape {tuple(x.shape)}")
    check_shape("W_ih", W_ih, (G * H, I), "(G*H, I)")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_shape(name, b, (G * H,), "(G*H,)")
    for name, s in (("h0", h0), ("c0", c0)):
        if s is not None:
            check_shape(name, s, (B, H), "(B, H)")
    if c0 is not None and not cell.has_cell_state:
        raise ValueError(f"c0 is only for the LSTM, not {cell.name}")
    if peepholes is not None:
        check_shape("peepholes", peepholes, (3, H), "(3, H) (rows p_i, p_f, p_o)")
    lengths = check_lengths(lengths, T, B)
    chosen = dispatch.select(backend, library)
    xp = chosen.xp
    h0 = xp.zeros((B, H), dtype) if h0 is None else contiguous(xp, h0)
    if cell.has_cell_state:
        c0 = xp.zeros((B, H), dtype) if c0 is None else contiguous(xp, c0)
    d = Direction(contiguous(xp, W_ih), contiguous(xp, W_hh), contiguous(xp, b_ih),
                  contiguous(xp, b_hh), h0, c0, reverse, contiguous(xp, peepholes))
    return chosen, contiguous(xp, x), d, lengths, training


# ----------------------------------------------------------------------------------------------
# The public functions


def _forward(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, backend,
             peepholes=None):
    chosen, x, d, lengths, training = prepare(
        cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, backend, peepholes)
    y, h_n, c_n, ctx = run_forward(cell, chosen, x, [d], lengths, training)
    return y, h_n[0], None if c_n is None else c_n[0], ctx


def _backward(ctx, kind, func, dy, dh_n, dc_n=None):
    check_ctx(ctx, kind, func)
    T, B, _ = ctx.x_shape
    H = ctx.H
    dy = check_grad("dy", dy, (T, B, H), "(T, B, H)", ctx)
    dh_n = check_grad("dh_n", dh_n, (B, H), "(B, H)", ctx)[None]
    if ctx.cell.has_cell_state:
        dc_n = check_grad("dc_n", dc_n, (B, H), "(B, H)", ctx)[None]
    dx, (g,) = run_backward(ctx, dy, dh_n, dc_n)
    return Gradients(dx, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh, g.dh0, g.dc0, g.dP)


def rnn_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=True, backend=None,
                clip=None) -> RNNResult:
    """Elman RNN over x (T, B, I): h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.

    W_ih (H, I), W_hh (H, H), b_ih/b_hh (H,) or None, h0 (B, H) or None (zeros).
    ``clip`` (ONNX's): None, or the bound the input of act is clamped to, [-clip, clip]
    (cells.Variant; the Numba backend runs it).
    Returns (y (T, B, H), h_n (B, H), ctx); ctx is None when ``training`` is False.
    """
    if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    cell = _variant_cell("rnn", clip=clip, nonlinearity=nonlinearity)
    y, h_n, _, ctx = _forward(cell, x, W_ih, W_hh, b_ih, b_hh, h0, None, lengths, reverse,
                              training, backend)
    return RNNResult(y, h_n, ctx)


def lstm_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, lengths=None,
                 reverse=False, training=True, backend=None, peepholes=None,
                 clip=None) -> LSTMResult:
    """LSTM over x (T, B, I), gates i, f, g, o stacked in that order (PyTorch's).

    W_ih (4H, I), W_hh (4H, H), b_ih/b_hh (4H,) or None, h0/c0 (B, H) or None (zeros).
    ``peepholes`` (ONNX's P): None or (3, H), rows p_i, p_f, p_o: i and f see p * c, o sees
    p_o * c'; lstm_backward then returns dP. ``clip`` (ONNX's): None, or the bound every gate's
    input (peephole term included) is clamped to. Both as cells.Variant says; the Numba backend
    runs them.
    Returns (y (T, B, H), h_n (B, H), c_n (B, H), ctx).
    """
    cell = _variant_cell("lstm", peepholes, clip)
    y, h_n, c_n, ctx = _forward(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse,
                                training, backend, peepholes)
    return LSTMResult(y, h_n, c_n, ctx)


def gru_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, *, linear_before_reset=True,
                lengths=None, reverse=False, training=True, backend=None,
                clip=None) -> RNNResult:
    """GRU over x (T, B, I), gates r, z, n stacked in that order (PyTorch's).

    ``linear_before_reset=True`` is PyTorch's form, n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    False is the textbook form, n = tanh(W_in x + b_in + W_hn (r*h) + b_hn).
    W_ih (3H, I), W_hh (3H, H), b_ih/b_hh (3H,) or None, h0 (B, H) or None (zeros).
    ``clip`` (ONNX's): None, or the bound the inputs of r, z and n are clamped to
    (cells.Variant; the Numba backend runs it).
    Returns (y (T, B, H), h_n (B, H), ctx).
    """
    lbr = check_flag("linear_before_reset", linear_before_reset)
    cell = _variant_cell("gru", clip=clip, linear_before_reset=lbr)
    y, h_n, _, ctx = _forward(cell, x, W_ih, W_hh, b_ih, b_hh, h0, None, lengths, reverse,
                              training, backend)
    return RNNResult(y, h_n, ctx)


def rnn_backward(ctx, dy=None, dh_n=None) -> Gradients:
    """Gradients of an rnn_forward given dy (T, B, H) and dh_n (B, H); None means zeros."""
    return _backward(ctx, "rnn", "rnn_backward", dy, dh_n)


def lstm_backward(ctx, dy=None, dh_n=None, dc_n=None) -> Gradients:
    """Gradients of an lstm_forward given dy (T, B, H), dh_n and dc_n (B, H); None means zeros."""
    return _backward(ctx, "lstm", "lstm_backward", dy, dh_n, dc_n)


def gru_backward(ctx, dy=None, dh_n=None) -> Gradients:
    """Gradients of a gru_forward given dy (T, B, H) and dh_n (B, H); None means zeros."""
    return _backward(ctx, "gru", "gru_backward", dy, dh_n)


# ----------------------------------------------------------------------------------------------
# Memory


def training_memory(cell, T, B, I, H, dtype=np.float32, *, num_layers=1, bidirectional=False,
                    batch_first=False, dropout=0.0) -> int:
    """Bytes a training forward on a fused backend ("numba", "cupy") keeps until its backward.

    ``cell`` is a ``Cell`` or a name ("rnn" / "rnn_tanh", "rnn_relu", "lstm", "gru",
    "gru_textbook"). The defaults describe ``*_forward`` (one direction, one layer); the keywords
    describe an ``RNN`` / ``LSTM`` / ``GRU`` layer. Counted: what each layer's backward needs
    beyond its parameters (cells.py lists it), the input of every layer above the first (the
    output of the layer below), both directions' input weights concatenated when bidirectional,
    dropout masks, and the time-major copy of x that batch_first makes. Not counted: the
    caller's own C-contiguous inputs, which are kept by reference (a non-contiguous input is
    kept as a contiguous copy of its size), nor the at most one int64 per batch row and
    direction that a backend may keep for sequence lengths. The NumPy reference backend keeps
    per-step caches instead and is not described by this.
    """
    if isinstance(cell, str):
        names = [c.name for c in ALL_CELLS]
        cell = cell_by_name(cell) if cell in names else Cell(cell)
    elif not isinstance(cell, Cell):
        raise TypeError(f"cell must be a fastrnn Cell or a cell name, got {type(cell).__name__}")
    for name, value in {"T": T, "B": B, "I": I, "H": H, "num_layers": num_layers}.items():
        check_size(name, value, 0 if name in "TB" else 1)
    dtype = check_dtype(dtype)
    bidirectional = check_flag("bidirectional", bidirectional)
    batch_first = check_flag("batch_first", batch_first)
    if T == 0 or B == 0:
        return 0
    dropout = float(dropout) > 0  # the layer's dropout probability: only whether it is used
    D, n = (2 if bidirectional else 1), dtype.itemsize
    total = T * B * I * n if batch_first else 0
    for k in range(num_layers):
        I_k = I if k == 0 else D * H
        total += saved_bytes(cell, T, B, H, n, D)
        if D == 2:
            total += D * cell.gates * H * I_k * n
        if k > 0:
            total += T * B * I_k * n * (2 if dropout else 1)  # input (and its dropout mask)
    return int(total)

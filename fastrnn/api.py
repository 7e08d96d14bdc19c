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
from .checks import (check_dtype, check_flag, check_lengths, check_probability, check_same,
                     check_shape, check_size, contiguous)
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
    the gradient of each variant parameter (dP, dW_hr, dg_ih, dg_hh, dg_c, db_c) only where the
    forward had it."""

    dx: Any
    dW_ih: Any
    dW_hh: Any
    db_ih: Any
    db_hh: Any
    dh0: Any
    dc0: Any = None
    dP: Any = None
    dW_hr: Any = None
    dg_ih: Any = None
    dg_hh: Any = None
    dg_c: Any = None
    db_c: Any = None


# ----------------------------------------------------------------------------------------------
# One direction's checks


@lru_cache(maxsize=None)
def _cell(kind, **options):
    """The Cell of a call, made once per variant (a one-step call feels each microsecond)."""
    return Cell(kind, **options)


# What each variant argument of the functional API means: its Direction field and the shape it
# must have, in the symbols of the error messages.
_VARIANT_ARGUMENTS = {"peepholes": ("P", "(3, H) (rows p_i, p_f, p_o)"),
                      "W_hr": ("W_hr", "(proj_size, H)"), "g_ih": ("g_ih", "(G*H,)"),
                      "g_hh": ("g_hh", "(G*H,)"), "g_c": ("g_c", "(H,)"), "b_c": ("b_c", "(H,)")}


def _variant_cell(kind, variant_args, clip=None, zoneout=0.0, **options):
    """The Cell of a call with the variant its arguments select (``variant_args``: the given
    ones of ``_VARIANT_ARGUMENTS``, name -> array), checked here, naming the argument."""
    if clip is not None:
        if isinstance(clip, (bool, np.bool_)) or not isinstance(clip, (int, float, np.number)):
            raise TypeError(f"clip must be None or a positive number, got {type(clip).__name__}")
        clip = float(clip)
        if not clip > 0 or clip == float("inf"):
            raise ValueError(f"clip must be None or a positive finite number, got {clip!r}")
    zoneout = check_probability("zoneout", zoneout,
                                "the probability that a unit keeps its previous value")
    norms = [name for name in ("g_ih", "g_hh", "g_c", "b_c") if name in variant_args]
    wanted = ("g_ih", "g_hh", "g_c", "b_c") if kind == "lstm" else ("g_ih", "g_hh")
    if norms and len(norms) != len(wanted):
        raise ValueError(f"layer norm needs all of {', '.join(wanted)}; got only "
                         f"{', '.join(norms)}")
    W_hr = variant_args.get("W_hr")
    if W_hr is not None and (getattr(W_hr, "ndim", 0) != 2 or W_hr.shape[0] < 1):
        raise ValueError(f"W_hr must have shape (proj_size, H) with proj_size >= 1, got "
                         f"{tuple(getattr(W_hr, 'shape', ()))}")
    variant = Variant(proj_size=0 if W_hr is None else int(W_hr.shape[0]),
                      layer_norm=bool(norms), peepholes="peepholes" in variant_args, clip=clip,
                      zoneout=zoneout)
    return _cell(kind, variant=variant, **options)


def prepare(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, backend,
            variant_args=None, zoneout_mask=None):
    """Check one direction's inputs; returns (backend, x, Direction, lengths, training)."""
    variant_args = variant_args or {}
    named = {"x": x, "W_ih": W_ih, "W_hh": W_hh}
    for name, a in (("b_ih", b_ih), ("b_hh", b_hh), ("h0", h0), ("c0", c0),
                    ("zoneout_mask", zoneout_mask), *variant_args.items()):
        if a is not None:
            named[name] = a
    library, dtype = check_same(named)
    reverse = check_flag("reverse", reverse)
    training = check_flag("training", training)
    G, proj_size = cell.gates, cell.variant.proj_size
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, I), got shape {tuple(x.shape)}")
    T, B, I = x.shape
    out = "proj_size" if proj_size else "H"
    if (W_hh.ndim != 2 or W_hh.shape[0] % G or W_hh.shape[0] < G
            or W_hh.shape[1] != (proj_size or W_hh.shape[0] // G)):
        raise ValueError(
            f"W_hh must have shape (G*H, {out}) with G = {G} for {cell.name} and H >= 1, "
            f"got {tuple(W_hh.shape)}")
    H = W_hh.shape[0] // G
    H_out = cell.variant.hidden_size(H)
    if proj_size >= H:
        raise ValueError(f"W_hr must have shape (proj_size, H) with proj_size < H = {H} "
                         f"(as torch.nn.LSTM), got {tuple(variant_args['W_hr'].shape)}")
    if I < 1:
        raise ValueError(f"x must have input size I >= 1, got shape {tuple(x.shape)}")
    check_shape("W_ih", W_ih, (G * H, I), "(G*H, I)")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_shape(name, b, (G * H,), "(G*H,)")
    for name, s, width in (("h0", h0, H_out), ("c0", c0, H)):
        if s is not None:
            check_shape(name, s, (B, width), f"(B, {out if name == 'h0' else 'H'})")
    if c0 is not None and not cell.has_cell_state:
        raise ValueError(f"c0 is only for the LSTM, not {cell.name}")
    shapes = cell.variant.param_shapes(cell, I, H)
    for name, a in variant_args.items():
        field, labels = _VARIANT_ARGUMENTS[name]
        check_shape(name, a, shapes[field], labels)
    zoneout = cell.variant.zoneout
    if zoneout_mask is not None:
        if not zoneout:
            raise ValueError("zoneout_mask is given but zoneout is 0: pass zoneout=p as well")
        check_shape("zoneout_mask", zoneout_mask, (T, B, H_out), f"(T, B, {out})")
    elif zoneout and training:
        raise ValueError("zoneout in training needs zoneout_mask (T, B, H_out): 1 where a unit "
                         "takes its new value (probability 1 - zoneout), 0 where it keeps its "
                         "previous one")
    lengths = check_lengths(lengths, T, B)
    chosen = dispatch.select(backend, library)
    xp = chosen.xp
    h0 = xp.zeros((B, H_out), dtype) if h0 is None else contiguous(xp, h0)
    if cell.has_cell_state:
        c0 = xp.zeros((B, H), dtype) if c0 is None else contiguous(xp, c0)
    if zoneout and zoneout_mask is None:  # evaluation: h' = p h + (1 - p) h_new
        zoneout_mask = xp.full((T, B, H_out), 1 - zoneout, dtype)
    d = Direction(contiguous(xp, W_ih), contiguous(xp, W_hh), contiguous(xp, b_ih),
                  contiguous(xp, b_hh), h0, c0, reverse,
                  zoneout_mask=contiguous(xp, zoneout_mask),
                  **{_VARIANT_ARGUMENTS[name][0]: contiguous(xp, a)
                     for name, a in variant_args.items()})
    return chosen, contiguous(xp, x), d, lengths, training


# ----------------------------------------------------------------------------------------------
# The public functions


def _forward(kind, options, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training,
             backend, clip=None, zoneout=0.0, zoneout_mask=None, **variant_args):
    variant_args = {name: a for name, a in variant_args.items() if a is not None}
    cell = (_cell(kind, **options) if not variant_args and clip is None and not zoneout
            else _variant_cell(kind, variant_args, clip, zoneout, **options))
    chosen, x, d, lengths, training = prepare(
        cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, backend,
        variant_args, zoneout_mask)
    y, h_n, c_n, ctx = run_forward(cell, chosen, x, [d], lengths, training)
    return y, h_n[0], None if c_n is None else c_n[0], ctx


def _backward(ctx, kind, func, dy, dh_n, dc_n=None):
    check_ctx(ctx, kind, func)
    T, B, _ = ctx.x_shape
    H = ctx.H
    out = "proj_size" if ctx.cell.variant.proj_size else "H"
    dy = check_grad("dy", dy, (T, B, H), f"(T, B, {out})", ctx)
    dh_n = check_grad("dh_n", dh_n, (B, H), f"(B, {out})", ctx)[None]
    if ctx.cell.has_cell_state:
        dc_n = check_grad("dc_n", dc_n, (B, ctx.C), "(B, H)", ctx)[None]
    dx, (g,) = run_backward(ctx, dy, dh_n, dc_n)
    return Gradients(dx, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh, g.dh0, g.dc0, **g.variant_grads)


_ZONEOUT_DOC = """``zoneout`` (cells.Variant, on h only): the probability p that a unit keeps its previous
    value, h' = h + M (h_new - h). In training ``zoneout_mask`` M (T, B, H_out) must be given
    (1 where a unit takes its new value, drawn with probability 1 - p; backward uses the same
    M); in inference M = 1 - p unless given."""


def rnn_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=True, backend=None,
                clip=None, zoneout=0.0, zoneout_mask=None) -> RNNResult:
    """Elman RNN over x (T, B, I): h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.

    W_ih (H, I), W_hh (H, H), b_ih/b_hh (H,) or None, h0 (B, H) or None (zeros).
    ``clip`` (ONNX's): None, or the bound the input of act is clamped to, [-clip, clip].
    {zoneout}
    Returns (y (T, B, H), h_n (B, H), ctx); ctx is None when ``training`` is False.
    """
    if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    y, h_n, _, ctx = _forward("rnn", {"nonlinearity": nonlinearity}, x, W_ih, W_hh, b_ih, b_hh,
                              h0, None, lengths, reverse, training, backend, clip, zoneout,
                              zoneout_mask)
    return RNNResult(y, h_n, ctx)


def lstm_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, lengths=None,
                 reverse=False, training=True, backend=None, peepholes=None, clip=None,
                 W_hr=None, g_ih=None, g_hh=None, g_c=None, b_c=None, zoneout=0.0,
                 zoneout_mask=None) -> LSTMResult:
    """LSTM over x (T, B, I), gates i, f, g, o stacked in that order (PyTorch's).

    W_ih (4H, I), W_hh (4H, H_out), b_ih/b_hh (4H,) or None, h0 (B, H_out), c0 (B, H) or None
    (zeros); H_out is H, or proj_size with ``W_hr``. The variants (cells.Variant gives the
    equations; each gradient comes back in the Gradients field "d" + its name):
    ``peepholes`` (ONNX's P): None or (3, H), rows p_i, p_f, p_o: i and f see p * c, o sees
    p_o * c'; its gradient is dP. ``clip`` (ONNX's): None, or the bound every gate's input
    (peephole term included) is clamped to. ``W_hr`` (proj_size, H): torch.nn.LSTM's
    projection, h = W_hr (o * tanh(c')). ``g_ih``, ``g_hh`` (4H,), ``g_c``, ``b_c`` (H,), all
    four or none: the layer-normalised LSTM. {zoneout}
    Returns (y (T, B, H_out), h_n (B, H_out), c_n (B, H), ctx).
    """
    y, h_n, c_n, ctx = _forward("lstm", {}, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths,
                                reverse, training, backend, clip, zoneout, zoneout_mask,
                                peepholes=peepholes, W_hr=W_hr, g_ih=g_ih, g_hh=g_hh, g_c=g_c,
                                b_c=b_c)
    return LSTMResult(y, h_n, c_n, ctx)


def gru_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, *, linear_before_reset=True,
                lengths=None, reverse=False, training=True, backend=None,
                clip=None, g_ih=None, g_hh=None, zoneout=0.0, zoneout_mask=None) -> RNNResult:
    """GRU over x (T, B, I), gates r, z, n stacked in that order (PyTorch's).

    ``linear_before_reset=True`` is PyTorch's form, n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    False is the textbook form, n = tanh(W_in x + b_in + W_hn (r*h) + b_hn).
    W_ih (3H, I), W_hh (3H, H), b_ih/b_hh (3H,) or None, h0 (B, H) or None (zeros).
    ``clip`` (ONNX's): None, or the bound the inputs of r, z and n are clamped to. ``g_ih``,
    ``g_hh`` (3H,), both or neither: the layer-normalised GRU (linear_before_reset only).
    {zoneout}
    Returns (y (T, B, H), h_n (B, H), ctx).
    """
    lbr = check_flag("linear_before_reset", linear_before_reset)
    y, h_n, _, ctx = _forward("gru", {"linear_before_reset": lbr}, x, W_ih, W_hh, b_ih, b_hh,
                              h0, None, lengths, reverse, training, backend, clip, zoneout,
                              zoneout_mask, g_ih=g_ih, g_hh=g_hh)
    return RNNResult(y, h_n, ctx)


for _function in (rnn_forward, lstm_forward, gru_forward):
    _function.__doc__ = _function.__doc__.replace("{zoneout}", _ZONEOUT_DOC)


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
                    batch_first=False, dropout=0.0, layer=False, backend="numba") -> int:
    """Bytes a training forward on a fused backend ("numba", "cupy") keeps until its backward.

    ``cell`` is a ``Cell`` (a variant included) or a name ("rnn" / "rnn_tanh", "rnn_relu",
    "lstm", "gru", "gru_textbook"). The defaults describe ``*_forward`` (one direction, one
    layer); the keywords, with ``layer=True``, describe an ``RNN`` / ``LSTM`` / ``GRU`` layer
    or module. Counted: what each layer's backward needs beyond its parameters (cells.py lists
    it, ``saved_bytes`` adds the variants'), the input of every layer above the first (the
    output of the layer below), both directions' input weights concatenated when bidirectional,
    dropout masks, a layer's zoneout masks (the functional API's ``zoneout_mask`` is the
    caller's, kept by reference), and the time-major copy of x that batch_first makes. Not
    counted: the caller's own C-contiguous inputs, which are kept by reference (a
    non-contiguous input is kept as a contiguous copy of its size), nor what a backend keeps
    for sequence lengths: at most one int64 per batch row and direction, and, for the Numba
    backend with zoneout, the mask's valid rows packed. ``backend`` matters for layer norm,
    whose row statistics only CUDA keeps. The NumPy reference backend keeps per-step caches
    instead and is not described by this.
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
    layer = check_flag("layer", layer)
    if backend not in ("numba", "cupy"):
        raise ValueError(f"backend must be 'numba' or 'cupy' (the fused backends), got "
                         f"{backend!r}")
    if T == 0 or B == 0:
        return 0
    dropout = float(dropout) > 0  # the layer's dropout probability: only whether it is used
    D, n = (2 if bidirectional else 1), dtype.itemsize
    H_out = cell.variant.hidden_size(H)
    total = T * B * I * n if batch_first else 0
    for k in range(num_layers):
        I_k = I if k == 0 else D * H_out
        total += saved_bytes(cell, T, B, H, n, D, backend)
        if D == 2:
            total += D * cell.gates * H * I_k * n
        if k > 0:
            total += T * B * I_k * n * (2 if dropout else 1)  # input (and its dropout mask)
        if layer and cell.variant.zoneout:
            total += D * T * B * H_out * n
    return int(total)

"""The functional API: check inputs, pick a backend, call it.

Every check happens here, before any kernel runs, and names the argument, what was expected and
what was given. Inputs are never modified; non-contiguous inputs are copied to contiguous ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import numpy as np

from . import dispatch
from .backends.base import Direction
from .cells import ALL_CELLS, Cell, cell_by_name, saved_bytes

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------------------------
# Results


class RNNResult(NamedTuple):
    y: Any
    h_n: Any
    ctx: Optional["Context"]


class LSTMResult(NamedTuple):
    y: Any
    h_n: Any
    c_n: Any
    ctx: Optional["Context"]


@dataclass
class Gradients:
    """Gradients of one backward call. db_* is None where the bias was None; dc0 only for LSTM."""

    dx: Any
    dW_ih: Any
    dW_hh: Any
    db_ih: Any
    db_hh: Any
    dh0: Any
    dc0: Any = None


class Context:
    """What a training forward kept for its backward. Backward consumes it and frees the state."""

    def __init__(self, cell, backend, saved, x_shape, H, dtype, library, biased, directions=1):
        self.cell = cell
        self.backend = backend
        self.saved = saved
        self.x_shape = x_shape
        self.H = H
        self.dtype = dtype
        self.library = library
        self.biased = biased  # [(has b_ih, has b_hh)] per direction
        self.directions = directions
        self.consumed = False

    def __repr__(self):
        state = "consumed" if self.consumed else "ready"
        return (f"<fastrnn Context {self.cell.name} x{self.x_shape} H={self.H} "
                f"backend={self.backend.name} {state}>")


# ----------------------------------------------------------------------------------------------
# Checks


def array_library(a) -> str:
    """'numpy' or 'cupy' for a supported array, else a descriptive module name."""
    if isinstance(a, np.ndarray):
        return "numpy"
    module = type(a).__module__.split(".")[0]
    return module


def check_array(name, a, library=None):
    """``a`` must be a NumPy or CuPy float32/float64 array; returns its library."""
    if a is None:
        raise TypeError(f"{name} is required: expected a float32 or float64 array, got None")
    lib = array_library(a)
    # (a NumPy dtype, generator or finfo comes from "numpy" too, but is no array)
    if lib not in ("numpy", "cupy") or not all(hasattr(a, n) for n in ("dtype", "shape", "ndim")):
        hint = " (convert it with .numpy() or numpy.asarray)" if lib == "torch" else ""
        raise TypeError(
            f"{name} must be a NumPy or CuPy array, got {type(a).__module__}."
            f"{type(a).__name__}{hint}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array, whose mask fastrnn would ignore: pass "
                        f"{name}.filled(0) (and lengths for padded sequences)")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return lib


def check_same(arrays: dict):
    """All given arrays share one library and one dtype; returns (library, dtype)."""
    libs = {n: check_array(n, a) for n, a in arrays.items()}
    if len(set(libs.values())) > 1:
        groups = {}
        for n, lib in libs.items():
            groups.setdefault(lib, []).append(n)
        desc = "; ".join(f"{', '.join(ns)} from {lib}" for lib, ns in groups.items())
        raise TypeError(f"arrays from different libraries in one call: {desc}")
    dtypes = {n: a.dtype for n, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"arrays must share one dtype (no silent casting): {desc}")
    name0 = next(iter(arrays))
    return libs[name0], arrays[name0].dtype


def check_shape(name, a, expected, labels):
    """``expected`` is a tuple of ints; ``labels`` spells it, e.g. '(G*H, I) = (4*64, 10)'."""
    if a.ndim != len(expected) or tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {labels} = {tuple(expected)}, got {tuple(a.shape)}")


def check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_lengths(lengths, T, B):
    """None, or a host int64 array (B,) with 1 <= L_b <= T."""
    if lengths is None:
        return None
    if hasattr(lengths, "get") and array_library(lengths) == "cupy":
        lengths = lengths.get()
    if isinstance(lengths, (list, tuple)) and not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            for v in lengths):
        bad = next(v for v in lengths if not isinstance(v, (int, np.integer))
                   or isinstance(v, (bool, np.bool_)))
        raise TypeError(f"lengths must hold integers, got {type(bad).__name__} {bad!r}")
    try:
        arr = np.asarray(lengths)
    except Exception as exc:  # noqa: BLE001 - anything unconvertible is a type error here
        raise TypeError(f"lengths must be a sequence of {B} integers, got {type(lengths).__name__}") from exc
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {arr.shape}")
    if B and (arr.min() < 1 or arr.max() > T):
        raise ValueError(
            f"lengths must lie in [1, T] = [1, {T}], got values from {arr.min()} to {arr.max()}")
    return arr.astype(np.int64)


def contiguous(xp, a):
    return None if a is None else xp.ascontiguousarray(a)


def xp_of(library):
    if library == "numpy":
        return np
    import cupy  # only ever reached with CuPy arrays in hand

    return cupy


def prepare(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, backend):
    """Check one direction's inputs; returns (backend, x, Direction, lengths, library)."""
    named = {"x": x, "W_ih": W_ih, "W_hh": W_hh}
    for name, a in (("b_ih", b_ih), ("b_hh", b_hh), ("h0", h0), ("c0", c0)):
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
    lengths = check_lengths(lengths, T, B)
    chosen = dispatch.select(backend, library)
    xp = chosen.xp
    h0 = xp.zeros((B, H), dtype) if h0 is None else contiguous(xp, h0)
    if cell.has_cell_state:
        c0 = xp.zeros((B, H), dtype) if c0 is None else contiguous(xp, c0)
    d = Direction(contiguous(xp, W_ih), contiguous(xp, W_hh), contiguous(xp, b_ih),
                  contiguous(xp, b_hh), h0, c0, reverse)
    return chosen, contiguous(xp, x), d, lengths, library, training


def run_forward(cell, backend, x, dirs, lengths, training, library):
    """Run a checked forward; T = 0 or B = 0 gives empty outputs with h_n = h0."""
    xp = backend.xp
    T, B, _ = x.shape
    H = dirs[0].W_hh.shape[1]
    if T == 0 or B == 0:
        y = xp.zeros((T, B, len(dirs) * H), x.dtype)
        h_n = xp.stack([d.h0 for d in dirs]).copy()
        c_n = xp.stack([d.c0 for d in dirs]).copy() if cell.has_cell_state else None
        saved = ("empty", x, dirs) if training else None
    else:
        y, h_n, c_n, saved = backend.forward(cell, x, dirs, lengths, training)
    ctx = None
    if training:
        ctx = Context(cell, backend, saved, tuple(x.shape), H, x.dtype, library,
                      [(d.b_ih is not None, d.b_hh is not None) for d in dirs], len(dirs))
    return y, h_n, c_n, ctx


def check_ctx(ctx, cell_kind, func):
    if ctx is None:
        raise TypeError(
            f"ctx is None: the forward ran with training=False, which keeps nothing for "
            f"backward; run {cell_kind}_forward with training=True before {func}")
    if not isinstance(ctx, Context):
        raise TypeError(f"ctx must be the Context returned by {cell_kind}_forward, "
                        f"got {type(ctx).__name__}")
    if ctx.cell.kind != cell_kind:
        raise TypeError(f"ctx comes from {ctx.cell.kind}_forward; pass it to "
                        f"{ctx.cell.kind}_backward, not {func}")
    if ctx.consumed:
        raise ValueError("ctx was already consumed by a backward call, which freed what it kept; "
                         "run the forward again to backpropagate again")


def check_grad(name, g, shape, labels, ctx):
    """A gradient argument: None means zeros; else the ctx's library, dtype and this shape."""
    xp = ctx.backend.xp
    if g is None:
        return xp.zeros(shape, ctx.dtype)
    lib = check_array(name, g)
    if lib != ctx.library:
        raise TypeError(f"{name} is a {lib} array but the forward ran on {ctx.library} arrays")
    if g.dtype != ctx.dtype:
        raise TypeError(f"{name} must have the forward's dtype {ctx.dtype}, got {g.dtype}")
    check_shape(name, g, shape, labels)
    return xp.ascontiguousarray(g)


def run_backward(ctx, dy, dh_n, dc_n):
    """Run a checked backward; returns (dx, [DirectionGrads]) and consumes ctx."""
    ctx.consumed = True
    saved, ctx.saved = ctx.saved, None
    if isinstance(saved, tuple) and saved and isinstance(saved[0], str) and saved[0] == "empty":
        return _empty_backward(ctx.cell, saved, dh_n, dc_n)
    return ctx.backend.backward(ctx.cell, saved, dy, dh_n, dc_n)


def _empty_backward(cell, saved, dh_n, dc_n):
    from .backends.base import DirectionGrads

    _, x, dirs = saved
    grads = []
    for k, d in enumerate(dirs):
        zeros = [None if b is None else b * 0 for b in (d.b_ih, d.b_hh)]
        grads.append(DirectionGrads(
            d.W_ih * 0, d.W_hh * 0, zeros[0], zeros[1], dh_n[k].copy(),
            dc_n[k].copy() if cell.has_cell_state else None))
    return x * 0, grads


# ----------------------------------------------------------------------------------------------
# The public functions


def _forward(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, backend):
    chosen, x, d, lengths, library, training = prepare(
        cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, backend)
    y, h_n, c_n, ctx = run_forward(cell, chosen, x, [d], lengths, training, library)
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
    return Gradients(dx, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh, g.dh0, g.dc0)


def rnn_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=True, backend=None) -> RNNResult:
    """Elman RNN over x (T, B, I): h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.

    W_ih (H, I), W_hh (H, H), b_ih/b_hh (H,) or None, h0 (B, H) or None (zeros).
    Returns (y (T, B, H), h_n (B, H), ctx); ctx is None when ``training`` is False.
    """
    if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    y, h_n, _, ctx = _forward(Cell("rnn", nonlinearity=nonlinearity), x, W_ih, W_hh, b_ih, b_hh,
                              h0, None, lengths, reverse, training, backend)
    return RNNResult(y, h_n, ctx)


def lstm_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, lengths=None,
                 reverse=False, training=True, backend=None) -> LSTMResult:
    """LSTM over x (T, B, I), gates i, f, g, o stacked in that order (PyTorch's).

    W_ih (4H, I), W_hh (4H, H), b_ih/b_hh (4H,) or None, h0/c0 (B, H) or None (zeros).
    Returns (y (T, B, H), h_n (B, H), c_n (B, H), ctx).
    """
    y, h_n, c_n, ctx = _forward(Cell("lstm"), x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths,
                                reverse, training, backend)
    return LSTMResult(y, h_n, c_n, ctx)


def gru_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, *, linear_before_reset=True,
                lengths=None, reverse=False, training=True, backend=None) -> RNNResult:
    """GRU over x (T, B, I), gates r, z, n stacked in that order (PyTorch's).

    ``linear_before_reset=True`` is PyTorch's form, n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    False is the textbook form, n = tanh(W_in x + b_in + W_hn (r*h) + b_hn).
    W_ih (3H, I), W_hh (3H, H), b_ih/b_hh (3H,) or None, h0 (B, H) or None (zeros).
    Returns (y (T, B, H), h_n (B, H), ctx).
    """
    lbr = check_flag("linear_before_reset", linear_before_reset)
    y, h_n, _, ctx = _forward(Cell("gru", linear_before_reset=lbr), x, W_ih, W_hh, b_ih, b_hh,
                              h0, None, lengths, reverse, training, backend)
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
    sizes = {"T": T, "B": B, "I": I, "H": H, "num_layers": num_layers}
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if value < (0 if name in "TB" else 1):
            raise ValueError(f"{name} must be at least {0 if name in 'TB' else 1}, got {value}")
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
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

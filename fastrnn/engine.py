"""The engine under every front end: run one layer's directions forward on a backend, keep what
backward needs in a ``Context``, and run the backward that consumes it.

Inputs reach it checked (checks.py) and C-contiguous; it checks nothing itself. T = 0 or B = 0
never reaches a backend: the engine answers it here (``EmptyInput``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backends.base import DirectionGrads
from .cells import Cell
from .checks import check_array, check_shape


@dataclass
class EmptyInput:
    """What a training forward over T = 0 or B = 0 keeps: no step ran, so backward gives zero
    parameter gradients and passes the final-state gradients through as initial-state ones."""

    x: Any
    dirs: list


class Context:
    """What a training forward kept for its backward. Backward consumes it and frees the state."""

    def __init__(self, cell: Cell, backend, saved, x_shape, H, dtype, library, C=None):
        self.cell = cell
        self.backend = backend
        self.saved = saved
        self.x_shape = x_shape
        self.H = H  # the width of h and y (proj_size where the LSTM projects)
        self.C = H if C is None else C  # the width of an LSTM's c
        self.dtype = dtype
        self.library = library
        self.consumed = False

    def __repr__(self):
        state = "consumed" if self.consumed else "ready"
        return (f"<fastrnn Context {self.cell.name} x{self.x_shape} H={self.H} "
                f"backend={self.backend.name} {state}>")


def run_forward(cell, backend, x, dirs, lengths, training):
    """One layer of 1 or 2 directions; returns (y (T, B, D*H), h_n (D, B, H), c_n or None, ctx),
    ctx None unless ``training``."""
    check_variant(cell, backend)
    xp = backend.xp
    T, B, _ = x.shape
    H = dirs[0].W_hh.shape[1]  # the width of h and y: proj_size where the LSTM projects
    plain = not cell.variant.switches  # the step kernels run plain cells only
    if T == 1 and not training and len(dirs) == 1 and backend.has_step_kernel and plain:
        # One step of one direction is a decoding step: the backend's step kernel (lengths
        # are all 1 and reverse is forward at T = 1)
        d = dirs[0]
        weights = backend.step_weights(cell, [(d.W_ih, d.W_hh, d.b_ih, d.b_hh)])
        states = (d.h0[None],) if d.c0 is None else (d.h0[None], d.c0[None])
        y, finals = backend.step(cell, weights, x[0], states)
        return y[None], finals[0], finals[1] if len(finals) > 1 else None, None
    if T == 0 or B == 0:
        y = xp.zeros((T, B, len(dirs) * H), x.dtype)
        h_n = xp.stack([d.h0 for d in dirs]).copy()
        c_n = xp.stack([d.c0 for d in dirs]).copy() if cell.has_cell_state else None
        saved = EmptyInput(x, dirs) if training else None
    else:
        y, h_n, c_n, saved = backend.forward(cell, x, dirs, lengths, training)
    ctx = (Context(cell, backend, saved, tuple(x.shape), H, x.dtype, backend.library,
                   dirs[0].W_ih.shape[0] // cell.gates) if training else None)
    return y, h_n, c_n, ctx


def check_variant(cell, backend):
    """Raise NotImplementedError naming the switches of ``cell.variant`` that ``backend`` does
    not run, rather than let it run the plain cell."""
    missing = backend.unsupported(cell)
    if missing:
        described = cell.variant.described()
        wanted = ", ".join(f"{name}={described[name]!r}" for name in missing)
        raise NotImplementedError(
            f"the {backend.name!r} backend cannot run {cell.name} with {wanted}; it runs "
            f"the variant switches {sorted(backend.variant_switches) or 'none'}")


def run_backward(ctx, dy, dh_n, dc_n):
    """Backward of a checked ctx and cotangents (dy (T, B, D*H), dh_n/dc_n (D, B, H)); returns
    (dx, [DirectionGrads] * D) and consumes ctx."""
    ctx.consumed = True
    saved, ctx.saved = ctx.saved, None
    if isinstance(saved, EmptyInput):
        return _empty_backward(ctx.cell, saved, dh_n, dc_n)
    return ctx.backend.backward(ctx.cell, saved, dy, dh_n, dc_n)


def _empty_backward(cell, saved, dh_n, dc_n):
    grads = []
    for k, d in enumerate(saved.dirs):
        zeros = [None if b is None else b * 0 for b in (d.b_ih, d.b_hh)]
        grads.append(DirectionGrads(
            d.W_ih * 0, d.W_hh * 0, zeros[0], zeros[1], dh_n[k].copy(),
            dc_n[k].copy() if cell.has_cell_state else None,
            **{f"d{name}": a * 0 for name, a in d.variant_params.items()}))
    return saved.x * 0, grads


def check_ctx(ctx, cell_kind, func):
    """``ctx`` must be an unconsumed Context of a ``cell_kind`` forward, for ``func``."""
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

"""The time loop of one direction, shared by every cell; the cells (rnn.py, lstm.py, gru.py) say
which GEMMs and kernels one step launches.

Forward, per step t: the recurrent GEMM(s) ``h_prev @ W_hh.T`` through ``xp.matmul`` (cuBLAS)
and one fused pointwise kernel (two around a second GEMM for the textbook GRU). Backward, per
step in the opposite order: one fused pointwise kernel, then one GEMM ``d_gh @ W_hh`` for the
gradient flowing into the previous state. Every kernel runs one thread per (b, j) of the
(B, H) state: ``threads_per_block`` threads per block, ceil(B*H / threads_per_block) blocks.

What a training forward keeps (see fastrnn/cells.py) is a ``Saved``; the states hs/cs are
(T+1, B, H) in time order, so step t reads its entering state and writes its leaving state in
place. An inference forward alternates between two (B, H) buffers instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import loader


@dataclass
class Saved:
    """What a training forward of one direction keeps for its backward."""

    hs: Any  # (T+1, B, H)
    cs: Any  # (T+1, B, H) or None
    gates: Any  # (T, B, k*H) or None
    hn: Any  # (T, B, H) or None
    lengths: Any  # device int64 (B,) or None
    reverse: bool


class Step:
    """The views one step's launches work on; attributes unused by a cell stay None."""

    __slots__ = ("t", "x_proj", "y", "h_prev", "h_next", "c_prev", "c_next", "gates", "hn",
                 "dy", "d_gx")

    def __init__(self, t, **views):
        self.t = np.int32(t)
        for name in self.__slots__[1:]:
            setattr(self, name, views.get(name))


def row_stride(name, a):
    """Elements between consecutive rows of a (T, B, n) array whose last axis has unit stride.

    The stride of an axis of length 1 is never used (and NumPy may report any value for it).
    """
    _, B, n = a.shape
    if n > 1 and a.strides[2] != a.itemsize:
        raise ValueError(f"{name} must have a unit last stride, got strides {a.strides}")
    if B == 1:
        return np.int32(n)
    ld, rest = divmod(a.strides[1], a.itemsize)
    if rest or ld < n:
        raise ValueError(f"{name} must have rows at least {n} elements apart, got strides "
                         f"{a.strides}")
    return np.int32(ld)


def _order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


class _States:
    """Entering and leaving state of each step: slices of (T+1, B, H) when training, else two
    alternating (B, H) buffers (the first step reads the initial state, which is never written)."""

    def __init__(self, xp, s0, T, reverse, keep):
        self.keep, self.reverse, self.s0 = keep, reverse, s0
        if keep:
            self.all = xp.empty((T + 1,) + s0.shape, s0.dtype)
            self.all[T if reverse else 0] = s0
        else:
            self.pair = xp.empty((2,) + s0.shape, s0.dtype)
        self.last = None

    def step(self, n, t):
        """(prev, next) for the n-th step run, which is time step t."""
        if self.keep:
            i, o = (t + 1, t) if self.reverse else (t, t + 1)
            prev, nxt = self.all[i], self.all[o]
        else:
            prev = self.s0 if n == 0 else self.pair[(n - 1) % 2]
            nxt = self.pair[n % 2]
        self.last = nxt
        return prev, nxt


class Recurrence:
    """One direction of one cell on one device. A cell subclass sets ``file`` (its kernel
    source), ``gate_blocks`` (k of the saved gates (T, B, k*H); 0 keeps none) and ``keeps_hn``,
    and defines ``forward_step(s)`` and ``backward_step(s)``, the launches of one ``Step``.
    """

    file = ""
    gate_blocks = 0
    keeps_hn = False
    template_extra = ""

    def __init__(self, backend, cell, W_hh, b_hh, B):
        self.device = backend.device
        self.xp = backend.xp
        self.cell = cell
        self.W_hh, self.b_hh = W_hh, b_hh
        self.dtype = W_hh.dtype
        self.B, self.H = B, W_hh.shape[1]
        n = B * self.H
        if n >= 2 ** 31 or W_hh.shape[0] * B >= 2 ** 31:
            raise ValueError(f"B*G*H = {W_hh.shape[0] * B} is too large for 32-bit indexing")
        per_block = backend.threads_per_block
        self.grid = ((n + per_block - 1) // per_block,)
        self.block = (per_block,)
        self.sizes = (np.int32(B), np.int32(self.H))

    def launch(self, kernel, *args):
        """Run ``kernel`` for this dtype over the B*H units; B and H are the last arguments."""
        expression = loader.name_expression(kernel, self.dtype, self.template_extra)
        loader.kernel(self.device, self.file, expression)(self.grid, self.block,
                                                          args + self.sizes)

    # ------------------------------------------------------------------------------------------
    # Forward

    def forward(self, x_proj, h0, c0, lengths, reverse, y, training):
        xp = self.xp
        T, B, _ = x_proj.shape
        H = self.H
        self.ld_x, self.ld_y = row_stride("x_proj", x_proj), row_stride("y", y)
        self.lengths = None if lengths is None else xp.asarray(np.asarray(lengths, np.int64))
        h = _States(xp, h0, T, reverse, training)
        c = _States(xp, c0, T, reverse, training) if c0 is not None else None
        gates = hn = None
        if training and self.gate_blocks:
            gates = xp.empty((T, B, self.gate_blocks * H), self.dtype)
        if training and self.keeps_hn:
            hn = xp.empty((T, B, H), self.dtype)
        self.forward_buffers(training)
        for n, t in enumerate(_order(T, reverse)):
            h_prev, h_next = h.step(n, t)
            c_prev, c_next = c.step(n, t) if c is not None else (None, None)
            self.forward_step(Step(
                t, x_proj=x_proj[t], y=y[t], h_prev=h_prev, h_next=h_next, c_prev=c_prev,
                c_next=c_next, gates=None if gates is None else gates[t],
                hn=None if hn is None else hn[t]))
        h_n = h.last.copy()
        c_n = c.last.copy() if c is not None else None
        if not training:
            return h_n, c_n, None
        return h_n, c_n, Saved(h.all, None if c is None else c.all, gates, hn, self.lengths,
                               reverse)

    def forward_buffers(self, training):
        """Allocate the per-step scratch of the forward (the recurrent GEMM's output)."""
        self.gh = self.xp.empty((self.B, self.W_hh.shape[0]), self.dtype)

    # ------------------------------------------------------------------------------------------
    # Backward

    def backward(self, saved: Saved, dy, dh_n, dc_n, d_gx):
        """Returns (hh_terms, dh0, dc0) as FusedBackend.recurrence_backward specifies."""
        xp = self.xp
        T = dy.shape[0]
        self.ld_dy, self.ld_g = row_stride("dy", dy), row_stride("d_gx", d_gx)
        self.lengths = saved.lengths
        # dL/dh entering the step just run = dh_carry + dh_rec, dh_rec = (its d_gh) @ W_hh.
        self.dh_rec = xp.zeros((self.B, self.H), self.dtype)
        self.dh_carry = dh_n.copy()
        self.dc_carry = None if dc_n is None else dc_n.copy()
        self.backward_buffers(T)
        hs, cs = saved.hs, saved.cs
        for t in reversed(_order(T, saved.reverse)):
            i, o = (t + 1, t) if saved.reverse else (t, t + 1)
            self.backward_step(Step(
                t, h_prev=hs[i], h_next=hs[o], c_prev=None if cs is None else cs[i],
                c_next=None if cs is None else cs[o],
                gates=None if saved.gates is None else saved.gates[t],
                hn=None if saved.hn is None else saved.hn[t], dy=dy[t], d_gx=d_gx[t]))
        h_in = hs[1:] if saved.reverse else hs[:-1]
        return self.hh_terms(d_gx, h_in), self.dh_carry + self.dh_rec, self.dc_carry

    def backward_buffers(self, T):
        """Allocate what the backward needs beyond dh_rec and the carries."""

    def hh_terms(self, d_gx, h_in):
        """[(d_block (T, B, k), h_in (T, B, H))] whose products make dW_hh (FusedBackend)."""
        return [(d_gx, h_in)]

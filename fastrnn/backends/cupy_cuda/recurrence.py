"""The time loop of one direction, shared by every cell; the cells (rnn.py, lstm.py, gru.py) say
which GEMMs and kernels one step launches.

Forward, per step t: the recurrent GEMM(s) ``h_prev @ W_hh.T`` through ``xp.matmul`` (cuBLAS)
and one fused pointwise kernel (two around a second GEMM for the textbook GRU). Backward, per
step in the opposite order: one fused pointwise kernel, then one GEMM ``d_gh @ W_hh`` for the
gradient flowing into the previous state. Every kernel runs one thread per (b, j) of the
(B, H) state: ``threads_per_block`` threads per block, ceil(B*H / threads_per_block) blocks;
the layer-normalised ones run one block per batch row (``launch(per_row=True)``).

A loop runs in three parts: ``bind_forward`` / ``bind_backward`` take the call's arrays and
allocate every buffer; ``forward_loop`` / ``backward_loop`` issue the launches, GEMMs and
copies of all the steps and allocate nothing; ``forward_result`` / ``backward_result`` read what
the loop made. ``forward`` and ``backward`` run the three in turn (the per-step launches, the
default); graphs.py binds a Recurrence to buffers of its own and captures the loop as a CUDA
Graph, replayed by later calls of the same shapes.

What a training forward keeps (see fastrnn/cells.py) is a ``base.Saved``. The states are laid
out in the slots of ``base.state_slots``: (T+1, B, H) in time order when training, so step t
reads its entering state and writes its leaving state in place; two alternating (B, H) rows in
inference.
"""

from __future__ import annotations

import numpy as np

from .. import base
from ..base import Saved
from . import loader


class Step:
    """The views one step's launches work on; attributes unused by a cell stay None."""

    __slots__ = ("t", "x_proj", "y", "h_prev", "h_next", "c_prev", "c_next", "gates", "hn",
                 "inside", "zoneout", "dy", "d_gx")

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


def _state_buffer(xp, s0, T, training):
    """The buffer of one state s0 (B, H) in the slot convention of ``base.state_slots`` (T+1
    rows when training, 2 otherwise); the loop copies s0 into its first slot."""
    rows = T + 1 if training else 2
    return xp.empty((rows,) + s0.shape, s0.dtype)


def device_lengths(xp, lengths):
    """The host lengths (B,) as the int64 device array the kernels read, or None."""
    return None if lengths is None else xp.asarray(np.asarray(lengths, np.int64))


def _kept_views(t, i, o, hs, cs, gates, hn, inside, zoneout):
    """Step t's views of the states (entering slot i, leaving slot o), of what a training
    forward keeps and of the zoneout mask; None for what the cell does not have."""
    def pick(a, k):
        return None if a is None else a[k]

    return dict(h_prev=hs[i], h_next=hs[o], c_prev=pick(cs, i), c_next=pick(cs, o),
                gates=pick(gates, t), hn=pick(hn, t), inside=pick(inside, t),
                zoneout=pick(zoneout, t))


# The keyword arguments of recurrence_forward that a variant cell gets (FusedBackend): the
# direction's variant parameters (g_ih is applied above the backends) and the zoneout mask.
VARIANT_ARGUMENTS = ("P", "W_hr", "g_hh", "g_c", "b_c", "zoneout_mask")


class Recurrence:
    """One direction of one cell on one device. A cell subclass sets ``file`` (its kernel
    source), ``gate_blocks`` (k of the saved gates (T, B, k*H); 0 keeps none) and ``keeps_hn``,
    and defines ``forward_step(s)`` and ``backward_step(s)``, the launches of one ``Step``.

    The variant (cells.Variant) reaches the kernels as their last template argument, Clip, with
    ``clip`` the bound in the dtype; a clipped training forward keeps the clamp's flags,
    ``inside`` (T, B, G*H) uint8. The peepholes ``P`` (3, H) are an argument of the LSTM's
    kernels (None without). The zoneout mask M (T, B, H) reaches every kernel that ends a
    step (``leave_step``) or starts its backward (``gradient_leaving``), a view of rows
    ``ld_z`` apart (None without zoneout). The other variant parameters (``W_hr``, ``g_hh``,
    ``g_c``, ``b_c``) are attributes, None where the direction has none; the cell subclass
    that runs them keeps what their backward needs in ``Saved.kept`` (``kept_for_backward``)
    and returns their gradients from ``variant_grads``.

    Widths: H that of the gates and of c, Hp = W_hh.shape[1] that of h (the projection's
    proj_size where the LSTM projects, else H).
    """

    file = ""
    gate_blocks = 0
    keeps_hn = False

    def __init__(self, backend, cell, W_hh, b_hh, B):
        self.device = backend.device
        self.xp = backend.xp
        self.W_hh, self.b_hh = W_hh, b_hh
        self.dtype = W_hh.dtype
        self.G = cell.gates
        self.B, self.H, self.Hp = B, W_hh.shape[0] // self.G, W_hh.shape[1]
        clip = cell.variant.clip
        self.clipped = clip is not None
        self.clip = self.dtype.type(0 if clip is None else clip)
        self.template_extra = self.cell_template(cell) + (", true" if self.clipped
                                                          else ", false")
        self.use_variant({})
        if W_hh.shape[0] * B >= 2 ** 31:
            raise ValueError(f"B*G*H = {W_hh.shape[0] * B} is too large for 32-bit indexing")
        self.block = (backend.threads_per_block,)

    def cell_template(self, cell):
        """The template arguments of the cell's kernels between the dtype and Clip."""
        return ""

    def launch(self, kernel, *args, width=None, template=None, per_row=False):
        """Run ``kernel`` for this dtype over the B*width units (width H unless given), one
        thread per unit, or (``per_row``) one block per batch row (the layer-normalised
        kernels: the block's threads step over the row's G*H units, as many threads as there
        are up to threads_per_block, in whole warps). B and width are the last arguments. Its
        template arguments after the dtype are the cell's (``template_extra``) unless given."""
        width = self.H if width is None else width
        extra = self.template_extra if template is None else template
        expression = loader.name_expression(kernel, self.dtype, extra)
        per_block = self.block[0]
        if per_row:
            grid, block = (self.B,), (min(per_block, -(-self.G * self.H // 32) * 32),)
        else:
            grid, block = ((self.B * width + per_block - 1) // per_block,), self.block
        loader.kernel(self.device, self.file, expression)(
            grid, block, args + (np.int32(self.B), np.int32(width)))

    # ------------------------------------------------------------------------------------------
    # Forward

    def kept_gate_blocks(self):
        """k of the saved gates (T, B, k*H) of a training forward."""
        return self.gate_blocks

    def use_variant(self, params):
        """The variant parameters of the direction (recurrence_forward's keyword arguments, or
        Saved.kept), as attributes; the zoneout mask with its row stride."""
        for name in VARIANT_ARGUMENTS:
            setattr(self, name, params.get(name))
        M = self.zoneout_mask
        self.ld_z = np.int32(0) if M is None else row_stride("zoneout_mask", M)

    def forward(self, x_proj, h0, c0, lengths, reverse, y, training, **variant):
        self.bind_forward(x_proj, h0, c0, device_lengths(self.xp, lengths), reverse, y,
                          training, variant)
        self.forward_loop()
        return self.forward_result()

    def bind_forward(self, x_proj, h0, c0, lengths, reverse, y, training, variant):
        """Take the call's arrays (``lengths`` already on the device) and allocate everything
        the loop writes, so that ``forward_loop`` allocates nothing (a captured graph replays
        it on these very arrays, graphs.py)."""
        xp = self.xp
        unknown = sorted(set(variant) - set(VARIANT_ARGUMENTS))
        if unknown:
            raise TypeError(f"recurrence_forward got variant arguments it does not know: "
                            f"{unknown}; it takes {list(VARIANT_ARGUMENTS)}")
        self.use_variant(variant)
        self.variant = variant
        T, B, _ = x_proj.shape
        H = self.H
        self.T, self.reverse, self.training = T, reverse, training
        self.x_proj, self.y, self.h0, self.c0 = x_proj, y, h0, c0
        self.ld_x, self.ld_y = row_stride("x_proj", x_proj), row_stride("y", y)
        self.lengths = lengths
        self.hs = _state_buffer(xp, h0, T, training)
        self.cs = _state_buffer(xp, c0, T, training) if c0 is not None else None
        self.gates = self.hn = None
        if training and self.kept_gate_blocks():
            self.gates = xp.empty((T, B, self.kept_gate_blocks() * H), self.dtype)
        if training and self.keeps_hn:
            self.hn = xp.empty((T, B, H), self.dtype)
        self.inside = (xp.empty((T, B, self.G * H), np.uint8) if training and self.clipped
                       else None)
        self.forward_buffers(T, training)

    def forward_loop(self):
        """Every launch of the forward: the initial states into their slots, then each step."""
        T, reverse, training = self.T, self.reverse, self.training
        first = base.first_slot(T, reverse, training)
        self.xp.copyto(self.hs[first], self.h0)
        if self.cs is not None:
            self.xp.copyto(self.cs[first], self.c0)
        for n in range(T):
            t, i, o = base.state_slots(n, T, reverse, training)
            self.forward_step(Step(t, x_proj=self.x_proj[t], y=self.y[t], **_kept_views(
                t, i, o, self.hs, self.cs, self.gates, self.hn, self.inside,
                self.zoneout_mask)))

    def forward_result(self):
        """(h_n, c_n, Saved or None) of the loop just run."""
        last = base.final_slot(self.T, self.reverse, self.training)
        h_n = self.hs[last].copy()
        c_n = self.cs[last].copy() if self.cs is not None else None
        if not self.training:
            return h_n, c_n, None
        return h_n, c_n, Saved(self.hs, self.cs, self.gates, self.hn, self.lengths,
                               self.reverse, self.P, self.inside,
                               kept=self.kept_for_backward(self.variant))

    def kept_for_backward(self, variant):
        """Saved.kept: the variant's parameters and what their backward needs (a subclass adds
        its own)."""
        return dict(variant)

    def forward_buffers(self, T, training):
        """Allocate the per-step scratch of the forward (the recurrent GEMM's output)."""
        self.gh = self.xp.empty((self.B, self.W_hh.shape[0]), self.dtype)

    # ------------------------------------------------------------------------------------------
    # Backward

    def backward(self, saved: Saved, dy, dh_n, dc_n, d_gx):
        """Returns (hh_terms, dh0, dc0[, variant_grads]) as FusedBackend.recurrence_backward
        specifies."""
        self.bind_backward(saved, dy, dh_n, dc_n, d_gx)
        self.backward_loop()
        return self.backward_result()

    def bind_backward(self, saved: Saved, dy, dh_n, dc_n, d_gx):
        """Take the call's arrays and allocate everything the loop writes (as bind_forward)."""
        xp = self.xp
        self.T = dy.shape[0]
        self.ld_dy, self.ld_g = row_stride("dy", dy), row_stride("d_gx", d_gx)
        self.lengths = saved.lengths
        self.use_variant(saved.kept)
        self.saved, self.kept, self.dy, self.d_gx = saved, saved.kept, dy, d_gx
        self.dh_n, self.dc_n = dh_n, dc_n
        # dL/dh entering the step just run = dh_carry + dh_rec, dh_rec = (its d_gh) @ W_hh.
        self.dh_rec = xp.empty((self.B, self.Hp), self.dtype)
        self.dh_carry = xp.empty(dh_n.shape, self.dtype)
        self.dc_carry = None if dc_n is None else xp.empty(dc_n.shape, self.dtype)
        self.backward_buffers(self.T)

    def backward_loop(self):
        """Every launch of the backward: the carries from dh_n and dc_n, then each step."""
        xp, saved = self.xp, self.saved
        xp.copyto(self.dh_rec, self.dtype.type(0))
        xp.copyto(self.dh_carry, self.dh_n)
        if self.dc_carry is not None:
            xp.copyto(self.dc_carry, self.dc_n)
        for n in reversed(range(self.T)):
            t, i, o = base.state_slots(n, self.T, saved.reverse, True)
            self.backward_step(Step(t, dy=self.dy[t], d_gx=self.d_gx[t], **_kept_views(
                t, i, o, saved.hs, saved.cs, saved.gates, saved.hn, saved.inside,
                self.zoneout_mask)))

    def backward_result(self):
        """(hh_terms, dh0, dc0[, variant_grads]) of the loop just run."""
        result = (self.hh_terms(self.d_gx, self.saved.h_in), self.dh_carry + self.dh_rec,
                  self.dc_carry)
        variant_grads = self.variant_grads()
        return result + (variant_grads,) if variant_grads else result

    def backward_buffers(self, T):
        """Allocate what the backward needs beyond dh_rec and the carries."""

    def variant_grads(self):
        """The gradients of the variant's parameters the backward made, by "d" + name."""
        return {}

    def hh_terms(self, d_gx, h_in):
        """[(d_block (T, B, k), h_in (T, B, H))] whose products make dW_hh (FusedBackend)."""
        return [(d_gx, h_in)]

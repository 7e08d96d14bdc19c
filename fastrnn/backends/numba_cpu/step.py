"""One time step through every layer of a unidirectional stack, in one compiled call.

This is the decoding step (``layer.step``), where a call's fixed cost is most of its time: the
step runs as one call into compiled code on buffers kept between calls. Each layer projects its
input with W_ih as it is (direct.dots), then runs the skeleton's forward block for one step on
W_hh as it is, so the step reads every weight once and packs nothing, and the cell's math is its
own row function, as in every other call.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

from .direct import dots
from .driver import SPECS, forward_layout
from .packed import make_plan
from .scalars import KERNEL
from .skeleton import _forward_block
from .vectors import add_to, copy_row


@njit(**KERNEL)
def step_stack(cell, geo, x, w_ih, b_ih, w_hh, b_hh, hx, states, xp, steps, work, y, hy):
    """One step of L layers for B rows (geo: the skeleton's Geometry of T = 1, inference, one
    block). x (B, I) the input; per layer l (tuples): w_ih[l] (G*H, I_l), b_ih[l] (G*H,),
    w_hh[l] (G*H, H), b_hh[l] (G*H,); hx, one (L, B, H) per state of the cell, the states
    entering; states[l], one (2, B, H) scratch per state (row 0 entering, 1 leaving); xp (B, G*H)
    scratch; steps the skeleton's steps group of one step with every row valid; work the FWork
    of a direct product, whose W is replaced by each layer's W_hh. Writes y (B, H) and hy, the
    new states like hx. Arrays are C-contiguous, read flat."""
    B, H, G = geo[1], geo[2], geo[3]
    GH, BH = G * H, B * H
    xf, hyf = x.reshape(-1), hy[0].reshape(-1)
    for l in range(len(w_ih)):
        a, a0, K = (xf, 0, x.shape[1]) if l == 0 else (hyf, (l - 1) * BH, H)
        dots(a, a0, K, K, B, w_ih[l].reshape(-1), 0, GH, xp, 0, GH)
        for b in range(B):
            add_to(xp, b * GH, b_ih[l], 0, GH)
        state = states[l]
        for s in range(len(state)):
            copy_row(state[s], 0, hx[s].reshape(-1), l * BH, BH)
        for k in range(work[3].shape[0]):
            _forward_block(cell, k, geo, 0, 0, (xp, GH), (hyf[l * BH:(l + 1) * BH], BH, H),
                           steps, b_hh[l], state, (xp[:0], xp[:0]),
                           (w_hh[l], work[1], work[2], work[3]))
        for s in range(1, len(state)):
            copy_row(hy[s].reshape(-1), l * BH, state[s], BH, BH)
    copy_row(y.reshape(-1), 0, hyf, (len(w_ih) - 1) * BH, BH)


class _Buffers:
    """What step_stack needs beyond the call's arrays, for one cell, shape and dtype, and the
    compiled step for them (``call``)."""

    def __init__(self, cell, L, B, H, dtype):
        spec = SPECS[cell.name]
        plan = make_plan(H, 1, 1)
        ph, out, mid = forward_layout(cell.name, B, H, plan, dtype.itemsize, True)
        self.cell = spec.cell
        self.geo = (1, B, H, cell.gates, 1, 1, plan.size, False, False)
        self.states = tuple(tuple(np.zeros(2 * B * H, dtype) for _ in range(spec.states))
                            for _ in range(L))
        self.xp = np.empty(B * cell.gates * H, dtype)
        # lengths 1, step 0's rows 0..B, one row group of every row (skeleton.py)
        self.steps = (np.ones(B, np.int64), np.array([0, B], np.int64),
                      np.array([0, B], np.int64))
        self.out, self.mid, self.ph = np.empty(out, dtype), np.empty(mid, dtype), ph
        self._call, self._typed_weights = None, None

    def run(self, x, weights, hx, y, hy):
        args = (self.cell, self.geo, x, *weights, hx, self.states, self.xp, self.steps,
                (weights[2][0], self.out, self.mid, self.ph), y, hy)
        # The compiled function's own entry point skips the dispatcher's typing of 15
        # arguments, most of a small step's fixed cost. It takes exactly the types it was
        # compiled for, which this buffer set fixes, given C-contiguous, aligned, writeable
        # arrays (numpy's "carray") of the dtype: else the dispatcher types the call.
        behaved = x.flags.carray and hx[0].flags.carray and hx[-1].flags.carray
        if behaved and self._call is not None and (weights is self._typed_weights
                                                   or _behaved(weights, x.dtype)):
            self._call(*args)
            self._typed_weights = weights
            return
        step_stack(*args)
        if behaved and self._call is None and _behaved(weights, x.dtype):
            compiled = step_stack.overloads.get(tuple(map(step_stack.typeof_pyval, args)))
            if compiled is not None:
                self._call, self._typed_weights = compiled.entry_point, weights


def _behaved(weights, dtype):
    """Every array of a step's weights C-contiguous, aligned, writeable and of ``dtype``."""
    return all(a.flags.carray and a.dtype == dtype for group in weights for a in group)


class Stepper:
    """Runs step_stack with buffers kept per shape and per calling thread (so that concurrent
    steps never share them)."""

    def __init__(self):
        self._local = threading.local()

    @staticmethod
    def weights(layers):
        """The per-layer tuples (w_ih, b_ih, w_hh, b_hh) that step_stack takes, from ``layers``,
        a list of (W_ih, W_hh, b_ih, b_hh) C-contiguous arrays, biases None where absent. They
        hold the arrays themselves, not copies: an in-place update is seen by the next step."""
        dtype, GH = layers[0][0].dtype, layers[0][0].shape[0]
        zeros = np.zeros(GH, dtype)
        return (tuple(W_ih for W_ih, _, _, _ in layers),
                tuple(zeros if b is None else b for _, _, b, _ in layers),
                tuple(W_hh for _, W_hh, _, _ in layers),
                tuple(zeros if b is None else b for _, _, _, b in layers))

    def __call__(self, cell, weights, x, hx):
        """x (B, I) and hx (one (L, B, H) per state) C-contiguous, weights from ``weights``.
        Returns (y (B, H), hy, the new states like hx)."""
        L, (B, _), H = len(hx[0]), x.shape, hx[0].shape[2]
        key = (cell.name, L, B, H, x.dtype)
        try:
            buffers = self._local.buffers[key]
        except (AttributeError, KeyError):
            cache = self._local.__dict__.setdefault("buffers", {})
            if len(cache) >= 8:
                cache.clear()
            buffers = cache[key] = _Buffers(cell, L, B, H, x.dtype)
        y = np.empty((B, H), x.dtype)
        hy = (np.empty((L, B, H), x.dtype),) if len(hx) == 1 else (
            np.empty((L, B, H), x.dtype), np.empty((L, B, H), x.dtype))
        buffers.run(x, weights, hx, y, hy)
        return y, hy

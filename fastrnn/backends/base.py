"""What a backend is: its interface, and the arrays a call hands it and gets back.

A backend runs one recurrent layer: one or two directions over the same input. ``api.py`` and
``layers.py`` check inputs and call ``Backend.forward`` / ``Backend.backward``; they never look
inside a backend.

The reference backend implements ``forward`` / ``backward`` directly (it is the oracle and shares
no math with anything else). The fused backends (Numba, CuPy) derive from ``FusedBackend``
(fused.py), the composition they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cells import Cell


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here; the message says why and what to install.

    Defined here, beside ``Backend``, so that a backend can raise it without importing the
    dispatch layer that selects it."""


# ----------------------------------------------------------------------------------------------
# The state convention of every backend (cells.py describes the layout)


def step_times(T: int, reverse: bool) -> range:
    """Time steps in processing order: T-1 down to 0 when ``reverse``, else 0 up to T-1."""
    return range(T - 1, -1, -1) if reverse else range(T)


def state_slots(s, T, reverse, training):
    """(t, row read, row written) of the s-th step processed, in a state buffer of T+1 rows
    (``training``: every state kept in time order) or of 2 rows (inference: the rows alternate).

    Plain Python on purpose: the Numba backend compiles this same function for its kernels."""
    t = T - 1 - s if reverse else s
    if not training:
        return t, s % 2, 1 - s % 2
    if reverse:
        return t, t + 1, t
    return t, t, t + 1


def first_slot(T, reverse, training):
    """Row of the state buffer that holds the initial state."""
    if not training:
        return 0
    return T if reverse else 0


def final_slot(T, reverse, training):
    """Row of the state buffer that holds the state after the last step."""
    if not training:
        return T % 2
    return 0 if reverse else T


def entering_states(hs, reverse):
    """(T, B, H): the state entering each time step t, from a training buffer hs (T+1, B, H)."""
    return hs[1:] if reverse else hs[:-1]


@dataclass
class Saved:
    """What a fused training forward of one direction keeps for backward (cells.py):
    hs (T+1, B, H); cs (T+1, B, H) or None; gates (T, B, k*H) or None; hn (T, B, H) or None;
    lengths (B,) int64 on the backend's device or None; reverse. A backend that packs lengths
    keeps gates and hn as packed rows, (R, k*H) and (R, H), and None as lengths:
    FusedBackend.backward sets the call's packing.Steps there before recurrence_backward (so
    the saved state holds no bookkeeping of O(T))."""

    hs: Any
    cs: Any
    gates: Any
    hn: Any
    lengths: Any
    reverse: bool
    # Variants: P (3, H) the peepholes, read again by backward; inside (R, G*H) uint8, 1 where
    # a clipped gate's input lay within [-clip, clip] (the clamp's derivative: deriving it
    # from the activated gate, which equals act(clip) there, is not exact in floating point).
    P: Any = None
    inside: Any = None
    # Zoneout: the mask M (R, H) (packed rows), read again by backward. Layer norm on the
    # recurrent side: the gains g_hh (G*H,), g_c (H,) and c's bias b_c (H,), read again by
    # backward; ln_hh (R, G*H) the raw W_hh h of each row (backward recomputes its statistics,
    # then writes the gradient of W_hh h over it).
    zoneout_mask: Any = None
    g_hh: Any = None
    ln_hh: Any = None
    g_c: Any = None
    b_c: Any = None
    # kept: a backend's own dict of the variant's parameters and what their backward needs (the
    # CUDA backend: each parameter recurrence_forward got, the zoneout mask, h_full =
    # o tanh(c') (T, B, H) of a projecting LSTM, the input of W_hr, and with layer norm gh_norm
    # = LN(W_hh h) (T, B, G*H) and the rows' statistics, stats (T, B, 3 or 1)).
    kept: Any = None

    @property
    def h_in(self):
        """The state entering each step, (T, B, H)."""
        return entering_states(self.hs, self.reverse)

    @property
    def c_in_out(self):
        """The cell states entering and leaving each step, (T, B, H) each."""
        return entering_states(self.cs, self.reverse), entering_states(self.cs, not self.reverse)


@dataclass
class Direction:
    """One direction's parameters and initial state, already checked by the API.

    W_ih (G*H, I), W_hh (G*H, H), b_ih/b_hh (G*H,) or None, h0/c0 (B, H) (c0 None unless LSTM).
    The parameters of a variant (cells.Variant.param_shapes), each None unless the cell's
    variant has it: W_hr (P, H) the projection, with which h0 is (B, P) and W_hh (G*H, P);
    g_ih, g_hh (G*H,) the layer-norm gains, g_c, b_c (H,) the LSTM's LN of c'; P (3, H) the
    peepholes p_i, p_f, p_o. zoneout_mask (T, B, P or H): M of h' = h + M (h_new - h), made
    by the front end (0/1 in training, 1 - p in evaluation), None without zoneout.
    All C-contiguous, one dtype, one array library.
    """

    W_ih: Any
    W_hh: Any
    b_ih: Any
    b_hh: Any
    h0: Any
    c0: Any
    reverse: bool
    P: Any = None
    W_hr: Any = None
    g_ih: Any = None
    g_hh: Any = None
    g_c: Any = None
    b_c: Any = None
    zoneout_mask: Any = None

    @property
    def variant_params(self) -> dict:
        """The variant's parameters this direction has, name -> array (VARIANT_PARAMS)."""
        return {name: getattr(self, name) for name in VARIANT_PARAMS
                if getattr(self, name) is not None}


# The parameters a variant adds to a direction, by their cells.Variant.param_shapes names.
VARIANT_PARAMS = ("W_hr", "g_ih", "g_hh", "g_c", "b_c", "P")


@dataclass
class DirectionGrads:
    """Gradients of one direction. db_* is None where the bias was None; dc0 None unless LSTM;
    the gradient of each variant parameter ("d" + its name) only where the direction has it."""

    dW_ih: Any
    dW_hh: Any
    db_ih: Any
    db_hh: Any
    dh0: Any
    dc0: Any
    dP: Any = None
    dW_hr: Any = None
    dg_ih: Any = None
    dg_hh: Any = None
    dg_c: Any = None
    db_c: Any = None

    @property
    def variant_grads(self) -> dict:
        """The gradients of the variant's parameters, "d" + name -> array, where present."""
        return {f"d{name}": getattr(self, f"d{name}") for name in VARIANT_PARAMS
                if getattr(self, f"d{name}") is not None}


class Backend:
    """A backend: the array module it serves (``xp``) and a layer forward/backward.

    forward(cell, x, dirs, lengths, training) -> (y, h_n, c_n, saved)
        x (T, B, I) C-contiguous; dirs a list of 1 or 2 ``Direction``; lengths None or a NumPy
        int64 array (B,) with 1 <= L_b <= T, on the host; T >= 1 and B >= 1.
        y (T, B, D*H) with the directions concatenated on the last axis; h_n, c_n (D, B, H)
        (c_n None unless LSTM); saved is opaque and None when ``training`` is False.
    backward(cell, saved, dy, dh_n, dc_n) -> (dx, [DirectionGrads] * D)
        dy (T, B, D*H), dh_n/dc_n (D, B, H) (dc_n None unless LSTM), all present (zeros where
        the caller gave none).
    """

    name = "?"
    library = "numpy"  # the array library it takes: "numpy" or "cupy"
    xp = None  # the module it computes with
    # The Variant switches (cells.Variant.switches) it runs; a cell that sets any other is
    # refused before the backend sees it (``unsupported``), never run as the plain cell.
    variant_switches = frozenset()

    def unsupported(self, cell: Cell) -> tuple:
        """The switches of ``cell.variant`` this backend cannot run (empty when it can)."""
        return tuple(s for s in cell.variant.switches if s not in self.variant_switches)

    def forward(self, cell: Cell, x, dirs, lengths, training):
        raise NotImplementedError

    def backward(self, cell: Cell, saved, dy, dh_n, dc_n):
        raise NotImplementedError

    # One time step of a unidirectional stack (the decoding step), in inference. Front ends
    # keep what ``step_weights`` returns for as long as their parameter arrays stay the same
    # objects; a backend must not copy the weights into it, so that in-place updates are seen.
    # A backend whose ``step`` is a kernel of its own says so (``has_step_kernel``): the engine
    # then runs every one-step inference through it.
    has_step_kernel = False

    def step_weights(self, cell: Cell, layers):
        """What ``step`` takes as the weights: from ``layers``, a list of (W_ih, W_hh, b_ih,
        b_hh) per layer, C-contiguous, biases None where absent. Here the list itself."""
        return layers

    def step(self, cell: Cell, weights, x, hx):
        """One time step of every layer: x (B, I) and hx (one (L, B, H) per state of the cell)
        C-contiguous. Returns (y (B, H), hy, the new states like hx). Here one inference
        forward of one step per layer."""
        y, hy = x[None], tuple(self.xp.empty_like(h) for h in hx)
        for k, (W_ih, W_hh, b_ih, b_hh) in enumerate(weights):
            states = [h[k] for h in hx] + [None]
            y, h_n, c_n, _ = self.forward(cell, y, [Direction(
                W_ih, W_hh, b_ih, b_hh, states[0], states[1], False)], None, False)
            for new, value in zip(hy, (h_n, c_n)):
                new[k] = value[0]
        return y[0], hy

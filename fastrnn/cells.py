"""The recurrent cells, each written down once.

Conventions (PyTorch's, so weights move between the two unchanged). For one direction with gate
count G, hidden size H and input size I:

    x (T, B, I) time-major, h0/c0 (B, H), y (T, B, H)
    W_ih (G*H, I), W_hh (G*H, H), b_ih (G*H,), b_hh (G*H,)
    gx = W_ih x_t + b_ih        the input projection, one GEMM for all steps
    gh = W_hh h + b_hh          the recurrent projection, one per step

RNN (G = 1)
    h' = act(gx + gh),  act = tanh or relu

LSTM (G = 4, gates i, f, g, o)
    i, f, o = sigmoid(gx + gh) blocks;  g = tanh(gx_g + gh_g)
    c' = f * c + i * g
    h' = o * tanh(c')

GRU (G = 3, gates r, z, n), ``linear_before_reset=True`` (PyTorch, ONNX linear_before_reset=1)
    r = sigmoid(gx_r + gh_r)
    z = sigmoid(gx_z + gh_z)
    n = tanh(gx_n + r * gh_n)
    h' = (1 - z) * n + z * h

GRU, ``linear_before_reset=False`` (textbook; Keras reset_after=False, ONNX linear_before_reset=0)
    n = tanh(gx_n + W_hn (r * h) + b_hn), everything else as above

Sequence lengths follow PyTorch's packed sequences: step t of sequence b is valid when t < L_b.
An invalid step leaves the state unchanged and writes y[t, b] = 0. With ``reverse=True`` the steps
run from t = T-1 down to 0, so every sequence starts from h0 at its own last valid step.

What the fused backends keep for backward (``training=True``), per direction:

    hs     (T+1, B, H)  hidden states in time order: with reverse=False hs[t] enters step t and
                        hs[t+1] leaves it; with reverse=True hs[t+1] enters step t and hs[t] leaves
                        it. Invalid steps carry the state, so the layout needs no lengths.
    cs     (T+1, B, H)  LSTM only: cell states, laid out as hs
    gates  (T, B, k*H)  activated gates: LSTM i, f, g, o (k = 4); GRU r, z, n (k = 3)
    hn     (T, B, H)    GRU linear_before_reset=True only: gh_n = W_hn h + b_hn

So per step and batch row a training forward keeps ``saved_vectors_per_step`` H-vectors:
RNN 1, LSTM 6, GRU 5 (textbook 4), plus one extra state row for hs/cs. An inference forward keeps
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NONLINEARITIES = ("tanh", "relu")


# ----------------------------------------------------------------------------------------------
# Variants (issue 16): a Cell carries one (``Cell.variant``, the plain cell by default). The
# dispatch runs a variant cell only on a backend whose ``variant_switches`` hold every switch it
# sets (``Variant.switches``), so no backend can ignore a variant.

LN_EPS = 1e-5


@dataclass(frozen=True)
class Variant:
    """The switches that change a cell's equations beyond ``Cell``; the defaults change nothing.

    proj_size (LSTM; PyTorch's proj_size): the hidden state is projected,
        h' = W_hr (o * tanh(c')),  W_hr (P, H), so h0/h_n/y have P = proj_size columns, c0/c_n
        keep H and W_hh is (4H, P).
    layer_norm (LSTM, GRU with linear_before_reset; Haste's formulation in PyTorch's gate order),
        LN(v) = (v - mean(v)) / sqrt(var(v) + LN_EPS) over the whole row of G*H (or H) values:
        gx = LN(W_ih x) * g_ih + b_ih,  gh = LN(W_hh h) * g_hh + b_hh   (g_* (G*H,), start at 1)
        LSTM: h' = o * tanh(LN(c') * g_c + b_c)                        (g_c, b_c (H,): 1 and 0)
        gates from gx + gh exactly as the plain cell (GRU: n = tanh(gx_n + r * gh_n)).
    peepholes (LSTM; ONNX's P input) P (3, H) rows p_i, p_f, p_o:
        i = sigmoid(a_i + p_i * c),  f = sigmoid(a_f + p_f * c),  o = sigmoid(a_o + p_o * c').
    clip (every cell; ONNX's clip) None or a positive float: the whole input of every gate
        activation (peephole term included, as ONNX Runtime does) is clamped to [-clip, clip]
        before the activation: RNN act, LSTM i f g o, GRU r z n. Its derivative is the clamp's
        (1 inside [-clip, clip], bounds included, 0 outside). An LSTM's tanh(c') is not clipped.
    zoneout (every cell; Haste's semantics on h only, never on an LSTM's c), probability p:
        h' = h + M * (h_new - h),  M (T, B, P or H) given: in training 0/1, 1 with probability
        1 - p, per step, unit and row; in evaluation M = 1 - p, i.e. h' = p h + (1 - p) h_new.
        y is the zoned-out h'. Backward uses the same M.
    """

    proj_size: int = 0
    layer_norm: bool = False
    peepholes: bool = False
    clip: float | None = None
    zoneout: float = 0.0

    def check(self, cell: Cell) -> None:
        """Raise ValueError naming the switch when ``cell`` does not have it."""
        if not (isinstance(self.proj_size, int) and self.proj_size >= 0):
            raise ValueError(f"proj_size must be an int >= 0, got {self.proj_size!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be None or a positive float, got {self.clip!r}")
        if not 0 <= self.zoneout <= 1:
            raise ValueError(f"zoneout must be in [0, 1], got {self.zoneout!r}")
        if cell.kind != "lstm" and (self.proj_size or self.peepholes):
            raise ValueError(f"proj_size and peepholes are LSTM switches, not {cell.name}'s")
        if self.layer_norm and cell.name not in ("lstm", "gru"):
            raise ValueError(
                f"layer_norm applies to the LSTM and the linear_before_reset GRU, not {cell.name}")

    @cached_property
    def switches(self) -> tuple:
        """The names of the switches set away from their defaults, in field order (kept: every
        call asks it, and a one-step call feels each microsecond)."""
        return tuple(self.described())

    def described(self) -> dict:
        """The switches set away from their defaults, name -> value."""
        plain = Variant()
        return {name: getattr(self, name) for name in self.__dataclass_fields__
                if getattr(self, name) != getattr(plain, name)}

    def hidden_size(self, H: int) -> int:
        """Columns of h0, h_n and y: proj_size when the LSTM projects, else H."""
        return self.proj_size or H

    def param_shapes(self, cell: Cell, I: int, H: int) -> dict:
        """The shape of every parameter of one direction, keyed by name (biases included)."""
        G, P = cell.gates, self.hidden_size(H)
        shapes = {"W_ih": (G * H, I), "W_hh": (G * H, P), "b_ih": (G * H,), "b_hh": (G * H,)}
        if self.proj_size:
            shapes["W_hr"] = (P, H)
        if self.layer_norm:
            shapes.update(g_ih=(G * H,), g_hh=(G * H,))
            if cell.has_cell_state:
                shapes.update(g_c=(H,), b_c=(H,))
        if self.peepholes:
            shapes["P"] = (3, H)
        return shapes

    def zoneout_mask(self, shape, dtype, training: bool, rng=None):
        """M for h' = h + M * (h_new - h), (T, B, P or H): None without zoneout; 1 - p in
        evaluation; in training 1 with probability 1 - p, else 0, from ``rng`` (a numpy
        Generator)."""
        if not self.zoneout:
            return None
        if not training:
            return np.full(shape, 1 - self.zoneout, dtype)
        if rng is None:
            raise ValueError("a training zoneout mask needs rng, a numpy Generator")
        return (rng.random(shape) >= self.zoneout).astype(dtype)


@dataclass(frozen=True)
class Cell:
    """Which recurrence to run: ``kind`` plus the switches that apply to it, and ``variant``
    (peepholes, clip, ...: a ``Variant``, the plain cell by default)."""

    kind: str
    nonlinearity: str = "tanh"
    linear_before_reset: bool = True
    variant: Variant = Variant()

    def __post_init__(self):
        if self.kind not in GATES:
            raise ValueError(f"cell kind must be one of {sorted(GATES)}, got {self.kind!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}"
            )
        if not isinstance(self.variant, Variant):
            raise TypeError(f"variant must be a cells.Variant, got {type(self.variant).__name__}")
        self.variant.check(self)

    @property
    def gates(self) -> int:
        return GATES[self.kind]

    @property
    def has_cell_state(self) -> bool:
        return self.kind == "lstm"

    @property
    def state_names(self) -> tuple:
        """The recurrent states, in the order every API takes and returns them: ("h",) or, for
        the LSTM, ("h", "c"). Argument names derive from them: h0/c0, h_n/c_n, dh_n/dc_n,
        dh0/dc0."""
        return ("h", "c") if self.has_cell_state else ("h",)

    def named(self, pattern: str) -> tuple:
        """``pattern`` filled with each state name: named("{}0") is ("h0",) or ("h0", "c0")."""
        return tuple(pattern.format(s) for s in self.state_names)

    def zero_states(self, xp, shape, dtype) -> tuple:
        """One zero array of ``shape`` per state."""
        return tuple(xp.zeros(shape, dtype) for _ in self.state_names)

    def as_hx(self, states):
        """The states as PyTorch passes them: h alone, or the pair (h, c) for the LSTM."""
        states = tuple(states)
        return states if self.has_cell_state else states[0]

    def from_hx(self, hx) -> tuple:
        """Inverse of ``as_hx``: a tuple with one entry per state (None entries stay None)."""
        if not self.has_cell_state:
            return (hx,)
        return (None, None) if hx is None else tuple(hx)

    @property
    def options(self) -> dict:
        """The keyword arguments that select this variant in the functional API
        (``nonlinearity`` for the RNN, ``linear_before_reset`` for the GRU)."""
        if self.kind == "rnn":
            return {"nonlinearity": self.nonlinearity}
        if self.kind == "gru":
            return {"linear_before_reset": self.linear_before_reset}
        return {}

    @property
    def name(self) -> str:
        """A short stable name: rnn_tanh, rnn_relu, lstm, gru, gru_textbook."""
        if self.kind == "rnn":
            return f"rnn_{self.nonlinearity}"
        if self.kind == "gru" and not self.linear_before_reset:
            return "gru_textbook"
        return self.kind

    @property
    def spec(self) -> str:
        """The name and the variant's switches as one string, "lstm;proj_size=4;zoneout=0.1":
        what torch's custom operators can carry; ``cell_by_name`` reads it back."""
        return ";".join([self.name] + [f"{k}={v}" for k, v in self.variant.described().items()])

    @property
    def saved_vectors_per_step(self) -> int:
        """H-vectors per step and batch row that a fused training forward keeps (see above)."""
        return {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 6, "gru": 5, "gru_textbook": 4}[self.name]


ALL_CELLS = (
    Cell("rnn", nonlinearity="tanh"),
    Cell("rnn", nonlinearity="relu"),
    Cell("lstm"),
    Cell("gru", linear_before_reset=True),
    Cell("gru", linear_before_reset=False),
)


def cell_by_name(name: str) -> Cell:
    """The cell of a ``name`` or of a ``spec`` (the name, then the variant's switches)."""
    name, *switches = name.split(";")
    for cell in ALL_CELLS:
        if cell.name == name:
            if not switches:
                return cell
            types = {"proj_size": int, "layer_norm": lambda v: v == "True", "peepholes":
                     lambda v: v == "True", "clip": float, "zoneout": float}
            values = dict(switch.split("=") for switch in switches)
            return replace(cell, variant=Variant(**{k: types[k](v) for k, v in values.items()}))
    raise ValueError(f"unknown cell {name!r}; expected one of {[c.name for c in ALL_CELLS]}")


def saved_bytes(cell: Cell, T: int, B: int, H: int, itemsize: int, directions: int = 1,
                backend: str = "numba") -> int:
    """Bytes a fused training forward keeps for backward (beyond references to its inputs).

    Beyond the plain cell's (above), a variant keeps: with clip one byte per gate input,
    whether the clamp let it through (the clamp's derivative); with layer norm the W_hh h of
    every step and row (G*H values: raw in Numba, whose backward recomputes the row statistics;
    normalised in CUDA, which also keeps the rows' statistics: 1/std of W_hh h, and for the
    LSTM the mean and 1/std of c') and the mean and 1/std of each row of the input side
    (FusedBackend); with projection hs P = proj_size wide instead of H, and m = o tanh(c') (H
    values per step and row), W_hr's input (Numba keeps it in state slots like c's, B*H values
    more); the RNN with zoneout its h_new (its kept hs hold the zoned-out h', and act' needs
    h_new). ``backend``: "numba" or "cupy", where they differ."""
    variant = cell.variant
    P = variant.hidden_size(H)
    vectors = cell.saved_vectors_per_step
    if variant.layer_norm:
        vectors += cell.gates
    if variant.zoneout and cell.kind == "rnn":
        vectors += 1
    values = T * B * H * vectors + (B * (P + H) if cell.has_cell_state else B * H)
    if variant.proj_size:  # hs is P wide: its T rows beyond the first are counted as H above
        values += T * B * (P - H) + (T + (backend == "numba")) * B * H
    if variant.layer_norm:
        statistics = (3 if cell.has_cell_state else 1) if backend == "cupy" else 0
        values += T * B * (2 + statistics)
    clamp_masks = T * B * cell.gates * H if variant.clip is not None else 0
    return directions * (itemsize * values + clamp_masks)

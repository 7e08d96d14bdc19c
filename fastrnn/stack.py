"""The layer composition, written once for every front end: stacking, both directions, sequence
lengths, dropout between layers, and the backward from the top layer down.

It stores nothing: the parameters come in as a mapping with PyTorch's names, and a training
forward returns a ``StackSaved`` that the caller hands back to ``backward``. The NumPy layers
(layers.py) and the PyTorch modules call these same functions.

Layer k calls the backend once with its one or two directions (so a fused backend projects the
input of both directions with one GEMM and writes both halves of y); backward calls it once per
layer, from the top down, feeding each layer's dx to the layer below as its dy.

Conventions are PyTorch's:

    parameters   weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, suffix _reverse for
                 the reverse direction; shapes (G*H, I_k), (G*H, H), (G*H,), (G*H,) with
                 I_0 = input_size and I_k = D*H above
    x, y         (T, B, I) and (T, B, D*H), or (B, T, ...) with batch_first; the two directions
                 are concatenated on the last axis
    states       one array (num_layers*D, B, H) per state of the cell (h; h and c for the LSTM),
                 row k*D + d for layer k and direction d (0 forward, 1 reverse)
    lengths      packed-sequence semantics in every layer and direction: step t of sequence b
                 is valid when t < L_b, y is zero at the other steps (as pad_packed_sequence
                 gives) and the final states are those after each sequence's last valid step
    dropout      applied to the output of every layer but the last, in training only: the
                 caller's ``draw_mask(shape)`` gives each mask (keep with probability 1 - p,
                 scaled by 1/(1 - p)), so each front end draws from its own generator
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends.base import Direction
from .cells import Cell
from .checks import check_array, check_lengths, check_shape
from .engine import run_backward, run_forward

PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# The stack's name of each parameter of a direction (cells.Variant.param_shapes' keys), in
# PyTorch's order: weight_hr after the biases, as torch.nn.LSTM's, then the variants' own.
PARAM_NAMES = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
               "W_hr": "weight_hr", "g_ih": "layernorm_ih_weight", "g_hh": "layernorm_hh_weight",
               "g_c": "layernorm_c_weight", "b_c": "layernorm_c_bias", "P": "weight_peephole"}
DIRECTION_SUFFIXES = ("", "_reverse")
STATE_LABELS = {"h": "(num_layers*num_directions, B, H_out)",
                "c": "(num_layers*num_directions, B, H)"}


@dataclass(frozen=True)
class Stack:
    """What a front end's constructor fixes: the cell and the sizes of the stack."""

    cell: Cell
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    bidirectional: bool = False

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def suffixes(self) -> tuple:
        return DIRECTION_SUFFIXES[:self.num_directions]

    @property
    def output_size(self) -> int:
        """H_out, the width of h and of each direction's y: proj_size where the LSTM projects,
        else hidden_size."""
        return self.cell.variant.hidden_size(self.hidden_size)

    def param_shapes(self) -> dict:
        """name -> shape of every parameter, in PyTorch's order."""
        shapes = {}
        for k in range(self.num_layers):
            I = self.input_size if k == 0 else self.num_directions * self.output_size
            for suffix in self.suffixes:
                for name, shape in self.cell.variant.param_shapes(
                        self.cell, I, self.hidden_size).items():
                    if self.bias or name not in ("b_ih", "b_hh"):
                        shapes[f"{PARAM_NAMES[name]}_l{k}{suffix}"] = shape
        return shapes

    def direction_params(self, params, k, suffix) -> dict:
        """Layer k's parameters of one direction from the stack's ``params``, keyed as
        ``Direction``'s fields (None for an absent bias)."""
        return {name: params.get(f"{stack_name}_l{k}{suffix}")
                for name, stack_name in PARAM_NAMES.items()}

    def state_shape(self, B, state="h") -> tuple:
        """(num_layers*num_directions, B, width) of ``state``: h is H_out wide, c H."""
        width = self.output_size if state == "h" else self.hidden_size
        return (self.num_layers * self.num_directions, B, width)


def param_labels(name) -> str:
    """The symbolic shape of parameter ``name``, for error messages."""
    for prefix, label in (("weight_ih", "(G*H, I)"), ("weight_hh", "(G*H, H_out)"),
                          ("weight_hr", "(proj_size, H)"), ("layernorm_c", "(H,)"),
                          ("weight_peephole", "(3, H)")):
        if name.startswith(prefix):
            return label
    return "(G*H,)"


def check_input(name, a, shape, labels, library, dtype):
    """An array the caller passes to a stack: ``library``'s, of ``dtype`` and ``shape``."""
    _check_placement(name, a, check_array(name, a), library, dtype)
    check_shape(name, a, shape, labels)


def _check_placement(name, a, lib, library, dtype):
    if lib != library:
        raise TypeError(
            f"{name} is a {lib} array but the layer's parameters are {library} arrays; "
            f"pass {library} arrays or move the layer with .to()")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have the layer's dtype {dtype}, got {a.dtype} "
                        f"(no silent casting)")


def check_call(stack: Stack, x, hx, lengths, batch_first, library, dtype):
    """The arguments of a stack's forward; returns (states tuple, lengths) for ``forward``.
    ``hx`` is PyTorch's: None, an array (L*D, B, H), or for the LSTM a pair of them."""
    lib = check_array("x", x)
    leading = "(B, T" if batch_first else "(T, B"
    if x.ndim != 3:
        raise ValueError(f"x must have shape {leading}, I), got shape {tuple(x.shape)}")
    _check_placement("x", x, lib, library, dtype)
    check_shape("x", x, x.shape[:2] + (stack.input_size,), f"{leading}, input_size)")
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    cell = stack.cell
    if cell.has_cell_state and hx is not None and (
            not isinstance(hx, (tuple, list)) or len(hx) != 2):
        raise TypeError(f"hx for the LSTM must be a pair (h0, c0), got {type(hx).__name__}")
    states = cell.from_hx(hx)
    names = ("hx[0] (h0)", "hx[1] (c0)") if cell.has_cell_state else ("hx",)
    for name, state, s in zip(names, cell.state_names, states):
        if s is not None:
            check_input(name, s, stack.state_shape(B, state), STATE_LABELS[state], library,
                        dtype)
    return states, check_lengths(lengths, T, B)


def check_step(stack: Stack, x, hx, library, dtype):
    """The arguments of a step: x (B, input_size) and ``hx`` as for ``check_call``. Returns the
    states tuple, each None or C-contiguous."""
    if stack.bidirectional:
        raise ValueError("step runs a unidirectional stack: the reverse direction of a "
                         "bidirectional layer starts from the end of the sequence, which a "
                         "step does not have; run forward over the whole sequence instead")
    I = stack.input_size
    if not (type(x) is np.ndarray and x.dtype == dtype and x.ndim == 2 and x.shape[1] == I
            and library == "numpy"):  # the usual case in one test; the checks say what is wrong
        lib = check_array("x", x)
        if x.ndim != 2:
            raise ValueError(f"x must have shape (B, input_size) for a step, got shape "
                             f"{tuple(x.shape)}")
        _check_placement("x", x, lib, library, dtype)
        check_shape("x", x, (x.shape[0], I), "(B, input_size)")
    B = x.shape[0]
    if stack.cell.has_cell_state and hx is not None and (
            not isinstance(hx, (tuple, list)) or len(hx) != 2):
        raise TypeError(f"hx for the LSTM must be a pair (h, c), got {type(hx).__name__}")
    states = stack.cell.from_hx(hx)
    names = ("hx[0] (h)", "hx[1] (c)") if stack.cell.has_cell_state else ("hx",)
    for name, state, s in zip(names, stack.cell.state_names, states):
        shape = stack.state_shape(B, state)
        if s is not None and not (type(s) is np.ndarray and s.dtype == dtype
                                  and s.shape == shape):
            check_input(name, s, shape, STATE_LABELS[state], library, dtype)
    return states


def step(stack: Stack, backend, weights, x, states):
    """One time step of every layer (the stack is unidirectional): x (B, I) and ``states``
    checked, ``weights`` what ``backend.step_weights`` gave for the stack's parameters.
    Returns (y (B, H), the states after the step)."""
    xp = backend.xp
    states = tuple([xp.zeros(stack.state_shape(x.shape[0], name), x.dtype) if s is None else
                    s if s.flags.c_contiguous else xp.ascontiguousarray(s)
                    for name, s in zip(stack.cell.state_names, states)])
    return backend.step(stack.cell, weights,
                        x if x.flags.c_contiguous else xp.ascontiguousarray(x), states)


def check_cotangents(saved: "StackSaved", dy, dh_n, library, dtype):
    """The arguments of a stack's backward; returns (dy, d_finals tuple) for ``backward``.
    ``dh_n`` is an array, or for the LSTM also a pair (dh_n, dc_n); None means zeros."""
    stack, T, B = saved.stack, saved.T, saved.B
    DH = stack.num_directions * stack.output_size
    y_shape, y_labels = ((B, T, DH), "(B, T, D*H)") if saved.batch_first else (
        (T, B, DH), "(T, B, D*H)")
    d_finals = (dh_n, None)
    if stack.cell.has_cell_state and isinstance(dh_n, (tuple, list)):
        if len(dh_n) != 2:
            raise TypeError(f"dh_n for the LSTM must be an array or a pair (dh_n, dc_n), "
                            f"got a {type(dh_n).__name__} of length {len(dh_n)}")
        d_finals = tuple(dh_n)
    d_finals = d_finals[:len(stack.cell.state_names)]
    if dy is not None:
        check_input("dy", dy, y_shape, y_labels, library, dtype)
    for name, state, d in zip(stack.cell.named("d{}_n"), stack.cell.state_names, d_finals):
        if d is not None:
            check_input(name, d, stack.state_shape(B, state), STATE_LABELS[state], library,
                        dtype)
    return dy, d_finals


@dataclass
class StackSaved:
    """What a training forward keeps: one engine Context per layer and the dropout masks."""

    stack: Stack
    ctxs: list
    masks: list
    T: int
    B: int
    batch_first: bool


def forward(stack: Stack, backend, params, x, states, lengths, *, training, batch_first=False,
            dropout=0.0, draw_mask=None, draw_zoneout=None):
    """Run the stack. ``x`` and ``states`` (a tuple, one entry per state of the cell, each None
    for zeros or (L*D, B, H)) are checked, ``lengths`` is None or checked host int64.
    With zoneout (cell.variant.zoneout = p) a training forward takes each direction's mask M
    (T, B, H_out) from ``draw_zoneout(shape)`` (1 with probability 1 - p, else 0), layer by
    layer, before that layer's dropout mask; an inference forward, or one without
    ``draw_zoneout`` (evaluation that keeps the state for backward), uses M = 1 - p.
    Returns (y, final states tuple, StackSaved or None)."""
    cell, xp = stack.cell, backend.xp
    L, D = stack.num_layers, stack.num_directions
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    # The one copy batch_first needs: the backends take time-major, C-contiguous input.
    inp = xp.ascontiguousarray(x.transpose(1, 0, 2) if batch_first else x)
    states = tuple(xp.zeros(stack.state_shape(B, name), x.dtype) if s is None
                   else xp.ascontiguousarray(s) for name, s in zip(cell.state_names, states))
    finals = tuple(xp.empty_like(s) for s in states)
    zoneout = cell.variant.zoneout
    zoneout_shape = (T, B, stack.output_size)
    ctxs, masks = [], []
    for k in range(L):
        dirs = [Direction(**stack.direction_params(params, k, suffix),
                          **dict(zip(("h0", "c0"), _initial(states, k * D + j))),
                          reverse=j == 1,
                          zoneout_mask=None if not zoneout else draw_zoneout(zoneout_shape)
                          if training and draw_zoneout is not None
                          else xp.full(zoneout_shape, 1 - zoneout, x.dtype))
                for j, suffix in enumerate(stack.suffixes)]
        y, *finals_k, ctx = run_forward(cell, backend, inp, dirs, lengths, training)
        for final, value in zip(finals, finals_k):
            final[k * D:(k + 1) * D] = value
        ctxs.append(ctx)
        if training and dropout > 0 and k < L - 1:
            masks.append(draw_mask(y.shape))
            y = y * masks[-1]  # not in place: y is the backend's, which may keep it
        inp = y
    y = inp.transpose(1, 0, 2) if batch_first else inp
    saved = StackSaved(stack, ctxs, masks, T, B, batch_first) if training else None
    return y, finals, saved


def backward(saved: StackSaved, dy, d_finals):
    """Backpropagate a training forward; consumes ``saved``. ``dy`` (y's shape) and ``d_finals``
    (one entry per state, (L*D, B, H)) are checked, each None for zeros. Returns
    (dx, d_initial states tuple, name -> parameter gradient)."""
    stack, xp = saved.stack, saved.ctxs[0].backend.xp
    L, D = stack.num_layers, stack.num_directions
    T, B, dtype = saved.T, saved.B, saved.ctxs[0].dtype
    if dy is None:
        d_out = xp.zeros((T, B, D * stack.output_size), dtype)
    else:
        d_out = xp.ascontiguousarray(dy.transpose(1, 0, 2) if saved.batch_first else dy)
    d_finals = [xp.zeros(stack.state_shape(B, name), dtype) if d is None
                else xp.ascontiguousarray(d) for name, d in zip(stack.cell.state_names, d_finals)]
    d_initials = tuple(xp.empty_like(d) for d in d_finals)
    grads = {}
    for k in reversed(range(L)):
        rows = slice(k * D, (k + 1) * D)
        dx, dir_grads = run_backward(saved.ctxs[k], d_out, d_finals[0][rows],
                                     d_finals[1][rows] if len(d_finals) > 1 else None)
        saved.ctxs[k] = None
        for j, (suffix, g) in enumerate(zip(stack.suffixes, dir_grads)):
            for name, stack_name in PARAM_NAMES.items():
                value = getattr(g, f"d{name}")
                if value is not None:
                    grads[f"{stack_name}_l{k}{suffix}"] = value
            for d_initial, value in zip(d_initials, (g.dh0, g.dc0)):
                d_initial[k * D + j] = value
        if k > 0 and saved.masks:
            dx *= saved.masks[k - 1]  # dx is the backend's fresh array
        d_out = dx
    dx = d_out.transpose(1, 0, 2) if saved.batch_first else d_out
    return dx, d_initials, grads


def _initial(states, row):
    """(h0, c0) of one layer and direction; c0 None for a cell with one state."""
    return states[0][row], states[1][row] if len(states) > 1 else None

"""RNN, LSTM and GRU layers on NumPy or CuPy arrays.

A layer holds parameters (PyTorch's names, shapes and initialisation, so a ``torch.nn`` state
dict loads unchanged), their accumulated gradients, its device and the pending training forward.
Everything else, stacking, both directions, lengths, dropout and the backward order, is the
composition in stack.py, which the module doc there describes.
"""

from __future__ import annotations

import weakref

import numpy as np

from . import dispatch, params, stack
from .backends.base import Backend
from .cells import Cell
from .checks import (check_dtype, check_flag, check_probability, check_size,
                     check_variant_arguments, xp_of)
from .stack import Stack


class _Parameters:
    """A stack's parameters and accumulated gradients on one device: PyTorch's names and order,
    state dicts, and moves between NumPy and CuPy."""

    def _init_parameters(self, stack_: Stack, dtype, backend, rng):
        self._stack, self.dtype = stack_, dtype
        self.backend, self.library, self._resolved = None, "numpy", None
        xp = np
        if backend is not None:
            chosen = dispatch.get_backend(backend)
            self.backend, self.library, xp = backend, chosen.library, chosen.xp
        self._params = params.initial(stack_, rng, dtype, xp)
        self.grads = {n: xp.zeros_like(p) for n, p in self._params.items()}

    def parameters(self):
        """An iterator over the parameter arrays in PyTorch's order (the layer's own arrays)."""
        return iter(list(self._params.values()))

    def named_parameters(self) -> dict:
        """name -> parameter array, in PyTorch's order. The arrays are the layer's own."""
        return dict(self._params)

    def state_dict(self) -> dict:
        """name -> parameter array, as ``torch.nn.Module.state_dict`` (references, not copies)."""
        return dict(self._params)

    def load_state_dict(self, state_dict) -> None:
        """Copy every parameter from ``state_dict`` (name -> NumPy array, CuPy array or tensor)
        into the layer's own arrays, as torch does: the layer never shares memory with the
        values given, and arrays taken from ``named_parameters()`` before stay the layer's.
        Values must have the layer's dtype. Everything is checked before anything is copied:
        missing, unexpected, mis-shaped or wrongly typed entries raise and leave the layer
        unchanged. Gradients keep accumulating (call ``zero_grad`` to reset them).
        """
        loaded = params.load(self._stack, state_dict, self._xp, self.dtype, repr(self))
        for name, value in loaded.items():
            self._params[name][...] = value

    def zero_grad(self) -> None:
        """Set every accumulated gradient in ``grads`` to zero (in place)."""
        for g in self.grads.values():
            g.fill(0)

    @property
    def _xp(self):
        return xp_of(self.library)

    def _chosen_backend(self) -> Backend:
        """The backend the layer runs on, resolved once per setting: its own ``backend`` when
        given, else the process default (``use_backend``, FASTRNN_BACKEND) or the arrays' rule."""
        key = self.backend if self.backend is not None else dispatch.default_backend_name()
        if self._resolved is None or self._resolved[0] != key:
            self._resolved = (key, dispatch.select(self.backend, self.library))
        return self._resolved[1]

    @property
    def device(self) -> str:
        return "cpu" if self.library == "numpy" else "cuda"

    def to(self, target):
        """Move the layer: "cpu" (NumPy arrays, the default backend for them), "cuda" (CuPy
        arrays, the "cupy" backend) or a backend name or instance. Parameters and gradients move
        between NumPy and CuPy as needed; a pending forward state is dropped. Returns the layer.
        """
        if isinstance(target, str) and target in ("cpu", "cuda"):
            backend = None if target == "cpu" else "cupy"
        elif isinstance(target, (str, Backend)):
            backend = target
        else:
            raise TypeError(f"to() takes 'cpu', 'cuda' or a backend name, got {target!r}")
        if backend is None:
            library, xp = "numpy", np
        else:
            chosen = dispatch.get_backend(backend)  # BackendUnavailable says why it cannot run
            library, xp = chosen.library, chosen.xp
        self._params = {n: params.to_library(p, xp) for n, p in self._params.items()}
        self.grads = {n: params.to_library(g, xp) for n, g in self.grads.items()}
        self._moved(library)
        self.backend, self.library, self._resolved = backend, library, None
        return self

    def _moved(self, library):
        """Hook for what a move invalidates."""


class PendingForward:
    """What one training forward kept for its backward, usable once: take it as
    ``layer.last_forward`` right after the forward and pass it as ``backward(handle=...)``.
    It refers weakly to the layer's earlier forward when that one was still pending, so an
    abandoned forward's state is freed."""

    def __init__(self, saved, layer, previous):
        self.saved = saved
        self._layer = weakref.ref(layer)
        self._previous = None if previous is None else weakref.ref(previous)

    @property
    def layer(self):
        return self._layer()

    @property
    def consumed(self) -> bool:
        return self.saved is None

    @property
    def ambiguous(self) -> bool:
        """An earlier forward was pending when this one ran, and it is still pending or was
        dropped without a backward."""
        if self._previous is None:
            return False
        earlier = self._previous()
        return earlier is None or not earlier.consumed

    def forget(self, earlier):
        """``earlier`` was backpropagated: it no longer makes this forward ambiguous."""
        if self._previous is not None and self._previous() is earlier:
            self._previous = None

    @staticmethod
    def checked(handle, layer):
        """``handle`` itself when it is a ``last_forward`` of ``layer`` not yet consumed."""
        if not isinstance(handle, PendingForward) or handle.layer is not layer:
            raise TypeError(f"handle must be a last_forward of this layer, got "
                            f"{type(handle).__name__}")
        if handle.consumed:
            raise RuntimeError("this handle's state was already consumed by a backward "
                               "call; run the forward again to backpropagate again")
        return handle

    def consume(self):
        saved, self.saved = self.saved, None
        return saved

    def __repr__(self):
        return f"<fastrnn PendingForward {'consumed' if self.consumed else 'ready'}>"


class _RecurrentLayer(_Parameters):
    """RNN, LSTM and GRU: the training mode, dropout's generator and the pending forward, around
    the composition in stack.py; the subclasses only name their cell."""

    def __init__(self, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, dtype, backend, seed):
        self.cell = cell
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.bias = check_flag("bias", bias)
        self.batch_first = check_flag("batch_first", batch_first)
        self.bidirectional = check_flag("bidirectional", bidirectional)
        self.dropout = check_probability("dropout", dropout,
                                         "the probability of zeroing an element")
        dtype = check_dtype(dtype, spelled="numpy.float32 or numpy.float64")
        try:
            self._rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"seed must be None or a non-negative int, got {seed!r}") from exc
        self._device_rng = None
        self._step_weights = None  # (backend, its step_weights of the parameter arrays)
        self.training = True
        self._drop_saved("no forward has run yet")
        self._init_parameters(Stack(cell, self.input_size, self.hidden_size, self.num_layers,
                                    self.bias, self.bidirectional), dtype, backend, self._rng)

    @property
    def num_directions(self) -> int:
        return self._stack.num_directions

    def train(self, mode=True):
        """Training mode (the default): dropout is on and forward keeps what backward needs."""
        self.training = check_flag("mode", mode)
        return self

    def eval(self):
        """Inference mode: no dropout, and forward keeps nothing for backward."""
        return self.train(False)

    def _moved(self, library):
        if library != self.library:
            self._device_rng = None
        self._step_weights = None
        self._drop_saved("the layer was moved with to()")

    def _drop_saved(self, why):
        self._saved = None
        self._why_no_saved = why

    @property
    def last_forward(self):
        """The ``PendingForward`` of the last training forward (None after an eval forward):
        keep it to backpropagate that forward later with ``backward(..., handle=it)``."""
        return self._saved

    def _kept(self, shape, p):
        """1 with probability 1 - p, else 0, from the layer's generator (on the layer's
        device): what dropout keeps and what zoneout updates."""
        xp = self._xp
        if xp is np:
            rng = self._rng
        else:
            if self._device_rng is None:
                self._device_rng = xp.random.default_rng(int(self._rng.integers(2**63)))
            rng = self._device_rng
        return (rng.random(shape, dtype=self.dtype) >= p).astype(self.dtype)

    def _dropout_mask(self, shape):
        """Keep with probability 1 - p, scaled by 1/(1 - p); all zeros for p = 1."""
        if self.dropout == 1:
            return self._xp.zeros(shape, self.dtype)
        mask = self._kept(shape, self.dropout)
        mask *= self.dtype.type(1.0 / (1.0 - self.dropout))
        return mask

    def _zoneout_mask(self, shape):
        """Zoneout's M in training: a unit takes its new value (1) with probability 1 - p."""
        return self._kept(shape, self.cell.variant.zoneout)

    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def forward(self, x, hx=None, lengths=None):
        """Run the stack; returns (y, h_n), for the LSTM (y, (h_n, c_n)). See stack.py."""
        states, lengths = stack.check_call(self._stack, x, hx, lengths, self.batch_first,
                                           self.library, self.dtype)
        backend = self._chosen_backend()
        previous = self._saved
        self._drop_saved("the last forward did not finish")
        y, finals, saved = stack.forward(
            self._stack, backend, self._params, x, states, lengths, training=self.training,
            batch_first=self.batch_first, dropout=self.dropout, draw_mask=self._dropout_mask,
            draw_zoneout=self._zoneout_mask)
        if self.training:
            self._saved = PendingForward(saved, self, None if previous is None
                                         or previous.consumed else previous)
        else:
            self._drop_saved("the last forward ran in eval mode, which keeps nothing for backward")
        return y, self.cell.as_hx(finals)

    def step(self, x, hx=None):
        """One time step through every layer, for decoding: x (B, input_size), hx as forward
        takes it (None: zeros); returns (y (B, hidden_size), hx after the step).

        In eval mode the step is one compiled call on the Numba backend, with the weights read
        as they are (an in-place update is seen by the next step), and keeps nothing for
        backward. In training mode it is ``forward`` over a sequence of one step (dropout
        included), whose backward takes dy of shape (1, B, H) (or (B, 1, H) with batch_first).
        A bidirectional layer has no step: its reverse direction starts from the sequence's end.
        A variant cell (projection, layer norm, zoneout) steps as a forward over one step.
        """
        if self.training or self.cell.variant.switches:
            y, hx = self.forward(x[:, None] if self.batch_first else x[None], hx)
            return (y[:, 0] if self.batch_first else y[0]), hx
        states = stack.check_step(self._stack, x, hx, self.library, self.dtype)
        backend = self._chosen_backend()
        if self._step_weights is None or self._step_weights[0] is not backend:
            self._step_weights = (backend, backend.step_weights(self.cell, [
                tuple(self._params.get(f"{kind}_l{k}") for kind in stack.PARAM_KINDS)
                for k in range(self.num_layers)]))
        self._drop_saved("the last call was a step in eval mode, which keeps nothing for "
                         "backward")
        y, finals = stack.step(self._stack, backend, self._step_weights[1], x, states)
        return y, self.cell.as_hx(finals)

    def backward(self, dy=None, dh_n=None, handle=None):
        """Backpropagate the last training forward, or the one of ``handle`` (a
        ``last_forward`` kept after it); returns (dx, dhx).

        dy has y's shape, dh_n h_n's; None means zeros. For the LSTM, dh_n may be an array (the
        gradient of h_n only) or a pair (dh_n, dc_n), and dhx is a pair (dh0, dc0). The
        gradients of the parameters are added to ``grads`` (same names as the parameters) until
        ``zero_grad``. The forward's state is consumed: a second backward needs a new forward.
        Without ``handle``, backward refuses when another training forward ran before the last
        one was backpropagated (weight sharing): which forward dy belongs to is then unclear.
        """
        pending = self._pending(handle)
        dy, d_finals = stack.check_cotangents(pending.saved, dy, dh_n, self.library, self.dtype)
        saved = pending.consume()
        if pending is self._saved:
            self._drop_saved("its state was already consumed by a backward call; run the "
                             "forward again to backpropagate again")
        elif self._saved is not None:
            self._saved.forget(pending)
        dx, d_initials, grads = stack.backward(saved, dy, d_finals)
        for name, value in grads.items():
            self.grads[name] += value
        return dx, self.cell.as_hx(d_initials)

    def _pending(self, handle):
        if handle is not None:
            return PendingForward.checked(handle, self)
        if self._saved is None:
            raise RuntimeError(f"backward needs the state of a forward in training mode, but "
                               f"{self._why_no_saved}")
        if self._saved.ambiguous:
            raise RuntimeError(
                "two training forwards ran before a backward (as with shared weights), so which "
                "one dy belongs to is ambiguous: keep h = layer.last_forward after each forward "
                "and call layer.backward(dy, handle=h), or backpropagate each forward before "
                "the next")
        return self._saved

    def __repr__(self):
        args = [str(self.input_size), str(self.hidden_size)]
        if self.num_layers != 1:
            args.append(f"num_layers={self.num_layers}")
        args += self._variant_repr()
        args += [f"{name}={value!r}" for name, value in self.cell.variant.described().items()
                 if name != "layer_norm"]
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                args.append(f"{name}={getattr(self, name)}")
        if self.dtype != np.float32:
            args.append(f"dtype={self.dtype}")
        if self.backend is not None:
            label = self.backend if isinstance(self.backend, str) else self.backend.name
            args.append(f"backend={label!r}")
        return f"{type(self).__name__}({', '.join(args)})"

    def _variant_repr(self):
        return []


class RNN(_RecurrentLayer):
    """Elman RNN layers, h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.

    Arguments as ``torch.nn.RNN`` (``nonlinearity`` is the fourth positional argument there too),
    plus ``zoneout`` (cells.Variant: the probability that a unit keeps its previous value, in
    training; evaluation mixes h' = p h + (1 - p) h_new), ``dtype``, ``backend`` (a name or
    instance; None lets dispatch pick for the arrays) and ``seed`` (initialisation, dropout and
    zoneout).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, zoneout=0.0,
                 dtype=np.float32, backend=None, seed=None):
        if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        variant = check_variant_arguments(check_size("hidden_size", hidden_size),
                                          zoneout=zoneout)
        super().__init__(Cell("rnn", nonlinearity=nonlinearity, variant=variant), input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dtype, backend, seed)

    def _variant_repr(self):
        return [] if self.nonlinearity == "tanh" else [f"nonlinearity={self.nonlinearity!r}"]


class LSTM(_RecurrentLayer):
    """LSTM layers, gates i, f, g, o (PyTorch's order); forward returns (y, (h_n, c_n)).

    Arguments as ``torch.nn.LSTM`` (``proj_size``: h = W_hr (o * tanh(c')), so h and y have
    proj_size columns), plus ``zoneout`` (as for RNN; on h only, never on c), ``dtype``,
    ``backend``, ``seed``.
    """

    _layer_norm = False

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, zoneout=0.0,
                 dtype=np.float32, backend=None, seed=None):
        variant = check_variant_arguments(check_size("hidden_size", hidden_size), proj_size,
                                          zoneout, self._layer_norm)
        super().__init__(Cell("lstm", variant=variant), input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, dtype, backend, seed)

    @property
    def proj_size(self) -> int:
        return self.cell.variant.proj_size


class GRU(_RecurrentLayer):
    """GRU layers, gates r, z, n (PyTorch's order).

    Arguments as ``torch.nn.GRU``, plus ``linear_before_reset`` (True: PyTorch's form,
    n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); False: the textbook form,
    n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)), ``zoneout`` (as for RNN), ``dtype``,
    ``backend`` and ``seed``.
    """

    _layer_norm = False

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, linear_before_reset=True, zoneout=0.0,
                 dtype=np.float32, backend=None, seed=None):
        self.linear_before_reset = check_flag("linear_before_reset", linear_before_reset)
        variant = check_variant_arguments(check_size("hidden_size", hidden_size),
                                          zoneout=zoneout, layer_norm=self._layer_norm)
        super().__init__(Cell("gru", linear_before_reset=self.linear_before_reset,
                              variant=variant), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, dtype, backend, seed)

    def _variant_repr(self):
        return [] if self.linear_before_reset else ["linear_before_reset=False"]


class LayerNormLSTM(LSTM):
    """LSTM layers with layer normalisation (cells.Variant, Haste's formulation in PyTorch's gate
    order): gx = LN(W_ih x) * g_ih + b_ih, gh = LN(W_hh h) * g_hh + b_hh,
    h' = o * tanh(LN(c') * g_c + b_c). The gains start at 1 and b_c at 0; they are the
    parameters layernorm_ih_weight_l{k}, layernorm_hh_weight_l{k}, layernorm_c_weight_l{k} and
    layernorm_c_bias_l{k} (suffix _reverse). Arguments as ``LSTM``."""

    _layer_norm = True


class LayerNormGRU(GRU):
    """GRU layers (linear_before_reset) with layer normalisation: gx = LN(W_ih x) * g_ih + b_ih,
    gh = LN(W_hh h) * g_hh + b_hh, then r, z, n as the GRU. The gains start at 1; they are
    layernorm_ih_weight_l{k} and layernorm_hh_weight_l{k} (suffix _reverse). Arguments as
    ``GRU`` (linear_before_reset must stay True)."""

    _layer_norm = True

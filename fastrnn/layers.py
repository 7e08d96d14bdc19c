"""RNN, LSTM and GRU layers: stacking, both directions, sequence lengths, dropout, state dicts.

The composition is written once, here, above the backends. Layer k of a stack calls
``backend.forward`` once with its one or two directions (so a fused backend projects the input of
both directions with one GEMM and writes both halves of y), and backward calls ``backend.backward``
once per layer, from the top layer down, feeding each layer's dx to the layer below as its dy.

Conventions are PyTorch's, so a ``torch.nn.RNN/LSTM/GRU`` state dict loads unchanged:

    parameters   weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, suffix _reverse for
                 the reverse direction; shapes (G*H, I_k), (G*H, H), (G*H,), (G*H,) with
                 I_0 = input_size and I_k = D*H above
    x, y         (T, B, I) and (T, B, D*H), or (B, T, ...) with batch_first; the two directions
                 are concatenated on the last axis
    hx, h_n      (num_layers*D, B, H), row k*D + d for layer k and direction d (0 forward,
                 1 reverse); the LSTM takes and returns a pair (h, c)
    lengths      packed-sequence semantics in every layer and direction: step t of sequence b
                 is valid when t < L_b, y is zero at the other steps (as pad_packed_sequence
                 gives) and h_n is the state after each sequence's own last valid step
    dropout      applied to the output of every layer but the last, in training mode only:
                 each element is kept with probability 1 - p and scaled by 1/(1 - p)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
import numpy as np

from . import dispatch
from .api import (
    FLOAT_DTYPES,
    array_library,
    check_array,
    check_flag,
    check_lengths,
    check_shape,
    run_backward,
    run_forward,
    xp_of,
)
from .backends.base import Backend, Direction
from .cells import Cell

PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _check_size(name, value, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dt}")
    return dt


def _to_library(a, xp):
    """``a`` (NumPy or CuPy) as an array of ``xp``; no copy when it already is one."""
    if xp is np:
        return a if isinstance(a, np.ndarray) else a.get()
    return xp.asarray(a)


def _from_torch(name, t, xp):
    """A torch tensor as an ``xp`` array, sharing memory where the devices allow."""
    t = t.detach()
    if str(t.dtype) not in ("torch.float32", "torch.float64"):
        raise TypeError(f"{name} must have dtype float32 or float64, got {t.dtype}")
    if t.device.type == "cuda" and xp is not np:
        return xp.from_dlpack(t)
    return _to_library(t.cpu().resolve_conj().resolve_neg().numpy(), xp)


@dataclass
class _Saved:
    """What a training forward keeps: one Context per layer and the dropout masks between them."""

    ctxs: list
    masks: list
    T: int
    B: int
    batch_first: bool


class _RecurrentLayer:
    """The stack shared by RNN, LSTM and GRU; the subclasses only name their cell."""

    def __init__(self, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, dtype, backend, seed):
        self.cell = cell
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        self.bias = check_flag("bias", bias)
        self.batch_first = check_flag("batch_first", batch_first)
        self.bidirectional = check_flag("bidirectional", bidirectional)
        if (not isinstance(dropout, numbers.Real) or isinstance(dropout, (bool, np.bool_))
                or not 0 <= dropout <= 1):
            raise ValueError(
                f"dropout must be a number in [0, 1] (the probability of zeroing an element), "
                f"got {dropout!r}")
        self.dropout = float(dropout)
        self.dtype = _check_dtype(dtype)
        try:
            self._rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"seed must be None or a non-negative int, got {seed!r}") from exc
        self._device_rng = None
        self.training = True
        self._saved = None
        self._why_no_saved = "no forward has run yet"

        self.backend = None
        self.library = "numpy"
        xp = np
        if backend is not None:
            chosen = dispatch.get_backend(backend)
            self.backend, self.library, xp = backend, chosen.library, chosen.xp

        # PyTorch's order and initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H)).
        bound = 1.0 / math.sqrt(self.hidden_size)
        self._params = {}
        for name, shape in self._param_shapes().items():
            values = self._rng.uniform(-bound, bound, shape).astype(self.dtype)
            self._params[name] = _to_library(values, xp)
        self.grads = {n: xp.zeros_like(p) for n, p in self._params.items()}

    # ------------------------------------------------------------------------------------------
    # Parameters

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _param_shapes(self) -> dict:
        GH, H, D = self.cell.gates * self.hidden_size, self.hidden_size, self.num_directions
        shapes = {}
        for k in range(self.num_layers):
            I = self.input_size if k == 0 else D * H
            for suffix in ("", "_reverse")[:D]:
                shapes[f"weight_ih_l{k}{suffix}"] = (GH, I)
                shapes[f"weight_hh_l{k}{suffix}"] = (GH, H)
                if self.bias:
                    shapes[f"bias_ih_l{k}{suffix}"] = (GH,)
                    shapes[f"bias_hh_l{k}{suffix}"] = (GH,)
        return shapes

    def named_parameters(self) -> dict:
        """name -> parameter array, in PyTorch's order. The arrays are the layer's own."""
        return dict(self._params)

    def state_dict(self) -> dict:
        """name -> parameter array, as ``torch.nn.Module.state_dict`` (references, not copies)."""
        return dict(self._params)

    def load_state_dict(self, state_dict) -> None:
        """Take every parameter from ``state_dict`` (name -> NumPy array, CuPy array or tensor).

        Values are converted without a copy where the devices allow it (CPU tensors via
        ``.numpy()``, CUDA tensors into a CuPy layer via DLPack), so the layer may share memory
        with them; they must have the layer's dtype. Everything is checked before anything is
        replaced: missing, unexpected, mis-shaped or wrongly typed entries raise and leave the
        layer unchanged. Gradients keep accumulating (call ``zero_grad`` to reset them).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping name -> array, "
                            f"got {type(state_dict).__name__}")
        bad_keys = [k for k in state_dict if not isinstance(k, str)]
        if bad_keys:
            raise TypeError(f"state_dict keys must be parameter names (str), got {bad_keys[0]!r}")
        shapes = self._param_shapes()
        missing = [n for n in shapes if n not in state_dict]
        unexpected = [n for n in state_dict if n not in shapes]
        if missing or unexpected:
            parts = ([f"missing keys {missing}"] if missing else []) + (
                [f"unexpected keys {unexpected}"] if unexpected else [])
            raise ValueError(f"state_dict does not match {self!r}: {'; '.join(parts)}")
        xp = self._xp
        loaded = {}
        for name, shape in shapes.items():
            value = state_dict[name]
            label = f"state_dict[{name!r}]"
            if array_library(value) == "torch" and hasattr(value, "detach"):
                value = _from_torch(label, value, xp)
            else:
                check_array(label, value)
                value = _to_library(value, xp)
            if value.dtype != self.dtype:
                raise TypeError(f"{label} must have the layer's dtype {self.dtype}, got "
                                f"{value.dtype} (create the layer with dtype={value.dtype})")
            labels = "(G*H, I)" if name.startswith("weight_ih") else (
                "(G*H, H)" if name.startswith("weight_hh") else "(G*H,)")
            check_shape(label, value, shape, labels)
            loaded[name] = xp.ascontiguousarray(value)
        self._params = loaded

    def zero_grad(self) -> None:
        """Set every accumulated gradient in ``grads`` to zero (in place)."""
        for g in self.grads.values():
            g.fill(0)

    # ------------------------------------------------------------------------------------------
    # Mode and placement

    def train(self, mode=True):
        """Training mode (the default): dropout is on and forward keeps what backward needs."""
        self.training = check_flag("mode", mode)
        return self

    def eval(self):
        """Inference mode: no dropout, and forward keeps nothing for backward."""
        return self.train(False)

    @property
    def _xp(self):
        if self.backend is not None:
            return dispatch.get_backend(self.backend).xp
        return xp_of(self.library)

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
        self._params = {n: _to_library(p, xp) for n, p in self._params.items()}
        self.grads = {n: _to_library(g, xp) for n, g in self.grads.items()}
        if library != self.library:
            self._device_rng = None
        self.backend, self.library = backend, library
        self._drop_saved("the layer was moved with to()")
        return self

    # ------------------------------------------------------------------------------------------
    # Forward

    def _check_input(self, name, a, shape, labels):
        lib = check_array(name, a)
        if lib != self.library:
            raise TypeError(
                f"{name} is a {lib} array but the layer's parameters are {self.library} arrays; "
                f"pass {self.library} arrays or move the layer with .to()")
        if a.dtype != self.dtype:
            raise TypeError(f"{name} must have the layer's dtype {self.dtype}, got {a.dtype} "
                            f"(no silent casting)")
        check_shape(name, a, shape, labels)

    def _drop_saved(self, why):
        self._saved = None
        self._why_no_saved = why

    def _dropout_mask(self, xp, shape):
        """Keep with probability 1 - p, scaled by 1/(1 - p); all zeros for p = 1."""
        if self.dropout == 1:
            return xp.zeros(shape, self.dtype)
        if xp is np:
            rng = self._rng
        else:
            if self._device_rng is None:
                self._device_rng = xp.random.default_rng(int(self._rng.integers(2**63)))
            rng = self._device_rng
        mask = (rng.random(shape, dtype=self.dtype) >= self.dropout).astype(self.dtype)
        mask *= self.dtype.type(1.0 / (1.0 - self.dropout))
        return mask

    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def forward(self, x, hx=None, lengths=None):
        """Run the stack; returns (y, h_n), for the LSTM (y, (h_n, c_n)). See the module doc."""
        check_array("x", x)
        if x.ndim != 3:
            layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(f"x must have shape {layout}, got shape {tuple(x.shape)}")
        if self.batch_first:
            B, T, I = x.shape
            self._check_input("x", x, (B, T, self.input_size), "(B, T, input_size)")
        else:
            T, B, I = x.shape
            self._check_input("x", x, (T, B, self.input_size), "(T, B, input_size)")
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        state_shape, state_labels = (L * D, B, H), "(num_layers*num_directions, B, H)"
        h0 = c0 = None
        if self.cell.has_cell_state and hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx for the LSTM must be a pair (h0, c0), "
                                f"got {type(hx).__name__}")
            h0, c0 = hx
            self._check_input("hx[0] (h0)", h0, state_shape, state_labels)
            self._check_input("hx[1] (c0)", c0, state_shape, state_labels)
        elif hx is not None:
            h0 = hx
            self._check_input("hx", h0, state_shape, state_labels)
        lengths = check_lengths(lengths, T, B)

        backend = dispatch.select(self.backend, self.library)
        xp = backend.xp
        training = self.training
        self._drop_saved("the last forward did not finish")
        # The one copy batch_first needs: the backends take time-major, C-contiguous input.
        inp = xp.ascontiguousarray(x.transpose(1, 0, 2) if self.batch_first else x)
        h0 = xp.zeros(state_shape, self.dtype) if h0 is None else xp.ascontiguousarray(h0)
        if self.cell.has_cell_state:
            c0 = xp.zeros(state_shape, self.dtype) if c0 is None else xp.ascontiguousarray(c0)
        h_n = xp.empty(state_shape, self.dtype)
        c_n = xp.empty(state_shape, self.dtype) if self.cell.has_cell_state else None
        ctxs, masks = [], []
        for k in range(L):
            rows = slice(k * D, (k + 1) * D)
            dirs = [Direction(*self._layer_params(k, suffix), h0[k * D + j],
                              None if c0 is None else c0[k * D + j], reverse=j == 1)
                    for j, suffix in enumerate(("", "_reverse")[:D])]
            y, h_k, c_k, ctx = run_forward(self.cell, backend, inp, dirs, lengths, training,
                                           self.library)
            h_n[rows] = h_k
            if c_n is not None:
                c_n[rows] = c_k
            ctxs.append(ctx)
            if training and self.dropout > 0 and k < L - 1:
                masks.append(self._dropout_mask(xp, y.shape))
                y = y * masks[-1]  # not in place: y is the backend's, which may keep it
            inp = y
        if training:
            self._saved = _Saved(ctxs, masks, T, B, self.batch_first)
        else:
            self._drop_saved("the last forward ran in eval mode, which keeps nothing for backward")
        y = inp.transpose(1, 0, 2) if self.batch_first else inp
        return (y, (h_n, c_n)) if self.cell.has_cell_state else (y, h_n)

    def _layer_params(self, k, suffix):
        """(W_ih, W_hh, b_ih, b_hh) of layer k in one direction; biases None without bias."""
        return tuple(self._params.get(f"{kind}_l{k}{suffix}") for kind in PARAM_KINDS)

    # ------------------------------------------------------------------------------------------
    # Backward

    def _cotangent(self, name, g, shape, labels):
        if g is not None:
            self._check_input(name, g, shape, labels)
        return g

    def backward(self, dy=None, dh_n=None):
        """Backpropagate the last training forward; returns (dx, dhx).

        dy has y's shape, dh_n h_n's; None means zeros. For the LSTM, dh_n may be an array (the
        gradient of h_n only) or a pair (dh_n, dc_n), and dhx is a pair (dh0, dc0). The
        gradients of the parameters are added to ``grads`` (same names as the parameters) until
        ``zero_grad``. The forward's state is consumed: a second backward needs a new forward.
        """
        if self._saved is None:
            raise RuntimeError(f"backward needs the state of a forward in training mode, but "
                               f"{self._why_no_saved}")
        saved = self._saved
        T, B = saved.T, saved.B
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        xp = saved.ctxs[0].backend.xp
        y_shape, y_labels = ((B, T, D * H), "(B, T, D*H)") if saved.batch_first else (
            (T, B, D * H), "(T, B, D*H)")
        state_shape, state_labels = (L * D, B, H), "(num_layers*num_directions, B, H)"
        dc_n = None
        if self.cell.has_cell_state and isinstance(dh_n, (tuple, list)):
            if len(dh_n) != 2:
                raise TypeError(f"dh_n for the LSTM must be an array or a pair (dh_n, dc_n), "
                                f"got a {type(dh_n).__name__} of length {len(dh_n)}")
            dh_n, dc_n = dh_n
        dy = self._cotangent("dy", dy, y_shape, y_labels)
        dh_n = self._cotangent("dh_n", dh_n, state_shape, state_labels)
        dc_n = self._cotangent("dc_n", dc_n, state_shape, state_labels)

        self._drop_saved("its state was already consumed by a backward call; run the forward "
                         "again to backpropagate again")
        zeros = (lambda shape: xp.zeros(shape, self.dtype))
        if dy is None:
            d_out = zeros((T, B, D * H))
        else:
            d_out = xp.ascontiguousarray(dy.transpose(1, 0, 2) if saved.batch_first else dy)
        dh_n = zeros(state_shape) if dh_n is None else xp.ascontiguousarray(dh_n)
        if self.cell.has_cell_state:
            dc_n = zeros(state_shape) if dc_n is None else xp.ascontiguousarray(dc_n)
        dh0 = xp.empty(state_shape, self.dtype)
        dc0 = xp.empty(state_shape, self.dtype) if self.cell.has_cell_state else None
        for k in reversed(range(L)):
            rows = slice(k * D, (k + 1) * D)
            dx, dir_grads = run_backward(saved.ctxs[k], d_out, dh_n[rows],
                                         None if dc_n is None else dc_n[rows])
            saved.ctxs[k] = None
            for j, (suffix, g) in enumerate(zip(("", "_reverse"), dir_grads)):
                for kind, value in zip(PARAM_KINDS, (g.dW_ih, g.dW_hh, g.db_ih, g.db_hh)):
                    if value is not None:
                        self.grads[f"{kind}_l{k}{suffix}"] += value
                dh0[k * D + j] = g.dh0
                if dc0 is not None:
                    dc0[k * D + j] = g.dc0
            if k > 0 and saved.masks:
                dx *= saved.masks[k - 1]  # dx is the backend's fresh array
            d_out = dx
        dx = d_out.transpose(1, 0, 2) if saved.batch_first else d_out
        return (dx, (dh0, dc0)) if self.cell.has_cell_state else (dx, dh0)

    def __repr__(self):
        args = [str(self.input_size), str(self.hidden_size)]
        if self.num_layers != 1:
            args.append(f"num_layers={self.num_layers}")
        args += self._variant_repr()
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
    plus ``dtype``, ``backend`` (a name or instance; None lets dispatch pick for the arrays) and
    ``seed`` (initialisation and dropout).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32,
                 backend=None, seed=None):
        if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(Cell("rnn", nonlinearity=nonlinearity), input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, dtype, backend,
                         seed)

    def _variant_repr(self):
        return [] if self.nonlinearity == "tanh" else [f"nonlinearity={self.nonlinearity!r}"]


class LSTM(_RecurrentLayer):
    """LSTM layers, gates i, f, g, o (PyTorch's order); forward returns (y, (h_n, c_n)).

    Arguments as ``torch.nn.LSTM`` (without proj_size), plus ``dtype``, ``backend``, ``seed``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, backend=None, seed=None):
        super().__init__(Cell("lstm"), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype, backend, seed)


class GRU(_RecurrentLayer):
    """GRU layers, gates r, z, n (PyTorch's order).

    Arguments as ``torch.nn.GRU``, plus ``linear_before_reset`` (True: PyTorch's form,
    n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); False: the textbook form,
    n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)), ``dtype``, ``backend`` and ``seed``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, linear_before_reset=True,
                 dtype=np.float32, backend=None, seed=None):
        self.linear_before_reset = check_flag("linear_before_reset", linear_before_reset)
        super().__init__(Cell("gru", linear_before_reset=self.linear_before_reset), input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dtype, backend, seed)

    def _variant_repr(self):
        return [] if self.linear_before_reset else ["linear_before_reset=False"]


# ----------------------------------------------------------------------------------------------
# Training-loop helpers


def clip_grad_norm(grads, max_norm, norm_type=2.0) -> float:
    """Scale gradients IN PLACE so that their total norm is at most ``max_norm``.

    ``grads`` is a mapping name -> array (such as ``layer.grads``; None values are skipped) or an
    iterable of arrays. As ``torch.nn.utils.clip_grad_norm_`` does: the total norm is the
    ``norm_type`` norm of all the gradients together; when ``max_norm / (total + 1e-6)`` is below
    1, every array is multiplied by it in place (the arrays given are modified, which is the
    point: the layer's own ``grads`` are clipped). Returns the total norm before scaling.
    """
    if (not isinstance(max_norm, numbers.Real) or isinstance(max_norm, (bool, np.bool_))
            or not max_norm >= 0):
        raise ValueError(f"max_norm must be a non-negative number, got {max_norm!r}")
    if (not isinstance(norm_type, numbers.Real) or isinstance(norm_type, (bool, np.bool_))
            or not norm_type > 0):
        raise ValueError(f"norm_type must be a positive number or inf, got {norm_type!r}")
    if isinstance(grads, Mapping):
        named = [(f"grads[{n!r}]", g) for n, g in grads.items() if g is not None]
    else:
        named = [(f"grads[{i}]", g) for i, g in enumerate(grads)]
    for name, g in named:
        check_array(name, g)
    norms = []
    for _, g in named:
        xp = xp_of(array_library(g))
        norms.append(float(xp.linalg.norm(g.ravel(), ord=norm_type)) if g.size else 0.0)
    total = float(np.linalg.norm(np.asarray(norms, np.float64), ord=norm_type)) if norms else 0.0
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for _, g in named:
            g *= g.dtype.type(coef)
    return total

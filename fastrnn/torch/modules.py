"""``fastrnn.torch.RNN / LSTM / GRU``: drop-ins for ``torch.nn.RNN / LSTM / GRU``.

A module is torch parameters (torch's names, order, shapes and initialisation) plus one call
of the ``fastrnn::stack_forward`` custom op (ops.py), which runs the composition in stack.py on
the tensors' memory. The module only turns torch's calling conventions into stack.py's:
unbatched input, packed sequences (padded + lengths, never step by step), hx and its
permutation, and the dropout masks, drawn from torch's generator so ``torch.manual_seed``
reproduces them.

The classes derive from ``torch.nn.Module``, not ``torch.nn.RNNBase``: Dynamo refuses to trace
RNNBase subclasses unless a global flag is set, and this way ``torch.compile(fullgraph=True)``
traces them as any module.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
import numbers
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..cells import Cell
from .. import stack
from ..checks import check_variant_arguments
from ..params import constant_start
from ..stack import Stack
from . import ops
from .devices import adapter_for, backend_for

_SUPPORTED = (torch.float32, torch.float64)
_SERIAL = contextlib.nullcontext()


class _RecurrentModule(nn.Module):
    """What RNN, LSTM and GRU share; the subclasses only name their cell."""

    _layer_norm = False

    def __init__(self, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, proj_size, device, dtype, backend, zoneout):
        super().__init__()
        _check_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         proj_size)
        if dtype is not None and dtype not in _SUPPORTED:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        cell = replace(cell, variant=check_variant_arguments(
            hidden_size, proj_size, zoneout, self._layer_norm))
        self.cell, self.backend = cell, backend
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.zoneout = cell.variant.zoneout
        self._stack = Stack(cell, input_size, hidden_size, num_layers, bias, bidirectional)
        for name, shape in self._stack.param_shapes().items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, device=device,
                                                                   dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's: every parameter from U(-1/sqrt(H), 1/sqrt(H)), drawn in order, so the same
        seed gives torch.nn's numbers; the layer norms' gains start at 1 and c's bias at 0."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for name, weight in self.named_parameters():
            value = constant_start(name)
            if value is None:
                nn.init.uniform_(weight, -bound, bound)
            else:
                nn.init.constant_(weight, value)

    def flatten_parameters(self) -> None:
        """Does nothing: the kernels take the parameters where they are (torch's cuDNN path
        needs one flat buffer, fastrnn does not)."""

    @property
    def all_weights(self) -> list:
        """The parameters per layer and direction, as torch.nn's ``all_weights``."""
        names = list(self._stack.param_shapes())
        per = len(names) // (self.num_layers * self._stack.num_directions)
        return [[getattr(self, n) for n in names[i:i + per]] for i in range(0, len(names), per)]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + "".join(f", {k}={v!r}" for k, v in self._variant().items())

    def _variant(self) -> dict:
        """Constructor arguments beyond torch's that differ from their defaults."""
        extra = {k: v for k, v in self.cell.variant.described().items() if k != "layer_norm"}
        return extra | ({} if self.backend is None else {"backend": self.backend})

    def forward(self, input, hx=None):
        """As torch.nn: input (L, N, H_in), (N, L, H_in) with batch_first, unbatched (L, H_in),
        or a PackedSequence; hx (D*num_layers, N, H) or (D*num_layers, H) unbatched, for the
        LSTM a pair (h_0, c_0); None means zeros. Returns (output, h_n), (output, (h_n, c_n)) for
        the LSTM, with output of input's kind: (L, N, D*H) / (N, L, D*H) / (L, D*H) tensors, or
        a PackedSequence with input's sorted and unsorted indices."""
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if not isinstance(input, torch.Tensor) or input.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got "
                             f"{getattr(input, 'dim', lambda: type(input).__name__)()}D instead")
        if input.dim() == 3:
            y, finals = self._run(input, self._states(hx, input, input.shape[
                0 if self.batch_first else 1], batched=True), None, self.batch_first)
            return y, self.cell.as_hx(finals)
        batch_dim = 0 if self.batch_first else 1
        states = self._states(hx, input, 1, batched=False)
        y, finals = self._run(input.unsqueeze(batch_dim), [s.unsqueeze(1) for s in states],
                              None, self.batch_first)
        return y.squeeze(batch_dim), self.cell.as_hx(f.squeeze(1) for f in finals)

    def step(self, input, hx=None):
        """One time step through every layer, for decoding: input (N, H_in) (or (H_in,)
        unbatched), hx as forward takes it, None for zeros. Returns (output (N, H), hx after the
        step), for the LSTM (output, (h, c)).

        In eval mode, or under torch.no_grad / inference_mode (without dropout to apply), the
        step is inference: on the CPU one compiled call that reads the parameters' memory as it is
        (so optimizer steps and writes through ``.data`` are seen), whose outputs carry no
        autograd history. In training mode with gradients enabled it is ``forward`` over one
        step, dropout and autograd included. A bidirectional module has no step."""
        if self.bidirectional:
            raise ValueError("step runs a unidirectional stack: the reverse direction of a "
                             "bidirectional module starts from the end of the sequence; run "
                             "forward over the whole sequence instead")
        if not isinstance(input, torch.Tensor) or input.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}.step: expected input (N, H_in) or (H_in,), "
                             f"got {getattr(input, 'dim', lambda: type(input).__name__)()}D")
        if self.cell.variant.switches or self.training and (
                torch.is_grad_enabled() or (self.dropout > 0 and self.num_layers > 1)):
            # A variant cell (projection, layer norm, zoneout) has no step kernel
            time_dim = 1 if self.batch_first and input.dim() == 2 else 0
            y, hx = self.forward(input.unsqueeze(time_dim), hx)
            return y.squeeze(time_dim), hx
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        states = self._states(hx, x, x.shape[0], batched=batched)
        if not batched:
            states = [s.unsqueeze(1) for s in states]
        params = list(self._parameters.values())
        device, dtype = params[0].device, params[0].dtype
        if not all(t.dtype == dtype and t.device == device for t in (x, *states)):
            for name, t in (("input", x), *zip(self.cell.named("hx ({}_0)"), states)):
                _check_dtype(name, t, params[0])
        adapter = adapter_for(device)
        backend = backend_for(device, self.backend)
        # The numba step kernel is one serial call: it needs no thread setting, unless the
        # batch is large enough to step through the threaded forward path (the CuPy step
        # needs torch's stream)
        serial = adapter.library == "numpy" and x.shape[0] * self.hidden_size < getattr(
            backend, "step_forward_min_state", 0)
        with _SERIAL if serial else adapter.running(backend, device):
            y, finals = stack.step(self._stack, backend, self._step_weights(backend, params),
                                   adapter.array(x), [adapter.array(s) for s in states])
        finals = [adapter.tensor(f) for f in finals]
        if not batched:
            y, finals = y[0], [f[:, 0] for f in finals]
        return adapter.tensor(y), self.cell.as_hx(finals)

    def _step_weights(self, backend, params):
        """backend.step_weights of the parameters' arrays, kept while the same parameters hold
        the same memory (an assignment to ``.data`` or a move makes it again). The arrays keep
        the old memory alive, so an id and address seen again are the same parameter."""
        key = tuple((id(p), p.data_ptr(), p.dtype, p.shape) for p in params)
        cached = self.__dict__.get("_step_cache")
        if cached is None or cached[0] is not backend or cached[1] != key:
            adapter, per_layer = adapter_for(params[0].device), len(params) // self.num_layers
            arrays = [adapter.array(p) for p in params]
            layers = [tuple(arrays[k * per_layer:(k + 1) * per_layer]) + (None, None)
                      for k in range(self.num_layers)]
            cached = (backend, key, backend.step_weights(self.cell, [lay[:4] for lay in layers]))
            self.__dict__["_step_cache"] = cached
        return cached[2]

    def _forward_packed(self, packed, hx):
        """Packed input as padded + lengths. pad_packed_sequence gives the batch in its original
        order, in which hx comes and h_n goes back, so running in that order is torch's
        permutation of hx by sorted_indices and of h_n by unsorted_indices; only the output data
        is packed in sorted order, as torch's is."""
        x, lengths = pad_packed_sequence(packed)
        states = self._states(hx, x, x.shape[1], batched=True)
        y, finals = self._run(x, states, lengths, False)
        order = packed.sorted_indices
        if order is not None:
            y, lengths = y.index_select(1, order), lengths[order.cpu()]
        out = PackedSequence(pack_padded_sequence(y, lengths).data, packed.batch_sizes,
                             packed.sorted_indices, packed.unsorted_indices)
        return out, self.cell.as_hx(finals)

    def _states(self, hx, x, B, batched):
        """hx checked against the stack, as a list with one tensor per state (zeros for None)."""
        shapes = [self._stack.state_shape(B, name) for name in self.cell.state_names]
        if not batched:
            shapes = [(shape[0], shape[2]) for shape in shapes]
        if hx is None:
            return [x.new_zeros(shape) for shape in shapes]
        states = self.cell.from_hx(hx) if isinstance(hx, (tuple, list)) or not \
            self.cell.has_cell_state else None
        if states is None or len(states) != len(self.cell.state_names):
            raise TypeError(f"hx for the LSTM must be a pair (h_0, c_0), got {type(hx).__name__}")
        for name, shape, s in zip(self.cell.named("{}_0"), shapes, states):
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != shape:
                raise RuntimeError(f"Expected hidden size {shape} for {name}, got "
                                   f"{tuple(getattr(s, 'shape', ()))}"
                                   + ("" if batched else " (unbatched input: hx has no batch "
                                      "dimension)"))
        return list(states)

    def _run(self, x, states, lengths, batch_first):
        """One call of the custom op; returns (y, finals list)."""
        params = list(self._parameters.values())
        for name, t in (("input", x), *zip(self.cell.named("hx ({}_0)"), states)):
            _check_dtype(name, t, params[0])
        masks = self._masks(x, batch_first)
        keep = torch.is_grad_enabled() and (
            x.requires_grad or any(t.requires_grad for t in (*states, *params)))
        config = (self.cell.spec, self.hidden_size, self.num_layers, self.bidirectional,
                  batch_first, self.dropout)
        return ops.forward(x, states, params, lengths, masks, config, keep, self.backend or "")

    def _masks(self, x, batch_first):
        """In training, the masks in the order stack.forward takes them: per layer, zoneout's
        (T, B, H_out) per direction (1 with probability 1 - p), then torch's dropout between
        layers, a mask (T, B, D*H_out) from ``bernoulli_(1 - p) / (1 - p)`` for every layer but
        the last, drawn on torch's generator (without zoneout, as torch.nn draws them)."""
        if not self.training:
            return []
        T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
        D, H_out = self._stack.num_directions, self._stack.output_size
        masks = []
        for k in range(self.num_layers):
            if self.zoneout:
                masks += [x.new_empty((T, B, H_out)).bernoulli_(1 - self.zoneout)
                          for _ in range(D)]
            if self.dropout > 0 and k < self.num_layers - 1:
                keep = 1 - self.dropout
                masks.append(x.new_zeros((T, B, D * H_out)) if keep == 0 else
                             x.new_empty((T, B, D * H_out)).bernoulli_(keep).div_(keep))
        return masks

    @classmethod
    def from_torch(cls, module, backend=None):
        """The fastrnn module with ``module``'s configuration, weights (copied), device, dtype
        and training mode; ``module`` is a torch.nn module of the same kind."""
        expected = {"RNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}[cls.__name__]
        if type(module) is not expected:
            raise TypeError(f"{cls.__name__}.from_torch takes a torch.nn.{cls.__name__}, got "
                            f"{type(module).__name__}")
        first = next(module.parameters())
        kwargs = {"nonlinearity": module.nonlinearity} if cls.__name__ == "RNN" else {}
        if module.proj_size:
            kwargs["proj_size"] = module.proj_size
        new = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                  batch_first=module.batch_first, dropout=module.dropout,
                  bidirectional=module.bidirectional, device=first.device, dtype=first.dtype,
                  backend=backend, **kwargs)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)


def _check_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                     proj_size):
    """torch.nn's constructor checks, with its messages."""
    if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
            or not 0 <= dropout <= 1):
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      "non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")
    if not isinstance(proj_size, int) or isinstance(proj_size, bool):
        raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


def _check_dtype(name, t, param):
    if t.dtype not in _SUPPORTED:
        raise TypeError(f"{name} has dtype {t.dtype}; fastrnn runs float32 and float64 only "
                        f"(cast it with .float() or .double(), and the module with it)")
    if t.dtype != param.dtype or t.device != param.device:
        raise TypeError(f"{name} is a {t.dtype} tensor on {t.device} but the module's "
                        f"parameters are {param.dtype} on {param.device}; move one to the other")


class RNN(_RecurrentModule):
    """Drop-in for torch.nn.RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.

    Arguments as torch.nn.RNN (``nonlinearity`` fourth), plus ``backend`` (a fastrnn backend
    name; None lets dispatch pick by device: Numba on the CPU, CuPy on CUDA) and ``zoneout``
    (the probability that a unit keeps its previous value in training, masks drawn on torch's
    generator; in eval mode h' = p h + (1 - p) h_new)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 backend=None, zoneout=0.0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(Cell("rnn", nonlinearity=nonlinearity), input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device,
                         dtype, backend, zoneout)

    def _variant(self):
        extra = {} if self.nonlinearity == "tanh" else {"nonlinearity": self.nonlinearity}
        return {**extra, **super()._variant()}


class LSTM(_RecurrentModule):
    """Drop-in for torch.nn.LSTM (gates i, f, g, o); forward returns (output, (h_n, c_n)).

    Arguments as torch.nn.LSTM (``proj_size`` included: h = W_hr (o * tanh(c)), weight_hr_l{k}
    (proj_size, hidden_size)), plus ``backend`` and ``zoneout`` (as for RNN; on h only)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 backend=None, zoneout=0.0):
        super().__init__(Cell("lstm"), input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, backend, zoneout)


class GRU(_RecurrentModule):
    """Drop-in for torch.nn.GRU (gates r, z, n).

    Arguments as torch.nn.GRU, plus ``backend``, ``linear_before_reset`` (True: torch's
    n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); False: the textbook
    n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), which torch.nn does not have) and ``zoneout``
    (as for RNN)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, backend=None,
                 linear_before_reset=True, zoneout=0.0):
        if not isinstance(linear_before_reset, bool):
            raise TypeError(f"linear_before_reset should be of type bool, got: "
                            f"{type(linear_before_reset).__name__}")
        self.linear_before_reset = linear_before_reset
        super().__init__(Cell("gru", linear_before_reset=linear_before_reset), input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend, zoneout)

    def _variant(self):
        extra = {} if self.linear_before_reset else {"linear_before_reset": False}
        return {**extra, **super()._variant()}


class LayerNormLSTM(LSTM):
    """The layer-normalised LSTM (cells.Variant; Haste's formulation in torch's gate order):
    gx = LN(W_ih x) * g_ih + b_ih, gh = LN(W_hh h) * g_hh + b_hh,
    h' = o * tanh(LN(c') * g_c + b_c), with the parameters layernorm_ih_weight_l{k},
    layernorm_hh_weight_l{k}, layernorm_c_weight_l{k} (gains, start at 1) and
    layernorm_c_bias_l{k} (starts at 0), suffix _reverse. Arguments as ``LSTM``."""

    _layer_norm = True


class LayerNormGRU(GRU):
    """The layer-normalised GRU (linear_before_reset): gx = LN(W_ih x) * g_ih + b_ih,
    gh = LN(W_hh h) * g_hh + b_hh, then r, z, n as torch's GRU; the gains
    layernorm_ih_weight_l{k} and layernorm_hh_weight_l{k} start at 1. Arguments as ``GRU``."""

    _layer_norm = True


def convert(model, backend=None):
    """Replace, in place, every torch.nn.RNN / LSTM / GRU inside ``model`` (at any depth, or
    ``model`` itself) by the fastrnn module with the same weights, device, dtype and training
    mode; returns the model (the new module when ``model`` itself was one). A module the
    backend of its device cannot run (a projected LSTM where that backend has no projection)
    stays torch's, with a warning that names it."""
    kinds = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}
    if type(model) in kinds:
        return _converted(kinds[type(model)], model, backend, "the model")
    for name, child in list(model.named_children()):
        if type(child) in kinds:
            setattr(model, name, _converted(kinds[type(child)], child, backend, name))
        else:
            convert(child, backend)
    return model


def _converted(cls, module, backend, name):
    """``cls.from_torch(module)``, or ``module`` itself with a warning where the backend of its
    device does not run its variant."""
    new = cls.from_torch(module, backend)
    device = next(module.parameters()).device
    missing = backend_for(device, backend).unsupported(new.cell)
    if missing:
        warnings.warn(f"convert: {name} ({type(module).__name__} with "
                      f"{', '.join(missing)}) stays torch.nn's: the backend for {device} "
                      f"does not run {', '.join(missing)}", stacklevel=3)
        return module
    return new

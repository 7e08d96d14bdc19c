"""The kernels as torch custom operators, registered once: ``fastrnn::stack_forward`` and
``fastrnn::stack_backward``, each with a fake implementation (shapes only, for torch.compile)
and the forward's autograd formula, both calling the composition in stack.py.

The saved state. A training forward keeps NumPy/CuPy memory that torch cannot see (stack.py's
``StackSaved``). The forward op therefore also returns a ``handle``: an int64 tensor (1,) holding
a key into ``_saved``, the process-level registry of those states. The handle tensor is a view
of a NumPy array, and a finalizer on that array drops the registry entry: torch keeps the array
alive exactly as long as some tensor (the autograd graph's saved copy, or a compiled graph's)
holds the handle, so freeing the graph frees the state, and nothing leaks when no backward runs.

Backward consumes the state (the Numba backend writes gradients over the saved gates). The
autograd context saves the op's inputs as well, so when the handle's state is gone (a second
backward with ``retain_graph=True``, or a forward that kept nothing) the backward op recomputes
the training forward from them, with the same dropout masks, and backpropagates that: exact,
at the price of one more forward.

Higher-order gradients: with ``create_graph=True`` torch records the backward, which the fused
kernels cannot give. Then backward recomputes the stack in plain torch operations
(reference.py) and differentiates that with ``torch.autograd.grad(create_graph=True)``: correct
and differentiable again, slow (a Python loop over the steps).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import replace
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import stack
from ..cells import cell_by_name
from ..checks import check_lengths
from . import reference
from .devices import adapter_for, backend_for

_saved: dict = {}  # handle key -> StackSaved of a training forward not yet backpropagated
_keys = itertools.count(1)


def pending_states() -> int:
    """How many training forwards' states are held (for tests and leak hunting)."""
    return len(_saved)


@lru_cache(maxsize=256)
def geometry(cell, input_size, hidden_size, num_layers, n_params, bidirectional):
    """(Stack, parameter names in order) of a call; the bias is there when the parameter list
    is as long as the biased stack's."""
    stack_ = stack.Stack(cell_by_name(cell), input_size, hidden_size, num_layers, True,
                         bidirectional)
    if n_params != len(stack_.param_shapes()):
        stack_ = replace(stack_, bias=False)
    return stack_, tuple(stack_.param_shapes())


def _run_forward(x, states, params, lengths, masks, cell, hidden_size, num_layers,
                 bidirectional, batch_first, dropout, training, backend):
    """stack.forward on the tensors' arrays; returns (adapter, y, finals, StackSaved or None)."""
    stack_, names = geometry(cell, x.shape[-1], hidden_size, num_layers, len(params),
                             bidirectional)
    adapter = adapter_for(x.device)
    chosen = backend_for(x.device, backend)
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    lengths = None if lengths is None else check_lengths(lengths.numpy(), T, B)
    drawn = iter([adapter.array(m) for m in masks])
    with adapter.running(chosen, x.device):
        y, finals, saved = stack.forward(
            stack_, chosen, {n: adapter.array(p) for n, p in zip(names, params)},
            adapter.array(x), tuple(adapter.array(s) for s in states), lengths,
            # The caller draws the masks (dropout's and zoneout's, in the order stack.forward
            # takes them), in training mode only: none given means eval mode, even when the
            # state is kept for backward.
            training=training or bool(masks), batch_first=batch_first,
            dropout=dropout if masks else 0.0, draw_mask=lambda shape: next(drawn),
            draw_zoneout=(lambda shape: next(drawn)) if masks else None)
    return adapter, y, finals, saved if training else None


def _forward_impl(x: Tensor, states: list[Tensor], params: list[Tensor],
                  lengths: Optional[Tensor], masks: list[Tensor], cell: str, hidden_size: int,
                  num_layers: int, bidirectional: bool, batch_first: bool, dropout: float,
                  training: bool, backend: str) -> tuple[Tensor, list[Tensor], Tensor]:
    """The stack forward (stack.py's conventions). x (T, B, I) or (B, T, I) with batch_first;
    states one (L*D, B, H) tensor per state of the cell; params in PyTorch's order; lengths
    None or int64 (B,) on the CPU; masks the dropout masks (T, B, D*H) of every layer but the
    last, or empty; ``training`` keeps the state for backward. Returns (y, finals, handle)."""
    adapter, y, finals, saved = _run_forward(x, states, params, lengths, masks, cell,
                                             hidden_size, num_layers, bidirectional,
                                             batch_first, dropout, training, backend)
    key = np.zeros(1, np.int64)
    if saved is not None:
        key[0] = next(_keys)
        _saved[int(key[0])] = saved
        weakref.finalize(key, _saved.pop, int(key[0]), None)
    return adapter.tensor(y), [adapter.tensor(f) for f in finals], torch.from_numpy(key)


stack_forward = torch.library.custom_op("fastrnn::stack_forward", _forward_impl,
                                        mutates_args=())


@stack_forward.register_fake
def _(x, states, params, lengths, masks, cell, hidden_size, num_layers, bidirectional,
      batch_first, dropout, training, backend):
    D = 2 if bidirectional else 1
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    H_out = cell_by_name(cell).variant.hidden_size(hidden_size)
    y = x.new_empty((T, B, D * H_out))  # the backends write time-major
    return ((y.transpose(0, 1) if batch_first else y), [torch.empty_like(s) for s in states],
            torch.empty(1, dtype=torch.int64))


def _backward_impl(handle: Tensor, dy: Tensor, d_finals: list[Tensor], x: Tensor,
                   states: list[Tensor], params: list[Tensor], lengths: Optional[Tensor],
                   masks: list[Tensor], cell: str, hidden_size: int, num_layers: int,
                   bidirectional: bool, batch_first: bool, dropout: float,
                   backend: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Backward of ``stack_forward`` for cotangents dy (y's shape) and d_finals (the finals').
    Uses the state behind ``handle`` when it is still held, else recomputes the training
    forward from the inputs. Returns (dx, d_initial states, parameter gradients in order)."""
    saved = _saved.pop(int(handle[0]), None)
    adapter = adapter_for(x.device)
    if saved is None:
        adapter, _, _, saved = _run_forward(x, states, params, lengths, masks, cell,
                                            hidden_size, num_layers, bidirectional,
                                            batch_first, dropout, True, backend)
    chosen = saved.ctxs[0].backend
    names = geometry(cell, x.shape[-1], hidden_size, num_layers, len(params), bidirectional)[1]
    with adapter.running(chosen, x.device):
        dx, d_initials, grads = stack.backward(
            saved, adapter.array(dy), tuple(adapter.array(d) for d in d_finals))
    return (adapter.tensor(dx), [adapter.tensor(d) for d in d_initials],
            [adapter.tensor(grads[n]) for n in names])


stack_backward = torch.library.custom_op("fastrnn::stack_backward", _backward_impl,
                                         mutates_args=())


@stack_backward.register_fake
def _(handle, dy, d_finals, x, states, params, lengths, masks, cell, hidden_size, num_layers,
      bidirectional, batch_first, dropout, backend):
    dx = x.new_empty((x.shape[1], x.shape[0], x.shape[2]) if batch_first else x.shape)
    return ((dx.transpose(0, 1) if batch_first else dx), [torch.empty_like(s) for s in states],
            [torch.empty_like(p) for p in params])


def _save(ctx, handle, x, states, params, lengths, masks, config, backend):
    """What backward needs, on an autograd ctx: the inputs (for a recomputation) and the
    handle; config is (cell, hidden_size, num_layers, bidirectional, batch_first, dropout)."""
    ctx.config, ctx.backend = tuple(config), backend
    ctx.counts = (len(states), len(params), len(masks))
    ctx.has_lengths = lengths is not None
    ctx.save_for_backward(handle, x, *states, *params, *masks,
                          *((lengths,) if lengths is not None else ()))


def _gradients(ctx, dy, d_finals, backward_op):
    """(dx, d_initials, d_params, masks) of a ctx filled by ``_save``; ``backward_op`` is the
    custom op (traced by torch.compile) or its implementation (eager)."""
    handle, x, *rest = ctx.saved_tensors
    n_states, n_params, n_masks = ctx.counts
    states, rest = rest[:n_states], rest[n_states:]
    params, rest = rest[:n_params], rest[n_params:]
    masks, lengths = rest[:n_masks], (rest[n_masks] if ctx.has_lengths else None)
    if torch.is_grad_enabled():
        grads = _differentiable_backward(ctx.config, x, states, params, lengths, masks, dy,
                                         d_finals)
    else:
        grads = backward_op(handle, dy, list(d_finals), x, states, params, lengths, masks,
                            *ctx.config, ctx.backend)
    return (*grads, masks)


def _setup_context(ctx, inputs, output):
    x, states, params, lengths, masks, *config, training, backend = inputs
    _save(ctx, output[2], x, states, params, lengths, masks, config, backend)


def _backward(ctx, dy, d_finals, _d_handle):
    dx, d_initials, d_params, masks = _gradients(ctx, dy, d_finals, stack_backward)
    return (dx, d_initials, d_params, None, [None] * len(masks)) + (None,) * 8


class _Eager(torch.autograd.Function):
    """``stack_forward`` with its autograd for eager calls: the same implementation and
    backward without the dispatcher and torch.library's argument flattening, which cost about
    0.4 ms per training step of a small layer. torch.compile traces the custom op instead."""

    @staticmethod
    def forward(ctx, config, training, backend, counts, lengths, x, *tensors):
        states, params = tensors[:counts[0]], tensors[counts[0]:counts[0] + counts[1]]
        masks = tensors[counts[0] + counts[1]:]
        y, finals, handle = _forward_impl(x, states, params, lengths, masks, *config, training,
                                          backend)
        _save(ctx, handle, x, states, params, lengths, masks, config, backend)
        return (y, *finals)

    @staticmethod
    def backward(ctx, dy, *d_finals):
        dx, d_initials, d_params, masks = _gradients(ctx, dy, d_finals, _backward_impl)
        return (None,) * 5 + (dx, *d_initials, *d_params) + (None,) * len(masks)


def forward(x, states, params, lengths, masks, config, training, backend):
    """The stack forward as a differentiable torch function: (y, finals list). Eager calls go
    through ``_Eager``, traced ones (torch.compile) through the custom op."""
    if torch.compiler.is_compiling():
        y, finals, _ = stack_forward(x, states, params, lengths, masks, *config, training,
                                     backend)
        return y, finals
    if not training:  # nothing to differentiate: no autograd node, nothing kept
        y, finals, _ = _forward_impl(x, states, params, lengths, masks, *config, False, backend)
        return y, finals
    y, *finals = _Eager.apply(tuple(config), training, backend,
                              (len(states), len(params)), lengths, x, *states, *params, *masks)
    return y, finals


def _differentiable_backward(config, x, states, params, lengths, masks, dy, d_finals):
    """The gradients as torch operations (create_graph=True): the stack recomputed by
    reference.py and differentiated by autograd, so they can be differentiated again."""
    cell, hidden_size, num_layers, bidirectional, batch_first, dropout = config
    stack_, names = geometry(cell, x.shape[-1], hidden_size, num_layers, len(params),
                             bidirectional)
    inputs = [x, *states, *params]
    with torch.enable_grad():
        y, finals = reference.forward(stack_, x.transpose(0, 1) if batch_first else x,
                                      tuple(states), dict(zip(names, params)), lengths, masks,
                                      dropout)
        y = y.transpose(0, 1) if batch_first else y
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad([y, *finals], wanted, [dy, *d_finals],
                                         create_graph=True, allow_unused=True))
    grads = [next(found) if t.requires_grad else None for t in inputs]
    return grads[0], grads[1:1 + len(states)], grads[1 + len(states):]


stack_forward.register_autograd(_backward, setup_context=_setup_context)

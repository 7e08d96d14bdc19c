"""A stack's parameters as arrays: PyTorch's initialisation, and state dicts checked and moved
between NumPy, CuPy and torch tensors. Shared by the front ends that store parameters."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .checks import array_library, check_array, check_shape
from .stack import Stack, param_labels


def to_library(a, xp):
    """``a`` (NumPy or CuPy) as an array of ``xp``; no copy when it already is one."""
    if xp is np:
        return a if isinstance(a, np.ndarray) else a.get()
    return xp.asarray(a)


def from_torch(name, t, xp):
    """A torch tensor as an ``xp`` array, sharing memory where the devices allow."""
    t = t.detach()
    if str(t.dtype) not in ("torch.float32", "torch.float64"):
        raise TypeError(f"{name} must have dtype float32 or float64, got {t.dtype}")
    if t.device.type == "cuda" and xp is not np:
        return xp.from_dlpack(t)
    return to_library(t.cpu().resolve_conj().resolve_neg().numpy(), xp)


def constant_start(name):
    """The value a parameter starts at when it is not drawn: 1 for a layer-norm gain, 0 for the
    bias of c's layer norm (cells.Variant); None for every other parameter."""
    if name.startswith("layernorm_"):
        return 0.0 if name.startswith("layernorm_c_bias") else 1.0
    return None


def initial(stack: Stack, rng, dtype, xp) -> dict:
    """PyTorch's order and initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H)), drawn
    from the NumPy generator ``rng`` in ``dtype``, but the layer norms' (``constant_start``)."""
    bound = 1.0 / math.sqrt(stack.hidden_size)
    params = {}
    for name, shape in stack.param_shapes().items():
        value = constant_start(name)
        params[name] = to_library(
            np.full(shape, value, dtype) if value is not None
            else rng.uniform(-bound, bound, shape).astype(dtype), xp)
    return params


def load(stack: Stack, state_dict, xp, dtype, owner: str) -> dict:
    """Every parameter of ``stack`` from ``state_dict`` (name -> NumPy array, CuPy array or
    torch tensor) as C-contiguous ``xp`` arrays of ``dtype``, checked before anything is
    returned: missing, unexpected, mis-shaped or wrongly typed entries raise. ``owner`` names
    the layer in the error messages."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping name -> array, "
                        f"got {type(state_dict).__name__}")
    bad_keys = [k for k in state_dict if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"state_dict keys must be parameter names (str), got {bad_keys[0]!r}")
    shapes = stack.param_shapes()
    missing = [n for n in shapes if n not in state_dict]
    unexpected = [n for n in state_dict if n not in shapes]
    if missing or unexpected:
        parts = ([f"missing keys {missing}"] if missing else []) + (
            [f"unexpected keys {unexpected}"] if unexpected else [])
        raise ValueError(f"state_dict does not match {owner}: {'; '.join(parts)}")
    loaded = {}
    for name, shape in shapes.items():
        value = state_dict[name]
        label = f"state_dict[{name!r}]"
        if array_library(value) == "torch" and hasattr(value, "detach"):
            value = from_torch(label, value, xp)
        else:
            check_array(label, value)
            value = to_library(value, xp)
        if value.dtype != dtype:
            raise TypeError(f"{label} must have the layer's dtype {dtype}, got "
                            f"{value.dtype} (create the layer with dtype={value.dtype})")
        check_shape(label, value, shape, param_labels(name))
        loaded[name] = xp.ascontiguousarray(value)
    return loaded

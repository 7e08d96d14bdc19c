"""Training-loop helpers for the NumPy layers."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from .checks import array_library, check_array, xp_of


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

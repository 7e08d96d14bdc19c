"""How close two results must be to count as the same: one table for `fastrnn validate`,
`fastrnn bench` and the tests.

A result passes against its expected value when |actual - expected| <= atol + rtol |expected|
everywhere (numpy.allclose). float32 leaves room for the different summation orders of correct
implementations; float64 is compared with the float64 reference. ``FD_RTOL`` bounds the relative
error of a gradient against central finite differences of the float64 reference.
"""

from __future__ import annotations

import numpy as np

TOLERANCES = {"float32": {"rtol": 1e-4, "atol": 1e-5}, "float64": {"rtol": 1e-10, "atol": 1e-10}}
FD_RTOL = 1e-6


def tolerance(dtype) -> dict:
    """{"rtol": ..., "atol": ...} for ``dtype``: a NumPy dtype, a type such as np.float32, or a
    name such as "float32"."""
    name = np.dtype(dtype).name
    if name not in TOLERANCES:
        raise ValueError(f"no tolerance for {name}; expected one of {list(TOLERANCES)}")
    return dict(TOLERANCES[name])


def describe(dtype, sep: str = " ") -> str:
    """The tolerance of ``dtype`` as text, e.g. "rtol 1e-4 atol 1e-5" (``sep`` between them)."""
    tol = tolerance(dtype)
    return f"rtol {_short(tol['rtol'])}{sep}atol {_short(tol['atol'])}"


def _short(v: float) -> str:
    """1e-4 rather than 0.0001 or 1e-04."""
    mantissa, exponent = f"{v:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"

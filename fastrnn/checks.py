"""Argument checks shared by every front end.

Each check names the argument, what was expected and what was given, and runs before any kernel.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array_library(a) -> str:
    """'numpy' or 'cupy' for a supported array, else a descriptive module name."""
    if isinstance(a, np.ndarray):
        return "numpy"
    return type(a).__module__.split(".")[0]


def xp_of(library):
    """The array module of ``library`` ("numpy" or "cupy")."""
    if library == "numpy":
        return np
    import cupy  # only ever reached with CuPy arrays in hand

    return cupy


def check_array(name, a):
    """``a`` must be a NumPy or CuPy float32/float64 array; returns its library."""
    if a is None:
        raise TypeError(f"{name} is required: expected a float32 or float64 array, got None")
    lib = array_library(a)
    # (a NumPy dtype, generator or finfo comes from "numpy" too, but is no array)
    if lib not in ("numpy", "cupy") or not all(hasattr(a, n) for n in ("dtype", "shape", "ndim")):
        hint = " (convert it with .numpy() or numpy.asarray)" if lib == "torch" else ""
        raise TypeError(
            f"{name} must be a NumPy or CuPy array, got {type(a).__module__}."
            f"{type(a).__name__}{hint}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array, whose mask fastrnn would ignore: pass "
                        f"{name}.filled(0) (and lengths for padded sequences)")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return lib


def check_same(arrays: dict):
    """All given arrays share one library and one dtype; returns (library, dtype)."""
    first = next(iter(arrays.values()))
    if type(first) is np.ndarray and first.dtype in FLOAT_DTYPES and all(
            type(a) is np.ndarray and a.dtype == first.dtype for a in arrays.values()):
        return "numpy", first.dtype  # the usual case, in one pass (small calls feel each µs)
    libs = {n: check_array(n, a) for n, a in arrays.items()}
    if len(set(libs.values())) > 1:
        groups = {}
        for n, lib in libs.items():
            groups.setdefault(lib, []).append(n)
        desc = "; ".join(f"{', '.join(ns)} from {lib}" for lib, ns in groups.items())
        raise TypeError(f"arrays from different libraries in one call: {desc}")
    dtypes = {n: a.dtype for n, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"arrays must share one dtype (no silent casting): {desc}")
    name0 = next(iter(arrays))
    return libs[name0], arrays[name0].dtype


def check_shape(name, a, expected, labels):
    """``expected`` is a tuple of ints; ``labels`` spells it, e.g. '(G*H, I) = (4*64, 10)'."""
    if a.ndim != len(expected) or tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {labels} = {tuple(expected)}, got {tuple(a.shape)}")


def check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_size(name, value, minimum=1):
    """An int (not a bool) of at least ``minimum``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_dtype(dtype, name="dtype", spelled="float32 or float64"):
    """float32 or float64, given as anything numpy.dtype accepts."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be {spelled}, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be {spelled}, got {dt}")
    return dt


def check_probability(name, value, meaning):
    """A real number in [0, 1] (not a bool)."""
    if (not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_))
            or not 0 <= value <= 1):
        raise ValueError(f"{name} must be a number in [0, 1] ({meaning}), got {value!r}")
    return float(value)


def check_lengths(lengths, T, B):
    """None, or a host int64 array (B,) with 1 <= L_b <= T."""
    if lengths is None:
        return None
    if hasattr(lengths, "get") and array_library(lengths) == "cupy":
        lengths = lengths.get()
    if isinstance(lengths, (list, tuple)) and not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            for v in lengths):
        bad = next(v for v in lengths if not isinstance(v, (int, np.integer))
                   or isinstance(v, (bool, np.bool_)))
        raise TypeError(f"lengths must hold integers, got {type(bad).__name__} {bad!r}")
    try:
        arr = np.asarray(lengths)
    except Exception as exc:  # noqa: BLE001 - anything unconvertible is a type error here
        raise TypeError(f"lengths must be a sequence of {B} integers, got {type(lengths).__name__}") from exc
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {arr.shape}")
    if B and (arr.min() < 1 or arr.max() > T):
        raise ValueError(
            f"lengths must lie in [1, T] = [1, {T}], got values from {arr.min()} to {arr.max()}")
    return arr.astype(np.int64)


def contiguous(xp, a):
    if a is None or (type(a) is np.ndarray and a.flags.c_contiguous):
        return a
    return xp.ascontiguousarray(a)


def check_variant_arguments(hidden_size, proj_size=0, zoneout=0.0, layer_norm=False):
    """A layer's or module's variant arguments as a cells.Variant: proj_size an int in
    [0, hidden_size) (as torch.nn.LSTM), zoneout a probability in [0, 1]."""
    from .cells import Variant

    proj_size = check_size("proj_size", proj_size, minimum=0)
    if proj_size >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size: proj_size={proj_size}, "
                         f"hidden_size={hidden_size}")
    zoneout = check_probability("zoneout", zoneout,
                                "the probability that a unit keeps its previous value")
    return Variant(proj_size=proj_size, zoneout=zoneout, layer_norm=layer_norm)

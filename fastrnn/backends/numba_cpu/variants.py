"""The pointwise variants of the cells' row functions (cells.Variant): the clip of a gate's
input and the peephole terms, each a row loop selected at compile time.

A cell's NamedTuple carries them as fields (``driver.kernel_cell``): ``clip`` the bound in the
arrays' dtype, ``inside`` (R*G*H,) uint8, whether each gate input of a training forward lay
within [-clip, clip] (the clamp's derivative, which backward reads), ``P`` (3*H,) the
peepholes p_i, p_f, p_o. A plain cell has None in each: the overloads below then compile to
nothing, so the plain cells run the same machine code as before the variants existed.

Offsets: a gate row of n units at a[a0:], its unit u0 of gate j of step row tb at
inside[(tb*G + j)*H + u0:] and P[j*H + u0:].
"""

from __future__ import annotations

from numba import njit, types
from numba.extending import overload

from .scalars import KERNEL, U


def _plain(cell, field):
    """Whether the cell's NamedTuple type leaves ``field`` off (None, or no such field)."""
    fields = getattr(cell, "fields", ())
    return field not in fields or isinstance(cell.types[fields.index(field)], types.NoneType)


def clamp_row(cell, a, a0, n, m0, training):
    """a[a0:a0+n] clamped to [-cell.clip, cell.clip]; a training call also writes whether each
    input lay within the bounds to cell.inside[m0:] (NaN counts as outside, as in the
    reference)."""
    raise TypeError("compiled code only")


@njit(**KERNEL)
def _clamp(cell, a, a0, n, m0, training):
    hi = cell.clip
    lo = -hi
    if training:
        inside = cell.inside
        for u in range(n):
            v = a[U(a0 + u)]
            inside[U(m0 + u)] = lo <= v <= hi
    for u in range(n):
        v = a[U(a0 + u)]
        a[U(a0 + u)] = lo if v < lo else (hi if v > hi else v)


# The overloads are inlined, so that a plain cell's call leaves nothing; a clipped cell's is a
# call (Numba's inliner loses the selects' variables of _clamp and _unclamp in the loops of the
# callers, a NumbaIRAssumptionWarning; LLVM inlines the call).
@overload(clamp_row, jit_options=KERNEL, inline="always")
def _clamp_row_impl(cell, a, a0, n, m0, training):
    if _plain(cell, "clip"):
        return lambda cell, a, a0, n, m0, training: None
    return lambda cell, a, a0, n, m0, training: _clamp(cell, a, a0, n, m0, training)


def unclamp_row(cell, d, d0, n, m0):
    """d[d0:d0+n] times the clamp's derivative, cell.inside[m0:] (0 where the input was
    clamped)."""
    raise TypeError("compiled code only")


@njit(**KERNEL)
def _unclamp(cell, d, d0, n, m0):
    inside, zero, one = cell.inside, d.dtype.type(0), d.dtype.type(1)
    for u in range(n):
        # a product, not a select, so that a NaN in d stays NaN
        d[U(d0 + u)] *= (one if inside[U(m0 + u)] else zero)


@overload(unclamp_row, jit_options=KERNEL, inline="always")
def _unclamp_row_impl(cell, d, d0, n, m0):
    if _plain(cell, "clip"):
        return lambda cell, d, d0, n, m0: None
    return lambda cell, d, d0, n, m0: _unclamp(cell, d, d0, n, m0)


def peep_row(cell, j, p0, a, a0, c, c0, n):
    """a[a0:a0+n] += p_j * c[c0:c0+n] with p_j at cell.P[j*H + p0:] (p0 = u0 of the row): the
    peephole term of gate j's input, or, with a and c swapped to (dc, d_gate), its gradient
    with respect to the cell state."""
    raise TypeError("compiled code only")


@overload(peep_row, jit_options=KERNEL, inline="always")
def _peep_row_impl(cell, j, p0, a, a0, c, c0, n):
    if _plain(cell, "P"):
        return lambda cell, j, p0, a, a0, c, c0, n: None

    def peep(cell, j, p0, a, a0, c, c0, n):
        P = cell.P
        H = P.shape[0] // 3
        for u in range(n):
            a[U(a0 + u)] += P[U(j * H + p0 + u)] * c[U(c0 + u)]
    return peep

"""One call of a cell variant through the skeleton: its buffers, flat views and the registry.

``register`` is how a cell file adds its variant: the Spec (below) tells ``forward`` and
``backward`` which products each phase runs and which buffers the call needs, and the cell's
compiled row functions are attached to the stubs skeleton.forward_row / backward_row for the
cell's NamedTuple class.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import accumulate
from typing import Any, Callable, NamedTuple

import numpy as np
from numba.extending import overload

from .. import base
from . import projection
from .packed import make_plan, pack_backward, pack_forward, padded
from .scalars import KERNEL
from .skeleton import backward_row, forward_row, time_loop


class Spec(NamedTuple):
    """How the skeleton runs one cell variant (a cells.Cell name).

    cell      the NamedTuple instance the kernels get (its type selects the row functions)
    forward   the gates (indices into W_hh's G blocks) of each forward phase's product
    backward  the gates of each backward phase's share d @ W_hh
    states    1 (h) or 2 (h, c)
    gates     whether training keeps the activated gates; hn: whether it keeps W_hn h + b_hn
    kt        gates of the terms operand backward writes (0: none)
    hh_terms  (d_gx, terms, h_in) -> the (d_block, h_in) pairs whose products make dW_hh
    """

    cell: Any
    forward: tuple
    backward: tuple
    states: int
    gates: bool
    hn: bool
    kt: int
    hh_terms: Callable


SPECS = {}


def register(name, spec, forward, backward):
    """Run cells named ``name`` as ``spec`` says, with ``forward`` and ``backward`` (plain
    Python functions, compiled as skeleton.forward_row / backward_row for every instance of
    spec.cell's class)."""
    cls = type(spec.cell)
    # Inlined: a row function runs per row and step, and as a call it would get every argument
    # group by value, which at small sizes costs more than its arithmetic.
    if not any(type(s.cell) is cls for s in SPECS.values()):
        overload(forward_row, jit_options=KERNEL, inline="always")(
            lambda cell, k, geo, pos, xp, b_hh, state, keep, work:
            forward if getattr(cell, "instance_class", None) is cls else None)
        overload(backward_row, jit_options=KERNEL, inline="always")(
            lambda cell, k, geo, pos, dgx, state, grads, keep, work:
            backward if getattr(cell, "instance_class", None) is cls else None)
    SPECS[name] = spec


def flat(a):
    """(a 1-D view over the memory of a (T, B, N) array with unit last stride, stride_t,
    stride_b) in elements, or None when the strides do not allow it."""
    T, B, N = a.shape
    if a.flags.c_contiguous:
        return a.reshape(-1), B * N, N
    item = a.itemsize
    st, sb, sn = a.strides
    if sn != item or st % item or sb % item or st < 0 or sb < 0:
        return None
    span = (T - 1) * (st // item) + (B - 1) * (sb // item) + N
    view = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,),
                                           writeable=a.flags.writeable)
    return view, st // item, sb // item


def flat_rows(a):
    """(a 1-D view over the memory of an (R, N) array with unit last stride, row stride) in
    elements, or None when the strides do not allow it."""
    if a.flags.c_contiguous:
        return a.reshape(-1), a.shape[1]
    item = a.itemsize
    sr, sn = a.strides
    if a.shape[0] <= 1:
        sr = a.shape[1] * item
    if sn != item or sr % item or sr < 0:
        return None
    span = max(0, (a.shape[0] - 1) * (sr // item) + a.shape[1])
    view = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,),
                                           writeable=a.flags.writeable)
    return view, sr // item


def _flat_any(a):
    return flat(a) if a.ndim == 3 else flat_rows(a)


def flat_input(a):
    """flat() of a (T, B, N) input array, flat_rows() of an (R, N) one; copies when the strides
    do not allow a view or the array is read-only (so the kernels see one array type)."""
    f = _flat_any(a) if a.flags.writeable else None
    return f if f is not None else _flat_any(np.array(a, order="C"))


def gate_store(x_proj, training, G, H):
    """Where a training forward keeps the activated gates (R, G*H) for backward: x_proj's own
    memory when it is C-contiguous and writeable (each step reads its row of x_proj before it
    writes that row's gates, so nothing is read after it is overwritten; this saves a buffer of
    x_proj's size and the page faults of filling it), else a new array. A placeholder in
    inference."""
    if not training:
        return np.empty((1, 1), x_proj.dtype)
    if x_proj.flags.c_contiguous and x_proj.flags.writeable:
        return x_proj
    return np.empty((x_proj.shape[0], G * H), x_proj.dtype)


def _offsets(sizes):
    return list(accumulate(sizes[:-1], initial=0))


def _joined(panels):
    """The panels of every phase's product in one flat array (no copy for one phase)."""
    return panels[0][0] if len(panels) == 1 else np.concatenate([W for W, _ in panels])


def _weight_offsets(phases, H, panels, direct):
    """Where each phase's weights start: in the packed panels, or (direct) in W_hh itself, at
    the phase's first gate (a phase's gates are consecutive)."""
    if direct:
        return [g[0] * H * H for g in phases]
    return _offsets(panels)


@lru_cache(maxsize=256)
def forward_layout(name, B, H, plan, itemsize, direct):
    """FWork.ph of a call, and the sizes of FWork.out and FWork.mid (the same for every call of
    one shape and plan, so kept)."""
    spec = SPECS[name]
    nr = 4 * 64 // itemsize
    Ps = [-(-len(g) * plan.size // nr) for g in spec.forward]
    panels = [plan.units * P * H * nr for P in Ps]
    sizes = [B * plan.units * P * nr for P in Ps]
    ph = np.array([(w, P, len(g), o) for w, P, g, o in zip(
        _weight_offsets(spec.forward, H, panels, direct), Ps, spec.forward, _offsets(sizes))],
        np.int64)
    ph.flags.writeable = False
    return ph, sum(sizes), B * H if len(Ps) > 1 else 0


@lru_cache(maxsize=256)
def _backward_layout(name, B, H, Hp, plan, itemsize, direct):
    """BWork.ph of a call, the size of BWork.d, of one slot of BWork.part, and BWork.P (the
    panels of a share, Hp wide: the width of h)."""
    spec = SPECS[name]
    nr = 4 * 64 // itemsize
    P = -(-Hp // nr)
    panels = [plan.units * P * len(g) * plan.size * nr for g in spec.backward]
    sizes = [B * plan.units * len(g) * plan.size for g in spec.backward]
    ph = np.array([(w, len(g), o) for w, g, o in zip(
        _weight_offsets(spec.backward, H, panels, direct), spec.backward, _offsets(sizes))],
        np.int64)
    ph.flags.writeable = False
    return ph, sum(sizes), plan.units * B * P * nr, P


def _flat_or_empty(a, dtype):
    return np.empty(0, dtype) if a is None else a.reshape(-1)


def _steps(steps, plan):
    """The skeleton's steps group of a packing.Steps under ``plan``: its row groups balanced by
    their work, the sum of their lengths (the batch itself for one group)."""
    B = len(steps.lengths)
    bounds = _whole(B) if plan.rows == 1 else steps.balanced(plan.rows)
    return (np.ascontiguousarray(steps.lengths, np.int64),
            np.ascontiguousarray(steps.rows, np.int64), bounds)


@lru_cache(maxsize=64)
def _whole(B):
    """The bounds of one row group of B rows (kept; the kernels only read it)."""
    return np.array([0, B], np.int64)


def kernel_cell(cell, dtype, inside=None, **arrays):
    """The NamedTuple the kernels get for a cells.Cell: its Spec's, with the variant's fields
    (variants.py) where the cell has them: the clip in ``dtype`` and the clamp flags
    ``inside`` (flat uint8); each of ``arrays`` that is not None (peepholes P, zoneout mask M,
    layer-norm gains and buffers), flat in ``dtype``."""
    if not cell.variant.switches:  # the plain cell's own NamedTuple
        return SPECS[cell.name].cell
    fields = {}
    if cell.variant.clip is not None:
        fields.update(clip=dtype.type(cell.variant.clip), inside=inside.reshape(-1))
    for name, a in arrays.items():
        if a is not None:
            fields[name] = np.ascontiguousarray(a, dtype).reshape(-1)
    return SPECS[cell.name].cell._replace(**fields)


def _zoneout_mask(M, R, H, dtype):
    """The zoneout mask as the kernels read it, (R, H) C-contiguous, or None."""
    if M is None:
        return None
    if M.shape != (R, H):
        raise ValueError(f"zoneout_mask must have the packed rows of x_proj, ({R}, {H}); "
                         f"got {M.shape}")
    return np.ascontiguousarray(M, dtype)


def _projection_panels(W_hr, forward):
    """W_hr (Hp, H) packed as one gate of Hp rows: (panels, their count) for m @ W_hr^T
    (forward) or dh @ W_hr."""
    Hp = W_hr.shape[0]
    return (pack_forward if forward else pack_backward)(W_hr, (0,), make_plan(Hp, 1, 1), Hp)


def forward(cell, x_proj, y, weights, b_hh, h0, c0, steps, reverse, training, P=None,
            zoneout_mask=None, g_hh=None, g_c=None, b_c=None, W_hr=None):
    """One direction of a cells.Cell: x_proj (R, G*H) the valid rows that ``steps`` (a
    packing.Steps) lists; weights a packed.Packed; y (T, B, Hp) is filled, Hp the width of h
    (H, or the projection's). The variant's arrays, where the cell has them: P (3, H) the
    peepholes; zoneout_mask (R, Hp) M, rows as x_proj's; g_hh (G*H,), g_c, b_c (H,) layer
    norm's gains and c's bias; W_hr (Hp, H) the projection (the plan of these two has one
    unit chunk; projection.py runs the latter). Returns (h_n, c_n or None, base.Saved or
    None)."""
    name = cell.name
    spec = SPECS[name]
    T, B, Hp = y.shape
    R = x_proj.shape[0]
    G = cell.gates
    H = x_proj.shape[1] // G
    plan = weights.plan
    if (g_hh is not None or W_hr is not None) and plan.units != 1:
        raise AssertionError("a layer-normalised or projecting cell runs one unit chunk "
                             "(NumbaBackend._plan)")
    dtype = x_proj.dtype
    M = _zoneout_mask(zoneout_mask, R, Hp, dtype)
    S = T + 1 if training else 2
    states = [np.empty((S, B, width), dtype) for width in (Hp, H)[:spec.states]]
    for st, s0 in zip(states, (h0, c0)):
        st[base.first_slot(T, reverse, training)] = s0
    # the RNN with zoneout keeps h_new (its hs holds the zoned-out h') as its one gate
    keeps_gates = spec.gates or (M is not None and cell.kind == "rnn")
    gates = gate_store(x_proj, training, G, H) if keeps_gates else None
    hn = np.empty((R, H), dtype) if training and spec.hn else None
    W = weights.forward(spec.forward)
    ph, out, mid = forward_layout(name, B, H, plan, dtype.itemsize, weights.direct)
    work = (W, np.empty(out, dtype), np.empty(mid, dtype), ph)  # a skeleton.FWork
    geo = (T, B, H, G, plan.rows, plan.units, plan.size, reverse, training)  # a Geometry
    clipped = training and cell.variant.clip is not None
    inside = (np.empty((R if clipped else 0, G * H), np.uint8)
              if cell.variant.clip is not None else None)
    ln_hh = None if g_hh is None else np.empty((R if training else 0, G * H), dtype)
    kcell = kernel_cell(cell, dtype, inside, P=P, M=M, g_hh=g_hh, ln_hh=ln_hh, g_c=g_c, b_c=b_c)
    flats = (flat_input(x_proj), flat(y), _steps(steps, plan), b_hh)
    keep = (_flat_or_empty(gates, dtype), _flat_or_empty(hn, dtype))
    kept = None
    if W_hr is None:
        time_loop(kcell, geo, *flats, tuple([st.reshape(-1) for st in states]), keep, work)
    else:  # m = o tanh(c') in slots like c's: the input of W_hr, kept for dW_hr
        m = np.empty((S, B, H), dtype)
        WR, PR = _projection_panels(W_hr, True)
        projection.forward_loop(kcell, geo, *flats, tuple([a.reshape(-1) for a in states + [m]]),
                                keep, work, (WR, PR, np.empty(B * padded(Hp, WR), dtype), Hp))
        kept = {"W_hr": W_hr, "m": m}
    last = base.final_slot(T, reverse, training)
    hs, cs = (states + [None])[:2]
    saved = (base.Saved(hs, cs, gates, hn, None, reverse, P, inside if clipped else None,
                        M, g_hh, ln_hh, g_c, b_c, kept)
             if training else None)
    return hs[last].copy(), None if cs is None else cs[last].copy(), saved


def backward(cell, saved, W_hh, dy, dh_n, dc_n, d_gx, plan, direct, matmul):
    """Fills d_gx (R, G*H), the valid rows of saved.lengths (a packing.Steps); returns
    (hh_terms, dh0, dc0 or None, variant_grads), packed rows too; variant_grads holds dg_hh,
    db_hh (and the LSTM's dg_c, db_c) of a layer-normalised cell, dW_hr of a projecting one
    (a product through ``matmul``), else nothing. ``direct``: the products read W_hh as it is
    (direct.py) instead of packed panels."""
    name = cell.name
    spec = SPECS[name]
    T, B, Hp = dy.shape
    dtype = dy.dtype
    G = cell.gates
    H = d_gx.shape[1] // G
    projected = saved.kept is not None
    k, size = plan.units, plan.size
    grads = tuple([np.array(g, dtype, order="C") for g in (dh_n, dc_n)[:spec.states]])
    ph, d, q, P = _backward_layout(name, B, H, Hp, plan, dtype.itemsize, direct)
    terms = np.empty((d_gx.shape[0], spec.kt * H), dtype) if spec.kt else None
    WT = W_hh if direct else _joined([pack_backward(W_hh, g, plan, H) for g in spec.backward])
    work = (WT, np.zeros(d, dtype), np.empty(2 * q, dtype),
            np.empty(q if len(spec.backward) > 1 else 0, dtype), np.empty(B * H, dtype),
            _flat_or_empty(terms, dtype), ph, P, spec.kt)  # a skeleton.BWork
    geo = (T, B, H, G, plan.rows, k, size, saved.reverse, True)  # a Geometry
    state = (saved.hs, saved.cs)[:spec.states]
    normed = saved.g_hh is not None
    # per batch row: the sums of dg_hh, db_hh (and the LSTM's dg_c, db_c), variants.py
    acc = np.zeros((B, 2 * G * H + (2 * H if spec.states == 2 else 0)) if normed else 0,
                   dtype)
    carry = None if saved.zoneout_mask is None else np.empty(B * Hp, dtype)
    kcell = kernel_cell(cell, dtype, saved.inside, P=saved.P, M=saved.zoneout_mask, carry=carry,
                        g_hh=saved.g_hh, ln_hh=saved.ln_hh, acc=acc if normed else None,
                        g_c=saved.g_c, b_c=saved.b_c)
    flats = (flat_input(dy), flat_rows(d_gx), _steps(saved.lengths, plan))
    keep = (_flat_or_empty(saved.gates, dtype), _flat_or_empty(saved.hn, dtype))
    packed_rows = (lambda a: a[saved.lengths.index()]) if d_gx.shape[0] < T * B else (lambda a: a)
    variant_grads = {}
    if not projected:
        time_loop(kcell, geo, *flats, tuple([g.reshape(-1) for g in grads]),
                  tuple([st.reshape(-1) for st in state]), keep, work)
    else:
        m = saved.kept["m"]
        WR, PR = _projection_panels(saved.kept["W_hr"], False)
        dh_proj = np.empty((d_gx.shape[0], Hp), dtype)
        projection.backward_loop(
            kcell, geo, *flats, (m.reshape(-1), saved.cs.reshape(-1)),
            tuple([g.reshape(-1) for g in grads]), keep, work,
            (WR, PR, np.empty(B * padded(H, WR), dtype), np.empty(B * H, dtype),
             dh_proj.reshape(-1), np.empty(B * padded(Hp, WR), dtype), Hp))
        m_out = base.entering_states(m, not saved.reverse).reshape(T * B, H)
        variant_grads["dW_hr"] = matmul(dh_proj.T, packed_rows(m_out))
    h_in = packed_rows(base.entering_states(saved.hs, saved.reverse).reshape(T * B, Hp))
    if normed:  # backward left the gradient of W_hh h (before LN) in saved.ln_hh
        hh_terms = [(saved.ln_hh, h_in)]
        sums = acc.sum(axis=0)
        names = ("dg_hh", "db_hh", "dg_c", "db_c")
        widths = (G * H, G * H, H, H)[:2 * spec.states]
        for nm, start, w in zip(names, accumulate((0,) + widths), widths):
            variant_grads[nm] = sums[start:start + w]
    else:
        hh_terms = spec.hh_terms(d_gx, terms, h_in)
    return (hh_terms, grads[0], grads[1] if spec.states == 2 else None, variant_grads)

"""The time loop of every cell, written once: steps, the thread split, states and strides.

A cell is a sequence of phases per step; each phase is one product followed by per-row
pointwise work. Most cells have one phase. The textbook GRU has two: r, z from h @ W_rz^T (which
also writes r*h), then n from (r*h) @ W_hn^T. Backward runs the phases' mirror images in the
same order: its phase k shares d @ W_hh with the next phase (or, from the last, with the step
processed next).

Threads split the call by a Plan (packed.py): with one unit chunk, each thread runs its group of
batch rows through every step with no barrier between steps; with several, every step is one
parallel region per phase over blocks of (rows, unit chunk), since every chunk's product reads
the whole state.

Adding a cell variant: a NamedTuple class whose type selects the variant's compiled row
functions at compile time, the two row functions, and a driver.Spec, passed to
driver.register (see rnn.py, the smallest). Numba caches neither closures nor functions that
take compiled functions as arguments, so ``time_loop`` takes the cell as a NamedTuple
instance: each class is its own Numba type, and the @overload-ed ``forward_row`` /
``backward_row`` pick the cell's functions while the loop is compiled for that type (one
specialisation per cell, cached like any other; a cell's first call compiles only its own).

Argument groups of the compiled functions (all arrays flat, 1-D, addressed by offset):

  cell     the cell's NamedTuple (its fields are the variant switches, e.g. Rnn.relu)
  geo      Geometry (a plain tuple for time_loop, in this order): T steps, B batch rows, H
           units, G gates; the plan's ``rows`` row groups times ``units`` unit chunks of ``nu``
           units (the last may be shorter); ``reverse`` (steps run T-1 down to 0);
           ``training`` (keep every state, else two rows alternate)
  x, y     forward: x_proj as (array, row stride), its row of step t and batch row b at
           steps.rows[t] + b; the output y (T, B, H) as (array, time stride, batch stride);
           strides in elements, unit last stride
  dy, dgx  backward: dy (T, B, H) a triple like y, d_gx (the gradient of x_proj) a pair like x
  steps    (lengths, rows, bounds), int64: step t of batch row b is valid when
           t < lengths[b], lengths in descending order, so that a step's valid rows are a
           prefix of every range of rows; rows (T+1,): the valid rows of step t are
           rows[t]..rows[t+1] of every per-step array (x_proj, d_gx, gates, hn, terms), which
           have no rows for invalid steps (PyTorch's packed layout; without lengths
           rows[t] = t*B); bounds (rows+1,): row group r holds batch rows
           bounds[r]..bounds[r+1]
  b_hh     (G*H,)
  state    the state buffers (S, B, H), (hs,) or (hs, cs): S = T+1 in time order (training and
           backward) or 2 (inference), rows as base.state_slots says
  grads    backward: the gradients reaching the states, (B, H) each: (dh,) or (dh, dc)
  keep     (gates, hn): gates (rows[T], G*H) the activated gates in cell order, hn (rows[T],
           H) the GRU's W_hn h + b_hn; each empty where the call keeps none
  work     FWork (forward) / BWork (backward) below, plain tuples for time_loop: the panels of
           each phase's product and the step buffers
  pos      Pos below: where the row that a row function works on stands

Block buffers hold a block's rows one after the other: block (b0..b1, chunk u) starts at row
b0*units + u*(b1-b0). The shares of dh of slot p (two, alternating by step) from chunk v sit at
((p*units + v)*B + b)*Hp, Hp = H padded to whole panels.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange
from numba.extending import overload

from .. import base
from .direct import axpys, dots
from .packed import gemm, panel_width
from .scalars import KERNEL
from .variants import zoneout_join, zoneout_row, zoneout_split
from .vectors import add_to, copy_row, zero_row

slots = njit(**KERNEL)(base.state_slots)


class Geometry(NamedTuple):
    T: int
    B: int
    H: int
    G: int
    rows: int
    units: int
    nu: int
    reverse: bool
    training: bool


class FWork(NamedTuple):
    """Phase k's product: its panels (units, P, H, NR) at W[ph[k, 0]:], P = ph[k, 1], of the
    ph[k, 2] gates it computes (in cell order); its output at out[ph[k, 3]:], block rows of
    P*NR. mid (B, H): the input of the product of phase k > 0, which phase k-1 writes (empty
    with one phase). (Parallel loops take no tuples nested in tuples: hence one array each.)"""

    W: Any
    out: Any
    mid: Any
    ph: Any


class BWork(NamedTuple):
    """Backward phase k's share d @ W_hh: panels (units, P, K, NR) at WT[ph[k, 0]:], K =
    ph[k, 1]*nu (gates times units), d (its gate gradients) at d[ph[k, 2]:], block rows of K.
    part (2, units, B, Hp): the shares for dh of the step processed next; q (units, B, Hp): the
    shares of a phase k < last, which phase k+1 receives into mid (B, H), also the rows'
    scratch; terms (rows[T], kt*H): an operand of dW_hh that backward writes (empty when
    kt = 0)."""

    WT: Any
    d: Any
    part: Any
    q: Any
    mid: Any
    terms: Any
    ph: Any
    P: int
    kt: int


class Pos(NamedTuple):
    """Where one row of a block stands: step t, batch row b, units u0..u0+n of the chunk; the
    state row entering (i_in) and leaving (i_out) at unit u0; the row's index in the block
    buffers, its offset g in the phase's buffer (out[k] or d[k]); io, its offset in x_proj
    (forward) or d_gx (backward) at gate 0, unit u0; tb, its row in the per-step arrays."""

    t: int
    b: int
    u0: int
    n: int
    i_in: int
    i_out: int
    row: int
    g: int
    io: int
    tb: int


def forward_row(cell, k, geo, pos, xp, b_hh, state, keep, work):
    """Phase k of the cell's forward step on one valid row: fill the new states (last phase)
    or work.mid (earlier phases) from work.out[k], the phase's product. Compiled code gets the
    cell's own function (``register``)."""
    raise TypeError(f"no Numba cell registered for {type(cell).__name__}")


def backward_row(cell, k, geo, pos, dgx, state, grads, keep, work):
    """Phase k of the cell's backward step on one valid row, with grads[0] at the row already
    holding dh + dy: write the phase's gate gradients at work.d[k] (the share's input) and
    d_gx, and update grads. Compiled code gets the cell's own function (``register``)."""
    raise TypeError(f"no Numba cell registered for {type(cell).__name__}")


def phase_product(W, w0, u, u0, n, nu, P, ng, H, a, a0, rows, out, o, ldo):
    """A phase's product for one block: ``rows`` rows of a (at a0, row stride H) times the ng
    gates of unit chunk u (units u0..u0+n) of W_hh, gate i at columns i*nu.. of out's rows (row
    stride ldo). W is the packed panels (1-D; w0 the phase's panels) or W_hh itself (2-D,
    direct.py; w0 the offset of the phase's first gate): each is compiled for its own."""
    raise TypeError("compiled code only")


@overload(phase_product, jit_options=KERNEL, inline="always")
def _phase_product_impl(W, w0, u, u0, n, nu, P, ng, H, a, a0, rows, out, o, ldo):
    if W.ndim == 1:
        return (lambda W, w0, u, u0, n, nu, P, ng, H, a, a0, rows, out, o, ldo:
                gemm(a, a0, H, rows, W, w0 + u * P * H * panel_width(W), P, out, o))

    def direct(W, w0, u, u0, n, nu, P, ng, H, a, a0, rows, out, o, ldo):
        w = W.reshape(-1)
        for i in range(ng):
            dots(a, a0, H, H, rows, w, w0 + (i * H + u0) * H, n, out, o + i * nu, ldo)
    return direct


def phase_share(W, w0, u, u0, n, nu, P, ng, H, d, d0, K, rows, out, o, ldo):
    """A backward phase's share for one block: ``rows`` rows of the gate gradients d (at d0,
    row stride K = ng*nu, gate i at columns i*nu..) times the same rows of W_hh, H columns per
    row of out (row stride ldo). W as in ``phase_product``."""
    raise TypeError("compiled code only")


@overload(phase_share, jit_options=KERNEL, inline="always")
def _phase_share_impl(W, w0, u, u0, n, nu, P, ng, H, d, d0, K, rows, out, o, ldo):
    if W.ndim == 1:
        return (lambda W, w0, u, u0, n, nu, P, ng, H, d, d0, K, rows, out, o, ldo:
                gemm(d, d0, K, rows, W, w0 + u * P * K * panel_width(W), P, out, o))

    def direct(W, w0, u, u0, n, nu, P, ng, H, d, d0, K, rows, out, o, ldo):
        w = W.reshape(-1)
        for i in range(ng):
            axpys(d, d0 + i * nu, K, n, rows, w, w0 + (i * H + u0) * H, H, out, o, ldo, i > 0)
    return direct


@njit(**KERNEL)
def block_of(c, bounds, U_):
    """Block c of a plan with row groups at ``bounds`` and U_ unit chunks: (b0, b1, u), rows
    [b0, b1) of the batch and unit chunk u."""
    r = c // U_
    return bounds[r], bounds[r + 1], c % U_


@njit(**KERNEL)
def count_valid(lengths, t, b0, b1):
    """Rows of b0..b1 valid at step t: with lengths in descending order, the first ones."""
    k = 0
    for b in range(b0, b1):
        if t < lengths[b]:
            k += 1
    return k


@njit(**KERNEL)
def product_rows(nb, b0, b1):
    """Rows the product of a block with nb valid rows runs over: nb rounded up to the gemm's
    4-row kernel within the block when 2 or 3 rows are left over, since a row of the 1-row
    kernel costs about twice a row of the 4-row one (packed.gemm at H = 128: 16 rows 2.27 us,
    17: 2.56, 18: 2.83, 19: 3.21, 20: 2.81). The extra rows' results are never read."""
    if nb % 4 < 2:
        return nb
    return min(b1 - b0, (nb + 3) // 4 * 4)


@njit(**KERNEL)
def receive(dh, part, p, b0, b1, u0, n, B, H, units, Hp):
    """dh[b0:b1, u0:u0+n] += every unit chunk's share of slot p, in chunk order."""
    for v in range(units):
        q0 = ((p * units + v) * B) * Hp
        for b in range(b0, b1):
            add_to(dh, b * H + u0, part, q0 + b * Hp + u0, n)


@njit(**KERNEL)
def _span(geo, bounds, c):
    """Block c of the plan: rows b0..b1, unit chunk u (units u0..u0+n), and the block's first
    row in the block buffers."""
    b0, b1, u = block_of(c, bounds, geo.units)
    u0 = u * geo.nu
    return b0, b1, u, u0, min(geo.nu, geo.H - u0), b0 * geo.units + u * (b1 - b0)


@njit(**KERNEL)
def _forward_block(cell, k, geo, c, s, x, y, steps, b_hh, state, keep, work):
    """Phase k of step s (in processing order) for block c: the product of the valid rows,
    then every row."""
    geo, work = Geometry(*geo), FWork(*work)
    T, B, H, nu = geo.T, geo.B, geo.H, geo.nu
    lengths, rows = steps[0], steps[1]
    b0, b1, u, u0, n, first = _span(geo, steps[2], c)
    xp, xs = x
    yf, ys_t, ys_b = y
    hs, W = state[0], work.W
    w0, P, o0 = work.ph[k, 0], work.ph[k, 1], work.ph[k, 3]
    NR = panel_width(W)
    Np = P * NR
    last = k == work.ph.shape[0] - 1
    t, r_in, r_out = slots(s, T, geo.reverse, geo.training)
    nb = product_rows(count_valid(lengths, t, b0, b1), b0, b1)
    if nb > 0:
        a, a0 = (hs, (r_in * B + b0) * H) if k == 0 else (work.mid, b0 * H)
        phase_product(W, w0, u, u0, n, nu, P, work.ph[k, 2], H, a, a0, nb, work.out,
                      o0 + first * Np, Np)
    for b in range(b0, b1):
        i_in = (r_in * B + b) * H + u0
        i_out = (r_out * B + b) * H + u0
        yo = t * ys_t + b * ys_b + u0
        if t >= lengths[b]:  # the states carry, y is 0
            if last:
                for st in state:
                    copy_row(st, i_out, st, i_in, n)
                zero_row(yf, yo, n)
            else:
                zero_row(work.mid, b * H + u0, n)
            continue
        row, tb = first + b - b0, rows[t] + b
        forward_row(cell, k, geo, Pos(t, b, u0, n, i_in, i_out, row, o0 + row * Np,
                                      tb * xs + u0, tb), xp, b_hh, state, keep, work)
        if last:
            zoneout_row(cell, hs, i_out, i_in, tb * H + u0, n)
            copy_row(yf, yo, hs, i_out, n)
            if geo.training and keep[0].size > 0:
                _keep_gates(keep[0], tb * geo.G * H + u0, H, geo.nu, n, row, work)


@njit(**KERNEL)
def _keep_gates(gates, go, H, nu, n, row, work):
    """Copy the row's activated gates from every phase's output to gates[go + j*H:]."""
    j = 0
    for p in range(work.ph.shape[0]):
        g = work.ph[p, 3] + row * work.ph[p, 1] * panel_width(work.out)
        for i in range(work.ph[p, 2]):
            copy_row(gates, go + j * H, work.out, g + i * nu, n)
            j += 1


@njit(**KERNEL)
def _backward_block(cell, k, geo, c, s, dy, dgx, steps, state, grads, keep, work):
    """Backward phase k of step s (in reverse processing order) for block c: receive the
    shares, every valid row, then the block's share of d[k] @ W_hh (zero for invalid rows)."""
    geo, work = Geometry(*geo), BWork(*work)
    T, B, H, nu, units = geo.T, geo.B, geo.H, geo.nu, geo.units
    lengths, rows = steps[0], steps[1]
    b0, b1, u, u0, n, first = _span(geo, steps[2], c)
    dyf, ds_t, ds_b = dy
    dgf, gs = dgx
    dh, WT, P = grads[0], work.WT, work.P
    w0, K, d0 = work.ph[k, 0], work.ph[k, 1] * nu, work.ph[k, 2]
    NR = panel_width(WT)
    Hp = P * NR
    last = k == work.ph.shape[0] - 1
    t, r_in, r_out = slots(T - 1 - s, T, geo.reverse, True)
    if k == 0:
        if s > 0:
            receive(dh, work.part, 1 - s % 2, b0, b1, u0, n, B, H, units, Hp)
    else:
        for b in range(b0, b1):
            zero_row(work.mid, b * H + u0, n)
        receive(work.mid, work.q, 0, b0, b1, u0, n, B, H, units, Hp)
    nb = count_valid(lengths, t, b0, b1)  # rows b0..b0+nb; dh passes the others unchanged
    for b in range(b0, b0 + nb):
        row, tb = first + b - b0, rows[t] + b
        hb = b * H + u0
        if k == 0:
            add_to(dh, hb, dyf, t * ds_t + b * ds_b + u0, n)
            zoneout_split(cell, dh, hb, tb * H + u0, n)
        backward_row(cell, k, geo, Pos(t, b, u0, n, (r_in * B + b) * H + u0,
                                       (r_out * B + b) * H + u0, row, d0 + row * K,
                                       tb * gs + u0, tb), dgf, state, grads, keep, work)
        if last:
            zoneout_join(cell, dh, hb, n)
    if last:
        to, at = work.part, (((s % 2) * units + u) * B + b0) * Hp
    else:
        to, at = work.q, (u * B + b0) * Hp
    phase_share(WT, w0, u, u0, n, nu, P, work.ph[k, 1], H, work.d, d0 + first * K, K,
                product_rows(nb, b0, b1), to, at, Hp)
    zero_row(to, at + nb * Hp, (b1 - b0 - nb) * Hp)  # the invalid rows' shares


def _block(cell, k, geo, c, s, src, dst, steps, extra, state, keep, work):
    """_forward_block or _backward_block, chosen while compiling by the type of ``work`` (a
    plain tuple: an FWork has 4 fields, a BWork 9)."""
    raise TypeError("compiled code only")


@overload(_block, jit_options=KERNEL)
def _block_impl(cell, k, geo, c, s, src, dst, steps, extra, state, keep, work):
    if len(work) == len(FWork._fields):
        return lambda cell, k, geo, c, s, src, dst, steps, extra, state, keep, work: (
            _forward_block(cell, k, geo, c, s, src, dst, steps, extra, state, keep, work))
    return lambda cell, k, geo, c, s, src, dst, steps, extra, state, keep, work: (
        _backward_block(cell, k, geo, c, s, src, dst, steps, state, extra, keep, work))


def _finish(geo, bounds, extra, work):
    """After the backward loop: dh receives the shares of the last step processed."""
    raise TypeError("compiled code only")


@overload(_finish, jit_options=KERNEL)
def _finish_impl(geo, bounds, extra, work):
    if len(work) == len(FWork._fields):
        return lambda geo, bounds, extra, work: None

    def finish(geo, bounds, extra, work):
        geo, work = Geometry(*geo), BWork(*work)
        Hp = work.P * panel_width(work.WT)
        for c in range(geo.rows):
            b0, b1, _ = block_of(c, bounds, 1)
            receive(extra[0], work.part, (geo.T - 1) % 2, b0, b1, 0, geo.H, geo.B, geo.H,
                    geo.units, Hp)
    return finish


def _phases(work):
    """Phases of a plain-tuple FWork or BWork."""
    raise TypeError("compiled code only")


@overload(_phases, jit_options=KERNEL, inline="always")
def _phases_impl(work):
    if len(work) == len(FWork._fields):
        return lambda work: FWork(*work).ph.shape[0]
    return lambda work: BWork(*work).ph.shape[0]


@njit(parallel=True, **KERNEL)
def time_loop(cell, geo, src, dst, steps, extra, state, keep, work):
    """Every step of one direction, forward (work an FWork: src x, dst y, extra b_hh) or
    backward (work a BWork: src dy, dst d_gx, extra grads, which end as the gradients of the
    initial states); groups in the module docstring. geo and work come as plain tuples: Numba
    types them faster than NamedTuples on every call, and its parallel loops cannot take
    NamedTuples defined here."""
    T, rows, units = geo[0], geo[4], geo[5]  # Geometry's T, rows, units
    phases = _phases(work)
    if rows * units == 1:
        for s in range(T):
            for k in range(phases):
                _block(cell, k, geo, 0, s, src, dst, steps, extra, state, keep, work)
    elif units == 1:  # independent row groups: no barrier between steps
        for c in prange(rows):
            for s in range(T):
                for k in range(phases):
                    # int64, as in the serial call: prange's uint64 would compile the block twice
                    _block(cell, k, geo, np.int64(c), s, src, dst, steps, extra, state, keep,
                           work)
    else:
        for s in range(T):
            for k in range(phases):
                for c in prange(rows * units):
                    _block(cell, k, geo, np.int64(c), s, src, dst, steps, extra, state, keep,
                           work)
    _finish(geo, steps[2], extra, work)

"""Sequence lengths in the Numba backend, which orders the batch by length and packs the valid
steps' rows (backends/packing.py): the layout itself, and every cell, dtype, direction and
thread split against the NumPy reference on lengths that stress the ordering (ties, all equal,
rows of length 1, a batch that the threads cannot split evenly); chunked inference; identical
bits on repeated calls; padding that is never read; inputs left as they were."""

import numpy as np
import pytest

import fastrnn
from fastrnn.backends.base import Direction
from fastrnn.backends.packing import Packing, Steps
from fastrnn.cells import ALL_CELLS
from helpers import assert_close, make_params

if "numba" not in fastrnn.available_backends():
    pytest.skip("the numba backend cannot run here", allow_module_level=True)

from numba_helpers import SPLITS, knob_setter, numba_threads  # noqa: E402  (imports Numba)

BACKEND = fastrnn.get_backend("numba")
CELL_IDS = [c.name for c in ALL_CELLS]
DTYPES = [np.float32, np.float64]
T, B, I, H = 9, 7, 5, 19  # B = 7: two row groups of different sizes

PATHS = SPLITS  # the forced thread splits, as in test_numba.py

LENGTHS = {
    "ties": [9, 4, 4, 7, 2, 4, 9],
    "all-equal": [5] * 7,
    "ones": [1, 9, 1, 3, 1, 1, 6],
    "one-long": [1, 1, 1, 9, 1, 1, 1],
    "descending": [9, 8, 6, 6, 3, 2, 1],
}

# Direction sets: one forward, one reverse, and a bidirectional layer.
DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}
GRAD_FIELDS = ("dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0")


@pytest.fixture
def knobs(monkeypatch):
    return knob_setter(monkeypatch, BACKEND, PATHS)


def _problem(cell, dtype, reverses, seed=0):
    """x, the Directions, and cotangents (dy, dh_n, dc_n) of a layer with len(reverses)
    directions."""
    rng = np.random.default_rng(seed)
    dirs = []
    for k, rev in enumerate(reverses):
        p = make_params(cell, T, B, I, H, dtype, rng, scale=0.5)
        dirs.append(Direction(p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], p["h0"], p.get("c0"),
                              rev))
    x = p["x"]
    D = len(reverses)
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    dh_n = rng.standard_normal((D, B, H)).astype(dtype)
    dc_n = rng.standard_normal((D, B, H)).astype(dtype) if cell.has_cell_state else None
    return x, dirs, (dy, dh_n, dc_n)


def _layer(backend_name, cell, x, dirs, lengths, cot):
    """Forward and backward of one layer through Backend.forward/backward, by name."""
    backend = fastrnn.get_backend(backend_name)
    y, h_n, c_n, saved = backend.forward(cell, x, dirs, lengths, True)
    dx, grads = backend.backward(cell, saved, *cot)
    out = {"y": y, "h_n": h_n, "dx": dx}
    if cell.has_cell_state:
        out["c_n"] = c_n
    for k, g in enumerate(grads):
        out.update({f"{n}{k}": getattr(g, n) for n in GRAD_FIELDS if getattr(g, n) is not None})
    return out


@pytest.mark.parametrize("pattern", list(LENGTHS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
def test_matches_reference(cell, dtype, pattern, knobs):
    lengths = np.array(LENGTHS[pattern], np.int64)
    for name, reverses in DIRECTIONS.items():
        x, dirs, cot = _problem(cell, dtype, reverses, seed=len(pattern))
        want = _layer("numpy", cell, x, dirs, lengths, cot)
        for path in PATHS:
            knobs(path)
            with numba_threads(2):
                got = _layer("numba", cell, x, dirs, lengths, cot)
            assert_close(got, want, dtype, f"{cell.name} {pattern} {name} {path}")


@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
def test_chunked_inference(cell, knobs, monkeypatch):
    """Inference in chunks of 2 steps (each chunk's lengths clipped to 0..2, packed anew) gives
    the outputs of one call, both directions."""
    lengths = np.array(LENGTHS["ties"], np.int64)
    x, dirs, _ = _problem(cell, np.float64, (False, True), seed=3)
    knobs("rows")
    with numba_threads(2):
        whole = BACKEND.forward(cell, x, dirs, lengths, False)
        monkeypatch.setattr(BACKEND, "chunk_elements", 2 * B * cell.gates * H * 2)
        chunked = BACKEND.forward(cell, x, dirs, lengths, False)
    for name, a, b in zip(("y", "h_n", "c_n"), chunked[:3], whole[:3]):
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
def test_repeatable_untouched_and_padding_never_read(cell, path, knobs):
    """At a fixed thread count two calls give identical bits; the inputs are left as they
    were; NaN in x at invalid steps changes nothing (those steps are never computed)."""
    lengths = np.array(LENGTHS["ties"], np.int64)
    x, dirs, cot = _problem(cell, np.float32, (False, True), seed=7)
    params = [a for d in dirs for a in (d.W_ih, d.W_hh, d.b_ih, d.b_hh, d.h0, d.c0)]
    inputs = [a for a in [x, lengths, *cot, *params] if a is not None]
    before = [a.copy() for a in inputs]
    knobs(path)
    with numba_threads(2):
        first = _layer("numba", cell, x, dirs, lengths, cot)
        again = _layer("numba", cell, x, dirs, lengths, cot)
        padded = x.copy()
        padded[np.arange(T)[:, None] >= lengths[None, :]] = np.nan
        nan_padding = _layer("numba", cell, padded, dirs, lengths, cot)
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(a, b)
    valid = (np.arange(T)[:, None] < lengths[None, :])[..., None]
    for k in first:
        np.testing.assert_array_equal(first[k], again[k], err_msg=k)
        if k == "dx":  # the gradient at a NaN step is 0 either way
            np.testing.assert_array_equal(np.where(valid, nan_padding[k], 0), first[k])
        else:
            np.testing.assert_array_equal(nan_padding[k], first[k], err_msg=k)


def test_packing_layout():
    """The order is a stable sort by length, longest first; step t holds its valid rows in that
    order; pack and unpack are inverse on the valid steps; the row groups are balanced."""
    lengths = np.array([2, 5, 2, 3, 5, 1], np.int64)
    Tn, Bn = 5, 6
    p = Packing(lengths, Tn)
    np.testing.assert_array_equal(p.order, [1, 4, 3, 0, 2, 5])
    np.testing.assert_array_equal(p.steps.lengths, [5, 5, 3, 2, 2, 1])
    np.testing.assert_array_equal(p.order[p.inverse], np.arange(Bn))
    np.testing.assert_array_equal(p.steps.rows, [0, 6, 11, 14, 16, 18])
    assert p.count == lengths.sum()
    a = np.arange(Tn * Bn * 2, dtype=np.float64).reshape(Tn, Bn, 2)
    want = np.concatenate([a[t, p.order[:np.count_nonzero(lengths > t)]] for t in range(Tn)])
    np.testing.assert_array_equal(p.pack(a), want)
    np.testing.assert_array_equal(p.pack(a, 1, 3), want[6:14])
    valid = (np.arange(Tn)[:, None] < lengths[None, :])[..., None]
    np.testing.assert_array_equal(p.unpack(p.pack(a), Tn, Bn), np.where(valid, a, 0))
    np.testing.assert_array_equal(p.steps.index(), [t * Bn + b for t in range(Tn)
                                                    for b in range(6) if p.steps.lengths[b] > t])
    win = p.steps.window(1, 3)
    np.testing.assert_array_equal(win.lengths, [2, 2, 2, 1, 1, 0])
    np.testing.assert_array_equal(win.rows, [0, 5, 8])
    # 18 steps in all: [5, 5] and [3, 2, 2, 1] hold 10 and 8, the best split into two ranges
    np.testing.assert_array_equal(p.steps.balanced(2), [0, 2, 6])
    np.testing.assert_array_equal(p.steps.balanced(1), [0, 6])
    full = Steps.full(3, 4)
    np.testing.assert_array_equal(full.rows, [0, 4, 8, 12])
    np.testing.assert_array_equal(full.balanced(2), [0, 2, 4])
    skewed = Steps.of(np.array([100, 1, 1, 1], np.int64), 100)
    np.testing.assert_array_equal(skewed.balanced(3), [0, 1, 2, 4])  # no range left empty

"""The Numba backend against the NumPy reference: forward outputs and every gradient, every cell,
both dtypes, every code path (one thread or several, BLAS or the hand-written product); and the
contract details: strided views, chunked inference, inference = training, repeatability, thread
counts, untouched inputs, activations at extreme inputs."""

import numpy as np
import pytest

import fastrnn
from fastrnn.backends.base import Direction
from fastrnn.cells import ALL_CELLS, Cell
from helpers import (FORWARD, assert_close, make_cotangents, make_problem, run,
                     variant_kwargs)

if "numba" not in fastrnn.available_backends():
    pytest.skip("the numba backend cannot run here", allow_module_level=True)

import numba  # noqa: E402  (only once the backend is known to run)
from numba_helpers import NEVER, SPLITS, knob_setter, numba_threads  # noqa: E402

BACKEND = fastrnn.get_backend("numba")
CELL_IDS = [c.name for c in ALL_CELLS]
DTYPES = [np.float32, np.float64]
# Each split (numba_helpers.SPLITS) runs its products on packed panels or on W_hh as it is
# (direct).
PATHS = {f"{split}-{products}": dict(knobs, direct_max_rows=NEVER if products == "direct" else 0)
         for split, knobs in SPLITS.items() for products in ("packed", "direct")}

# (T, B, I, H) and make_problem flags; together they cover T = B = H = 1, odd sizes, lengths with
# ties and full-length rows, reverse, given and zero initial states, and no bias.
CASES = {
    "ones": ((1, 1, 1, 1), dict(), False),
    "odd-lengths-reverse": ((6, 5, 7, 33), dict(lengths=True), True),
    "odd-lengths": ((5, 4, 7, 33), dict(lengths=True, states=False), False),
    "nobias-reverse": ((4, 3, 2, 9), dict(bias=False), True),
}


@pytest.fixture
def knobs(monkeypatch):
    return knob_setter(monkeypatch, BACKEND, PATHS)


def test_paths_are_distinct(knobs):
    """Each forced path reaches its own plan (row groups, unit chunks), so the grid below tests
    them all."""
    plans = set()
    for path in PATHS:
        knobs(path)
        with numba_threads(2):
            plan = BACKEND._plan(Cell("lstm"), 4, 4, 32)
            plans.add((plan.rows, plan.units, BACKEND._direct(4, 4, plan)))
    splits = {(1, 1), (2, 1), (1, 2)} if numba.config.NUMBA_NUM_THREADS >= 2 else {(1, 1)}
    assert plans == {split + (direct,) for split in splits for direct in (False, True)}


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("T, B, H, plan", [
    (100, 1, 64, (1, 1)),      # tiny: one thread
    (100, 16, 128, (2, 1)),    # small: row groups
    (100, 32, 256, (2, 1)),    # medium: row groups
    (100, 64, 512, (2, 1)),    # large: row groups
    (50, 64, 1024, (1, 2)),    # xlarge: unit chunks
    (50, 4, 1024, (1, 2)),     # two rows per thread, 16 MB of W_hh: unit chunks
    (50, 8, 512, (2, 1)),      # four rows per thread: row groups
])
def test_default_plans(T, B, H, plan):
    """The default knobs choose the split measured fastest (see NumbaBackend)."""
    with numba_threads(2):
        got = BACKEND._plan(Cell("lstm"), T, B, H)
    assert (got.rows, got.units) == plan


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
def test_matches_reference(cell, dtype, case, knobs):
    (T, B, I, H), flags, reverse = CASES[case]
    problem = make_problem(cell, T, B, I, H, dtype, seed=T + B + H, **flags)
    cot = make_cotangents(cell, T, B, H, dtype, seed=2)
    want = run(cell, problem, cot, "numpy", reverse)
    for path in PATHS:
        knobs(path)
        with numba_threads(2):
            got = run(cell, problem, cot, "numba", reverse)
        for g, w, what in zip(got, want, ("outputs", "gradients")):
            assert_close(g, w, dtype, f"{cell.name} {case} {path} {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
def test_bidirectional_views(cell, dtype, knobs):
    """Two directions through FusedBackend.forward/backward: x_proj, y, dy and d_gx reach the
    kernels as views into arrays twice as wide."""
    T, B, I, H = 5, 4, 3, 6
    fwd = make_problem(cell, T, B, I, H, dtype, seed=11, lengths=True)
    bwd = make_problem(cell, T, B, I, H, dtype, seed=12)
    dirs = [Direction(p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], p["h0"], p.get("c0"), rev)
            for p, rev in ((fwd, False), (bwd, True))]
    x, lengths = fwd["x"], fwd["lengths"]
    rng = np.random.default_rng(3)
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    dh_n = rng.standard_normal((2, B, H)).astype(dtype)
    dc_n = rng.standard_normal((2, B, H)).astype(dtype) if cell.has_cell_state else None
    results = []
    paths = ("rows-packed", "units-packed", "rows-direct", "units-direct")
    for name, path in (("numpy", None),) + tuple(("numba", p) for p in paths):
        if path:
            knobs(path)
        backend = fastrnn.get_backend(name)
        with numba_threads(2):
            y, h_n, c_n, saved = backend.forward(cell, x, dirs, lengths, True)
            dx, grads = backend.backward(cell, saved, dy, dh_n, dc_n)
        out = {"y": y, "h_n": h_n, "dx": dx}
        if cell.has_cell_state:
            out["c_n"] = c_n
        for k, g in enumerate(grads):
            out.update({f"{n}{k}": getattr(g, n) for n in ("dW_ih", "dW_hh", "db_ih", "db_hh",
                                                              "dh0", "dc0")
                        if getattr(g, n) is not None})
        results.append(out)
    for path, result in zip(paths, results[1:]):
        assert_close(result, results[0], dtype, f"{cell.name} bidirectional {path}")


@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
def test_inference_equals_training_and_chunks(cell, monkeypatch):
    """training=False gives the training forward's outputs exactly, and keeps nothing; inference
    in chunks of one step (lengths reach the kernels as 0 and 1) gives the same outputs."""
    dtype = np.float64
    problem = make_problem(cell, 7, 4, 3, 5, dtype, seed=5, lengths=True)
    for reverse in (False, True):
        kw = dict(**problem, **variant_kwargs(cell), reverse=reverse, backend="numba")
        train = FORWARD[cell.kind](**kw, training=True)
        infer = FORWARD[cell.kind](**kw, training=False)
        assert infer[-1] is None
        for a, b in zip(train[:-1], infer[:-1]):
            np.testing.assert_array_equal(a, b)
        monkeypatch.setattr(BACKEND, "chunk_elements", 1)
        chunked = FORWARD[cell.kind](**kw, training=False)
        monkeypatch.undo()
        assert_close(dict(enumerate(chunked[:-1])), dict(enumerate(infer[:-1])), dtype,
                     f"{cell.name} chunked inference")


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
def test_repeatable_and_thread_counts_agree(cell, path, knobs):
    """Identical bits on repeated calls at a fixed thread count; 1 and 2 threads agree."""
    knobs(path)
    dtype = np.float32
    problem = make_problem(cell, 6, 6, 5, 17, dtype, seed=9, lengths=True)
    cot = make_cotangents(cell, 6, 6, 17, dtype)
    with numba_threads(2):
        first = run(cell, problem, cot, "numba", True)
        again = run(cell, problem, cot, "numba", True)
    for a, b in zip(first, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{cell.name} {path} {k}")
    with numba_threads(1):
        single = run(cell, problem, cot, "numba", True)
    for a, b in zip(single, first):
        assert_close(a, b, dtype, f"{cell.name} {path} 1 vs 2 threads")


@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("path", ["rows-packed", "rows-direct"])
def test_inputs_not_modified(cell, path, knobs):
    knobs(path)
    problem = make_problem(cell, 4, 3, 2, 5, np.float32, seed=4, lengths=True)
    cot = make_cotangents(cell, 4, 3, 5, np.float32)
    before = {k: v.copy() for k, v in {**problem, **cot}.items() if isinstance(v, np.ndarray)}
    with numba_threads(2):
        run(cell, problem, cot, "numba", True)
    for k, v in before.items():
        current = problem[k] if k in problem else cot[k]
        np.testing.assert_array_equal(current, v, err_msg=f"{cell.name}: {k} was modified")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_activations_at_extreme_inputs(dtype):
    """sigmoid and tanh of the kernels: within a few ulp of exact for ordinary inputs, correct
    limits for huge and infinite ones, NaN for NaN, and no floating-point warning."""
    from fastrnn.backends.numba_cpu.vectors import sigmoid_row, tanh_row

    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1e-30, -1e-30, 1e-8, 0.24, 0.25, 0.26, 20.0, -20.0, 87.0, -87.0, 88.5,
               -88.5, 1e4, -1e4, 1e30, -1e30, np.inf, -np.inf]
    x = np.concatenate([special, rng.standard_normal(2000) * 4,
                        rng.uniform(-1, 1, 500)]).astype(dtype)
    exact = x.astype(np.float64)
    with np.errstate(over="ignore"):
        want = {"sigmoid": 1 / (1 + np.exp(-exact)), "tanh": np.tanh(exact)}
    tiny = np.finfo(dtype).tiny
    for name, fn in (("sigmoid", sigmoid_row), ("tanh", tanh_row)):
        got = x.copy()
        fn(got, 0, got.size)
        assert np.all(np.isfinite(got)), name
        # float32 clamps exp's argument to [-87, 87], so results stay normal numbers: below
        # sigmoid(-87) the absolute error is under two smallest normals.
        rel = 4e-7 if dtype == np.float32 else 1e-15
        np.testing.assert_allclose(got, want[name], rtol=rel, atol=2 * tiny, err_msg=name)
        nan = np.array([np.nan, 1.0, np.nan], dtype)
        fn(nan, 0, 3)
        assert np.isnan(nan[0]) and np.isnan(nan[2]) and np.isfinite(nan[1]), name


def test_huge_inputs_stay_finite_and_match():
    """Pre-activations of order 1e4 saturate every gate without overflow warnings (RuntimeWarning
    is an error in this suite) and agree with the reference. (relu does not saturate.)"""
    for cell in [c for c in ALL_CELLS if c.name != "rnn_relu"]:
        problem = make_problem(cell, 4, 3, 2, 5, np.float32, seed=6, scale=2e3)
        cot = make_cotangents(cell, 4, 3, 5, np.float32)
        got = run(cell, problem, cot, "numba")
        want = run(cell, problem, cot, "numpy")
        for g, w in zip(got, want):
            for k in g:
                assert np.all(np.isfinite(g[k])), (cell.name, k)
            assert_close(g, w, np.float32, f"{cell.name} huge inputs")


def test_set_num_threads():
    limit = numba.config.NUMBA_NUM_THREADS
    old = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        assert fastrnn.get_num_threads() == 1 == numba.get_num_threads()
        fastrnn.set_num_threads(limit)
        assert fastrnn.get_num_threads() == limit
    finally:
        fastrnn.set_num_threads(old)
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        fastrnn.set_num_threads(limit + 1)
    with pytest.raises(ValueError, match=r"\[1, "):
        fastrnn.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        fastrnn.set_num_threads(1.5)


def test_blas_limit_sets_and_restores():
    """The backend runs BLAS on one thread while it works (its GEMMs are split over Numba's
    threads instead); the limit it uses sets every BLAS library and restores the counts."""
    from threadpoolctl import ThreadpoolController

    limiter = BACKEND._blas
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [lib.get_num_threads() for lib in libs]
    with limiter.limit(1):
        assert all(lib.get_num_threads() == 1 for lib in libs)
    assert [lib.get_num_threads() for lib in libs] == before



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["rows", "transposed", "plain"])
@pytest.mark.parametrize("biased", [True, False])
def test_matmul_with_bias_on_every_path(dtype, layout, biased):
    """The GEMMs above the recurrence (rows split over threads with the bias added per thread,
    a transposed left factor with the output rows split, plain call) give a @ b + bias, the same
    numbers as NumPy's product followed by the bias add."""
    from fastrnn.backends.numba_cpu import blas

    rng = np.random.default_rng(3)
    a = rng.standard_normal((37, 19)).astype(dtype)
    b = rng.standard_normal((19, 45)).astype(dtype)
    if layout == "transposed":
        a = np.asfortranarray(a)
    bias = rng.standard_normal(45).astype(dtype) if biased else None
    threads = 1 if layout == "plain" else 2
    got = blas.matmul(a, b, threads, 0, bias)
    want = a @ b
    if biased:
        want += bias
    assert got.shape == (37, 45) and got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)
    if biased:
        assert not np.allclose(got, a @ b, rtol=1e-3, atol=1e-3)  # the bias is there


def _blocks(W, gates, plan):
    """Oracle: chunk u's block of W_hh, (units, len(gates)*size, H), zero rows past H."""
    H = W.shape[1]
    out = np.zeros((plan.units, len(gates) * plan.size, H), W.dtype)
    for u in range(plan.units):
        for g, gate in enumerate(gates):
            rows = W[gate * H + u * plan.size:gate * H + min(H, (u + 1) * plan.size)]
            out[u, g * plan.size:g * plan.size + len(rows)] = rows
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads_share", [True, False])
@pytest.mark.parametrize("H, units, G, gates", [(1, 1, 1, (0,)), (33, 1, 4, (0, 1, 2, 3)),
                                                (33, 2, 4, (0, 1, 2, 3)), (100, 2, 3, (0, 1)),
                                                (48, 3, 3, (2,)), (7, 1, 3, (1, 2))])
def test_packed_panels_hold_the_blocks(dtype, threads_share, H, units, G, gates, monkeypatch):
    """The forward panels hold the transpose of each chunk's block of W_hh and the backward panels
    the block itself, NR columns at a time, zero-padded, exactly; whether or not the threads
    share the packing."""
    from fastrnn.backends import tuning
    from fastrnn.backends.numba_cpu import packed

    monkeypatch.setattr(tuning, "PACK_PARALLEL_MIN", 0 if threads_share else NEVER)
    W = np.random.default_rng(H).standard_normal((G * H, H)).astype(dtype)
    plan = packed.make_plan(H, 1, units)
    assert plan.units == units
    NR = 256 // np.dtype(dtype).itemsize
    blocks = _blocks(W, gates, plan)
    N = blocks.shape[1]
    with numba_threads(2):
        fwd, P = packed.pack_forward(W, gates, plan)
        bwd, Pb = packed.pack_backward(W, gates, plan)
    rows = np.zeros((units, P * NR, H), dtype)
    rows[:, :N] = blocks
    want = rows.reshape(units, P, NR, H).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(fwd.reshape(units, P, H, NR), want)
    cols = np.zeros((units, N, Pb * NR), dtype)
    cols[:, :, :H] = blocks
    want = cols.reshape(units, N, Pb, NR).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(bwd.reshape(units, Pb, N, NR), want)


@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("path", ["serial-packed", "units-packed", "units-direct"])
def test_gradients_in_the_saved_gates_memory(cell, path, knobs, monkeypatch):
    """A one-direction training forward keeps the gates in the projection's memory and backward
    writes the projection's gradient over them; the gradients are bitwise those computed with
    separate buffers."""
    from fastrnn.backends.fused import FusedBackend
    from fastrnn.backends.numba_cpu import driver

    knobs(path)
    p = make_problem(cell, 6, 5, 7, 33, np.float64, lengths=True)
    cot = make_cotangents(cell, 6, 5, 33, np.float64)
    kinds = []
    real_gate_gradients = type(BACKEND).gate_gradients

    def spy(self, saved, shape):
        gates = saved.directions[0].gates
        d_gx = real_gate_gradients(self, saved, shape)
        kinds.append(gates is not None and d_gx is gates)
        return d_gx

    with numba_threads(2):
        monkeypatch.setattr(type(BACKEND), "gate_gradients", spy)
        shared = run(cell, p, cot, "numba")
        monkeypatch.setattr(type(BACKEND), "gate_gradients", FusedBackend.gate_gradients)
        monkeypatch.setattr(driver, "gate_store", lambda x_proj, training, G, H: np.empty(
            (x_proj.shape[0], G * H) if training else (1, 1), x_proj.dtype))
        separate = run(cell, p, cot, "numba")
    assert kinds == [cell.kind != "rnn"]
    for got, want in zip(shared, separate):
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("T, B, direct", [(1, 1, True), (4, 1, True), (1, 4, True), (2, 3, False),
                                          (5, 1, False), (100, 16, False)])
def test_few_rows_read_the_weights_unpacked(T, B, direct):
    """Calls with few rows per block in all (decoding steps) skip packing W_hh."""
    with numba_threads(2):
        plan = BACKEND._plan(Cell("lstm"), T, B, 64)
        assert BACKEND._direct(T, B, plan) is direct

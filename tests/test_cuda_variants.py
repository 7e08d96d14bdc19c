"""The "cupy" backend's cell variants (cells.Variant) on the CPU emulation (tests/cuda_emulation:
the very kernels/*.cu compiled with g++, NumPy in CuPy's place) against the "numpy" backend,
which runs them through the NumPy reference (reference.py): outputs and every gradient,
float32 and float64, one and two directions, lengths with reverse, initial states; inference
and chunked inference equal training; each variant is shown to change the result."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from cuda_emulation import emulated_backend, make_backend
from fastrnn import engine
from fastrnn import reference as rv
from fastrnn.backends.base import VARIANT_PARAMS, Direction
from fastrnn.cells import Cell, Variant, cell_by_name
from fastrnn.reference import NumpyBackend
from helpers import CLIP, TOL, variant_cases

REFERENCE = NumpyBackend()
VARIANTS = variant_cases(
    "rnn_tanh-clip", "rnn_relu-clip", "lstm-clip", "lstm-peepholes", "lstm-peepholes-clip",
    "gru-clip", "gru_textbook-clip", "rnn_tanh-zoneout", "rnn_relu-zoneout-clip", "lstm-zoneout",
    "gru-zoneout", "gru_textbook-zoneout", "lstm-zoneout-peepholes-clip", "lstm-proj",
    "lstm-proj-zoneout-peepholes-clip", "lstm-layer_norm", "lstm-layer_norm-all",
    "gru-layer_norm", "gru-layer_norm-zoneout-clip")
# (T, B, I, H): B*H = 65 is not a multiple of the block size; lengths with a full-length row.
SHAPE = (6, 5, 7, 13)
LAYOUTS = {  # directions (reverse flags), lengths
    "forward": ((False,), False),
    "reverse-lengths": ((True,), True),
    "bidirectional-lengths": ((False, True), True),
}
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def variant_cell(name):
    cell_name, variant = VARIANTS[name]
    return replace(cell_by_name(cell_name), variant=variant)


def make(cell: Cell, reverses, lengths, shape=SHAPE, seed=0, training=True):
    """A float64 problem: x, lengths, one parameter dict (reference.py's names) with
    initial states and the zoneout mask (of a training forward, or of evaluation) per
    direction, and the cotangents dy, dh_n, dc_n."""
    T, B, I, H = shape
    rng = np.random.default_rng(seed)
    plain = replace(cell, variant=Variant())
    P = cell.variant.hidden_size(H)
    dirs = []
    for reverse in reverses:
        p = rv.initial_params(plain, cell.variant, I, H, rng, scale=0.5)
        for name in p:  # gains and c's bias away from their initial 1 and 0
            if name.startswith("g_") or name == "b_c":
                p[name] = p[name] + 0.3 * rng.standard_normal(p[name].shape)
        p["h0"] = 0.5 * rng.standard_normal((B, P))
        p["c0"] = 0.5 * rng.standard_normal((B, H)) if cell.has_cell_state else None
        p["reverse"] = reverse
        p["zoneout_mask"] = cell.variant.zoneout_mask((T, B, P), np.float64, training, rng)
        dirs.append(p)
    L = None
    if lengths:
        L = rng.integers(1, T + 1, B)
        L[0] = T
    D = len(reverses)
    return {"x": rng.standard_normal((T, B, I)), "lengths": L, "dirs": dirs,
            "dy": rng.standard_normal((T, B, D * P)), "dh_n": rng.standard_normal((D, B, P)),
            "dc_n": rng.standard_normal((D, B, H)) if cell.has_cell_state else None}


def rounded(pr, dtype):
    """The problem with every float array rounded to ``dtype`` and back to float64, so that the
    reference sees exactly the inputs a float32 run sees."""
    def cast(v):
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            return v.astype(dtype).astype(np.float64)
        return v
    return {k: ([{n: cast(a) for n, a in d.items()} for d in v] if k == "dirs" else cast(v))
            for k, v in pr.items()}


def directions(pr, dtype):
    def cast(a):
        return None if a is None else np.ascontiguousarray(a, dtype)
    names = ("W_ih", "W_hh", "b_ih", "b_hh", "h0", "c0")
    return [Direction(*(cast(d[n]) for n in names), d["reverse"],
                      zoneout_mask=cast(d["zoneout_mask"]),
                      **{n: cast(d.get(n)) for n in VARIANT_PARAMS}) for d in pr["dirs"]]


def run(cell, backend, pr, dtype, training=True):
    """Forward (and backward when training) of one layer through the engine: (outputs, gradients)
    as flat dicts, gradients named "dW_hh[k]" etc. per direction."""
    y, h_n, c_n, ctx = engine.run_forward(cell, backend, pr["x"].astype(dtype),
                                          directions(pr, dtype), pr["lengths"], training)
    out = {"y": y, "h_n": h_n} | ({} if c_n is None else {"c_n": c_n})
    if not training:
        return out, None

    def cot(name):
        return None if pr[name] is None else pr[name].astype(dtype)
    dx, grads = engine.run_backward(ctx, cot("dy"), cot("dh_n"), cot("dc_n"))
    flat = {"dx": dx}
    for k, g in enumerate(grads):
        for f in fields(g):
            value = getattr(g, f.name)
            if value is not None:
                flat[f"{f.name}[{k}]"] = value
    return out, flat


def assert_close(actual, expected, dtype, label):
    assert set(actual) == set(expected), (label, sorted(actual), sorted(expected))
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], err_msg=f"{label} {k}", **TOL[dtype])


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_reference(variant, dtype, layout):
    """Outputs and every gradient (x, each direction's weights, biases, initial states and
    variant parameters) equal the reference's: float64 to 1e-10, float32 to rtol 1e-4 atol 1e-5
    against the float64 reference on the same rounded inputs."""
    cell = variant_cell(variant)
    pr = rounded(make(cell, *LAYOUTS[layout]), dtype)
    out, grads = run(cell, emulated_backend(), pr, dtype)
    want_out, want_grads = run(cell, REFERENCE, pr, np.float64)
    assert_close(out, want_out, dtype, f"{variant} {layout} forward")
    assert_close(grads, want_grads, dtype, f"{variant} {layout} backward")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_is_active(variant):
    """The comparison above is not of the plain cell twice: the variant changes the outputs and
    dW_hh (a projection, which has no plain cell of the same shapes, gives y of proj_size
    columns and a dW_hr), and a clip clamps some inputs of every gate and lets others through
    (the kept flags hold both)."""
    cell = variant_cell(variant)
    plain = replace(cell, variant=Variant())
    pr = make(cell, (True,), True)
    kept = {}
    backend = emulated_backend()
    forward = backend.recurrence_forward

    def spy(*args, **kwargs):
        h, c, saved = forward(*args, **kwargs)
        kept["saved"] = saved
        return h, c, saved

    backend.recurrence_forward = spy
    try:
        out, grads = run(cell, backend, pr, np.float64)
    finally:
        del backend.recurrence_forward
    if cell.variant.proj_size:
        assert out["y"].shape[2] == out["h_n"].shape[2] == cell.variant.proj_size
        assert grads["dW_hr[0]"].shape == (cell.variant.proj_size, SHAPE[3])
        assert np.all(np.abs(grads["dW_hr[0]"]) > 0)
    else:
        plain_pr = dict(pr, dirs=[{k: v for k, v in d.items() if k not in VARIANT_PARAMS}
                                  | {"zoneout_mask": None} for d in pr["dirs"]])
        plain_out, plain_grads = run(plain, backend, plain_pr, np.float64)
        assert np.abs(out["y"] - plain_out["y"]).max() > 1e-3
        assert np.abs(grads["dW_hh[0]"] - plain_grads["dW_hh[0]"]).max() > 1e-3
    inside = kept["saved"].inside
    if cell.variant.clip is None:
        assert inside is None
    else:
        T, B, _, H = SHAPE
        assert inside.shape == (T, B, cell.gates * H) and inside.dtype == np.uint8
        for j in range(cell.gates):  # at the valid steps, every gate is clamped somewhere
            valid = np.arange(T)[:, None] < pr["lengths"][None, :]
            share = inside[:, :, j * H:(j + 1) * H][valid].mean()
            assert 0 < share < 1, (j, share)
    if cell.variant.peepholes:
        assert np.all(np.abs(grads["dP[0]"]) > 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inference_and_chunks_equal_training(variant, dtype):
    """Inference (nothing kept) gives the training outputs exactly; chunked inference (two
    steps per chunk, the variant's parameters reaching every chunk, a chunk past a sequence's
    end with length 0) the same to rounding. Zoneout's mask is a training one (0 or 1 per
    unit), so that each chunk must get its own window of it."""
    cell = variant_cell(variant)
    pr = make(cell, (False, True), True, seed=1)
    pr["lengths"] = np.array([6, 2, 5, 1, 3])
    trained, _ = run(cell, emulated_backend(), pr, dtype)
    inferred, _ = run(cell, emulated_backend(), pr, dtype, training=False)
    T, B, _, H = SHAPE
    chunks = make_backend(chunk_elements=2 * B * cell.gates * H)
    calls = []
    forward = chunks.recurrence_forward

    def spy(*args, **kwargs):
        calls.append(args[6])
        return forward(*args, **kwargs)

    chunks.recurrence_forward = spy
    chunked, _ = run(cell, chunks, pr, dtype, training=False)
    assert len(calls) == 6 and any((L == 0).any() for L in calls)
    for k in trained:
        np.testing.assert_array_equal(inferred[k], trained[k], err_msg=k)
        np.testing.assert_allclose(chunked[k], trained[k], err_msg=k, **TOL[dtype])


def test_inputs_not_modified():
    cell = variant_cell("lstm-peepholes-clip")
    pr = make(cell, (False, True), True)
    before = {k: v.copy() for k, v in pr.items() if isinstance(v, np.ndarray)}
    dirs_before = [{k: v.copy() for k, v in d.items() if isinstance(v, np.ndarray)}
                   for d in pr["dirs"]]
    run(cell, emulated_backend(), pr, np.float64)
    for k, v in before.items():
        np.testing.assert_array_equal(pr[k], v, err_msg=k)
    for d, b in zip(pr["dirs"], dirs_before):
        for k, v in b.items():
            np.testing.assert_array_equal(d[k], v, err_msg=k)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if "zoneout" in v])
def test_zoneout_evaluation_mask_matches_reference(variant):
    """Zoneout's evaluation mask, 1 - p everywhere, mixes the old and new states rather than
    picking one: outputs and gradients against the reference, both directions, lengths."""
    cell = variant_cell(variant)
    pr = make(cell, (False, True), True, seed=2, training=False)
    assert np.all(pr["dirs"][0]["zoneout_mask"] == 0.7)
    out, grads = run(cell, emulated_backend(), pr, np.float64)
    want_out, want_grads = run(cell, REFERENCE, pr, np.float64)
    assert_close(out, want_out, np.float64, f"{variant} forward")
    assert_close(grads, want_grads, np.float64, f"{variant} backward")


@pytest.mark.parametrize("threads", [16, 48])
@pytest.mark.parametrize("variant", ["lstm-layer_norm-all", "gru-layer_norm-zoneout-clip"])
def test_layer_norm_block_sizes_and_thread_order(variant, threads):
    """The layer-normalised kernels run one block per batch row: with blocks narrower than the
    row (16 or 48 threads for rows of 3*13 or 4*13 units) each thread steps over several units,
    and the result equals the reference; the block sums are taken in a fixed order, so running
    every block's threads backwards (the emulation's fibers) gives the same bits."""
    cell = variant_cell(variant)
    pr = make(cell, (False, True), True, seed=3)
    want_out, want_grads = run(cell, REFERENCE, pr, np.float64)
    results = []
    for reverse_threads in (False, True):
        backend = make_backend(threads_per_block=threads, reverse_threads=reverse_threads)
        out, grads = run(cell, backend, pr, np.float64)
        assert_close(out, want_out, np.float64, f"{variant} {threads} forward")
        assert_close(grads, want_grads, np.float64, f"{variant} {threads} backward")
        assert {block for shapes in backend.device.shapes.values() for _, block in shapes
                if block != (threads,)} == set()
        results.append(out | grads)
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)


@pytest.mark.parametrize("forward", ["lstm_forward", "gru_forward"])
def test_functional_api_every_variant(forward):
    """The functional API with every variant argument its cell takes, on the emulated backend
    and on the reference: outputs and every field of Gradients."""
    import fastrnn

    lstm = forward == "lstm_forward"
    cell = variant_cell("lstm-layer_norm-all" if lstm else "gru-layer_norm-zoneout-clip")
    pr = make(cell, (True,), True, seed=4)
    d = pr["dirs"][0]
    names = ["P", "W_hr", "g_ih", "g_hh", "g_c", "b_c"] if lstm else ["g_ih", "g_hh"]
    kwargs = {("peepholes" if n == "P" else n): d[n] for n in names}
    kwargs |= dict(h0=d["h0"], lengths=pr["lengths"], reverse=True, clip=CLIP,
                   zoneout=cell.variant.zoneout, zoneout_mask=d["zoneout_mask"])
    if lstm:
        kwargs["c0"] = d["c0"]
    results = {}
    for backend in (emulated_backend(), "numpy"):
        res = getattr(fastrnn, forward)(pr["x"], d["W_ih"], d["W_hh"], d["b_ih"], d["b_hh"],
                                        backend=backend, **kwargs)
        cot = (pr["dy"], pr["dh_n"][0]) + ((pr["dc_n"][0],) if lstm else ())
        g = getattr(fastrnn, forward.replace("forward", "backward"))(res.ctx, *cot)
        outs = {k: v for k, v in res._asdict().items() if k != "ctx"}
        grads = {f.name: getattr(g, f.name) for f in fields(g) if getattr(g, f.name) is not None}
        results[backend if isinstance(backend, str) else "emulated"] = outs | grads
    variant_grads = {"dP", "dW_hr", "dg_ih", "dg_hh", "dg_c", "db_c"} if lstm else {"dg_ih",
                                                                                  "dg_hh"}
    assert variant_grads <= set(results["numpy"])
    assert_close(results["emulated"], results["numpy"], np.float64, forward)


def test_emulated_barrier_orders_the_block():
    """The emulation runs a block's threads as fibers: after __syncthreads every thread sees
    what the others wrote before it, whichever order the threads run in."""
    from cuda_emulation import EmulatedDevice

    code = """
    template <typename T>
    __global__ void rotate(const T* in, T* out) {
      __shared__ T s[64];
      s[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
      __syncthreads();
      out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
    }
    """
    x = np.arange(3 * 40, dtype=np.float64)
    want = np.roll(x.reshape(3, 40), -1, axis=1).ravel()
    for reverse in (False, True):
        device = EmulatedDevice(reverse_threads=reverse)
        f = device.compile(code, (), ["rotate<double>"])["rotate<double>"]
        out = np.full_like(x, np.nan)
        f((3,), (40,), (x, out))
        np.testing.assert_array_equal(out, want)


def test_an_unknown_variant_argument_is_an_error():
    """recurrence_forward names a keyword argument it would otherwise ignore."""
    cell = variant_cell("lstm-clip")
    B, H = 2, 3
    x_proj = np.zeros((1, B, 4 * H))
    with pytest.raises(TypeError, match=r"does not know: \['g_ih'\]"):
        emulated_backend().recurrence_forward(
            cell, x_proj, np.zeros((4 * H, H)), np.zeros(4 * H), np.zeros((B, H)),
            np.zeros((B, H)), None, False, np.zeros((1, B, H)), True, g_ih=np.ones(4 * H))

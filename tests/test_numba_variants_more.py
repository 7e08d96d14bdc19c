"""The Numba backend's zoneout (every cell) and recurrent-side layer norm (LSTM, GRU), alone and
with the other variants, against the reference backend ("numpy", which runs
fastrnn.reference): outputs and every gradient through the engine, one direction or two, both
dtypes, every thread split and both product forms, with lengths, reverse and initial states;
the variants active; inference and chunked inference equal to training; no input modified; and
what training keeps, as saved_bytes counts it."""

from dataclasses import replace

import numpy as np
import pytest

import fastrnn
from fastrnn import engine
from fastrnn import reference as rv
from fastrnn.backends.base import Direction
from fastrnn.cells import Variant, cell_by_name, saved_bytes
from helpers import TOL, ZONEOUT, assert_close, variant_cases

if "numba" not in fastrnn.available_backends():
    pytest.skip("the numba backend cannot run here", allow_module_level=True)

from numba_helpers import NEVER, SPLITS, knob_setter  # noqa: E402

NUMBA = fastrnn.get_backend("numba")
REFERENCE = fastrnn.get_backend("numpy")
PATHS = {f"{split}-{products}": dict(knobs, direct_max_rows=NEVER if products == "direct" else 0)
         for split, knobs in SPLITS.items() for products in ("packed", "direct")}
VARIANTS = variant_cases(
    "rnn_tanh-zoneout", "rnn_relu-zoneout-clip", "lstm-zoneout", "gru-zoneout",
    "gru_textbook-zoneout-clip", "lstm-layer_norm", "gru-layer_norm",
    "lstm-layer_norm-zoneout-peepholes-clip", "gru-layer_norm-zoneout-clip", "lstm-proj",
    "lstm-proj-zoneout-peepholes-clip", "lstm-layer_norm-all")
# (T, B, I, H), lengths, the directions' reverse flags: H = 33 spans panels and unit chunks;
# lengths with a full-length row; a bidirectional layer and a reverse one.
CASES = {
    "lengths-bidirectional": ((6, 5, 7, 33), True, (False, True)),
    "full-reverse": ((5, 4, 3, 9), False, (True,)),
}
GRADS = ("dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0", "dP", "dW_hr", "dg_ih", "dg_hh",
         "dg_c", "db_c")


@pytest.fixture
def knobs(monkeypatch):
    return knob_setter(monkeypatch, NUMBA, PATHS)


def variant_cell(name):
    base, variant = VARIANTS[name]
    return replace(cell_by_name(base), variant=variant)


def make(cell, shape, lengths, reverses, seed=0, dtype=np.float64):
    """A problem in float64 holding values exact in ``dtype``: per direction its params (gains
    and c's bias away from their initial 1 and 0, so that they matter) and zoneout mask; x,
    lengths, states and cotangents."""
    T, B, I, H = shape
    Hp = cell.variant.proj_size or H  # the width of h
    rng = np.random.default_rng(seed)
    plain = replace(cell, variant=Variant())
    D = len(reverses)

    def exact(a):
        return a.astype(dtype).astype(np.float64)
    dirs = []
    for reverse in reverses:
        p = rv.initial_params(plain, cell.variant, I, H, rng, scale=0.5)
        for k in ("g_ih", "g_hh", "g_c", "b_c"):
            if k in p:
                p[k] = p[k] + 0.3 * rng.standard_normal(p[k].shape)
        M = cell.variant.zoneout_mask((T, B, Hp), np.float64, True, rng)
        dirs.append({"params": {k: exact(v) for k, v in p.items() if v is not None},
                     "M": M, "reverse": reverse, "h0": exact(rng.standard_normal((B, Hp)) * 0.5),
                     "c0": exact(rng.standard_normal((B, H)) * 0.5)
                     if cell.has_cell_state else None})
    L = None
    if lengths:
        L = rng.integers(1, T + 1, B)
        L[0] = T
    # Cotangents of a quarter: with unit ones, the layer-normalised LSTM's dW_ih reaches 38,
    # and the reference backend itself, run in float32, then misses its float64 result by
    # 1.7e-5 in elements near 0.1 (float32 rounding in cancelling sums, beyond atol 1e-5).
    c = 0.25
    return {"dirs": dirs, "x": exact(rng.standard_normal((T, B, I))), "lengths": L,
            "dy": exact(c * rng.standard_normal((T, B, D * Hp))),
            "dh_n": exact(c * rng.standard_normal((D, B, Hp))),
            "dc_n": exact(c * rng.standard_normal((D, B, H))) if cell.has_cell_state else None}


def directions(pr, dtype, mask=True):
    def cast(a):
        return None if a is None else np.ascontiguousarray(a, dtype)
    out = []
    for d in pr["dirs"]:
        p = d["params"]
        out.append(Direction(cast(p["W_ih"]), cast(p["W_hh"]), cast(p["b_ih"]), cast(p["b_hh"]),
                             cast(d["h0"]), cast(d["c0"]), d["reverse"], P=cast(p.get("P")),
                             W_hr=cast(p.get("W_hr")),
                             g_ih=cast(p.get("g_ih")), g_hh=cast(p.get("g_hh")),
                             g_c=cast(p.get("g_c")), b_c=cast(p.get("b_c")),
                             zoneout_mask=cast(d["M"]) if mask else None))
    return out


def run(cell, backend, pr, dtype, training=True):
    """Forward and (training) backward of a layer through the engine: (outputs, gradients,
    what the Numba backend's forward kept)."""
    y, h_n, c_n, ctx = engine.run_forward(cell, backend, pr["x"].astype(dtype),
                                          directions(pr, dtype), pr["lengths"], training)
    out = {"y": y, "h_n": h_n} | ({} if c_n is None else {"c_n": c_n})
    if not training:
        return out, None, None
    # (backward releases each direction's saved state: keep the list as forward left it)
    kept = replace(ctx.saved, directions=list(ctx.saved.directions)) if backend is NUMBA else None

    def cot(name):
        return None if pr[name] is None else pr[name].astype(dtype)
    dx, dir_grads = engine.run_backward(ctx, cot("dy"), cot("dh_n"), cot("dc_n"))
    grads = {"dx": dx}
    for k, g in enumerate(dir_grads):
        grads |= {f"{name}[{k}]": getattr(g, name) for name in GRADS
                  if getattr(g, name) is not None}
    return out, grads, kept


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_reference(variant, dtype, case, path, knobs):
    """Outputs and every gradient (x, W_ih, W_hh, biases, h0, c0, P, the gains and c's bias)
    equal the reference backend's: float64 to 1e-10, float32 to rtol 1e-4 atol 1e-5 against
    float64 on the same inputs."""
    knobs(path)
    cell = variant_cell(variant)
    shape, lengths, reverses = CASES[case]
    pr = make(cell, shape, lengths, reverses, dtype=dtype)
    out, grads, _ = run(cell, NUMBA, pr, dtype)
    want_out, want_grads, _ = run(cell, REFERENCE, pr, np.float64)
    assert_close(out, want_out, dtype, f"{variant} forward")
    assert_close(grads, want_grads, dtype, f"{variant} backward")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_is_active(variant):
    """The comparison above is not of the plain cell twice: each variant changes y and dW_hh
    (the projection: h is proj_size wide, and W_hr gets a gradient); where a training mask is
    0 the unit keeps its previous value exactly."""
    cell = variant_cell(variant)
    T, B, I, H = 6, 5, 7, 33
    pr = make(cell, (T, B, I, H), False, (False,))
    out, grads, _ = run(cell, NUMBA, pr, np.float64)
    v = cell.variant
    if v.proj_size:
        assert out["y"].shape == (T, B, v.proj_size) and v.proj_size < H
        assert (np.abs(grads["dW_hr[0]"]) > 0).mean() > 0.99
    plain = replace(cell, variant=Variant(peepholes=v.peepholes, clip=v.clip,
                                          proj_size=v.proj_size))
    if plain == cell:
        return
    plain_pr = dict(pr, dirs=[dict(d, M=None, params={k: v for k, v in d["params"].items()
                                                      if k in ("W_ih", "W_hh", "b_ih", "b_hh",
                                                               "P", "W_hr")}) for d in pr["dirs"]])
    plain_out, plain_grads, _ = run(plain, NUMBA, plain_pr, np.float64)
    assert np.abs(out["y"] - plain_out["y"]).max() > 1e-3
    assert np.abs(grads["dW_hh[0]"] - plain_grads["dW_hh[0]"]).max() > 1e-3
    M = pr["dirs"][0]["M"]
    if M is not None:
        assert 0.1 < (M == 0).mean() < 0.5
        y = out["y"]
        h_prev = np.concatenate([pr["dirs"][0]["h0"][None], y[:-1]])
        np.testing.assert_array_equal(y[M == 0], h_prev[M == 0])
    if cell.variant.layer_norm:
        for name in ("dg_hh[0]", "dg_c[0]", "db_c[0]"):  # (a clip zeroes a few entries)
            if name in grads:
                assert (np.abs(grads[name]) > 0).mean() > 0.9, name


@pytest.mark.parametrize("variant", ["lstm-layer_norm-zoneout-peepholes-clip",
                                     "lstm-layer_norm-all", "gru-layer_norm-zoneout-clip",
                                     "rnn_tanh-zoneout",
                                     "gru_textbook-zoneout-clip"])
def test_inference_equals_training_and_chunks(variant, monkeypatch):
    """Inference (nothing kept), chunked inference (each chunk gets its window of the mask) and
    a one-step inference (never the plain step kernel) give the training outputs, here with
    the same mask; an evaluation mask (the constant 1 - p) gives the reference's outputs."""
    cell = variant_cell(variant)
    pr = make(cell, (6, 5, 7, 9), True, (False, True))
    trained, _, _ = run(cell, NUMBA, pr, np.float64)
    inferred, _, _ = run(cell, NUMBA, pr, np.float64, training=False)
    monkeypatch.setattr(NUMBA, "chunk_elements", 1)
    chunked, _, _ = run(cell, NUMBA, pr, np.float64, training=False)
    for k in trained:
        np.testing.assert_array_equal(inferred[k], trained[k], err_msg=k)
        np.testing.assert_allclose(chunked[k], trained[k], rtol=1e-12, atol=1e-12, err_msg=k)
    one = dict(pr, x=pr["x"][:1], lengths=None, dirs=[
        dict(d, M=None if d["M"] is None else d["M"][:1]) for d in pr["dirs"][:1]])
    stepped, _, _ = run(cell, NUMBA, one, np.float64, training=False)
    want, _, _ = run(cell, REFERENCE, one, np.float64, training=False)
    for k in want:
        np.testing.assert_allclose(stepped[k], want[k], **TOL[np.float64], err_msg=k)
    if cell.variant.zoneout:
        evaluation = dict(pr, dirs=[dict(d, M=np.full_like(d["M"], 1 - ZONEOUT))
                                    for d in pr["dirs"]])
        got, _, _ = run(cell, NUMBA, evaluation, np.float64, training=False)
        want, _, _ = run(cell, REFERENCE, evaluation, np.float64, training=False)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], **TOL[np.float64], err_msg=k)


def test_inputs_not_modified():
    cell = variant_cell("lstm-layer_norm-zoneout-peepholes-clip")
    pr = make(cell, (5, 4, 3, 9), True, (False, True))
    dirs = directions(pr, np.float64)
    names = ("W_ih", "W_hh", "b_ih", "b_hh", "h0", "c0", "P", "g_ih", "g_hh", "g_c", "b_c",
             "zoneout_mask")
    before = [{k: getattr(d, k).copy() for k in names} for d in dirs]
    x = pr["x"].copy()
    y, h_n, c_n, ctx = engine.run_forward(cell, NUMBA, x, dirs, pr["lengths"], True)
    engine.run_backward(ctx, np.ones_like(y), np.ones_like(h_n), np.ones_like(c_n))
    np.testing.assert_array_equal(x, pr["x"])
    for d, kept in zip(dirs, before):
        for k, v in kept.items():
            np.testing.assert_array_equal(getattr(d, k), v, err_msg=k)


@pytest.mark.parametrize("variant", ["rnn_tanh-zoneout", "lstm-zoneout", "gru-zoneout",
                                     "gru_textbook-zoneout-clip", "lstm-layer_norm",
                                     "gru-layer_norm-zoneout-clip", "lstm-proj"])
def test_saved_bytes_count_what_training_keeps(variant):
    """saved_bytes counts what a training forward of these variants keeps beyond the plain
    cell: the raw W_hh h rows of layer norm (G*H values per step and row) and its input
    side's row statistics (mean and 1/std per step and row), the RNN's h_new under zoneout
    (its hs holds the zoned-out h'), the clamp flags, the projection's narrower hs and its
    m = o tanh(c') in c's state slots; each array kept is of that size. (The zoneout mask
    is the caller's, kept by reference.)"""
    T, B, H = 5, 4, 9
    cell = variant_cell(variant)
    plain = cell_by_name(cell.name)
    _, _, kept = run(cell, NUMBA, make(cell, (T, B, 3, H), False, (False,), dtype=np.float32),
                     np.float32)
    _, _, kept_plain = run(plain, NUMBA, make(plain, (T, B, 3, H), False, (False,),
                                              dtype=np.float32), np.float32)

    def nbytes(layer):
        saved = layer.directions[0]
        stats = [a for norm in layer.input_norms if norm is not None for a in norm]
        m = saved.kept["m"] if saved.kept else None
        return sum(a.nbytes for a in [saved.hs, saved.cs, saved.gates, saved.hn, saved.inside,
                                      saved.ln_hh, m] + stats if a is not None)
    extra = saved_bytes(cell, T, B, H, 4) - saved_bytes(plain, T, B, H, 4)
    assert extra == nbytes(kept) - nbytes(kept_plain)
    adds = (cell.variant.layer_norm or cell.variant.clip is not None
            or cell.kind == "rnn" or cell.variant.proj_size > 0)  # the LSTM's and the GRUs'
    # zoneout keeps nothing more
    assert (extra > 0) == adds, extra
    if cell.variant.layer_norm:
        assert kept.directions[0].ln_hh.shape == (T * B, cell.gates * H)
    np.testing.assert_array_equal(kept.directions[0].zoneout_mask is None,
                                  not cell.variant.zoneout)


@pytest.mark.parametrize("variant", ["lstm-layer_norm", "gru-layer_norm"])
def test_layer_norm_without_biases(variant):
    """Without b_ih and b_hh (the input side's layer norm then adds no bias; db_* are None)."""
    cell = variant_cell(variant)
    pr = make(cell, (5, 4, 3, 9), True, (False, True))
    for d in pr["dirs"]:
        d["params"] = dict(d["params"], b_ih=None, b_hh=None)
    out, grads, _ = run(cell, NUMBA, pr, np.float64)
    want_out, want_grads, _ = run(cell, REFERENCE, pr, np.float64)
    assert not any(k.startswith("db_ih") or k.startswith("db_hh") for k in want_grads)
    assert_close(out, want_out, np.float64, f"{variant} forward")
    assert_close(grads, want_grads, np.float64, f"{variant} backward")

"""The Numba backend's cell variants (cells.Variant: the clip on every cell, the LSTM's
peepholes) against their NumPy reference (reference.py): outputs and every gradient,
both dtypes, every thread split and both product forms, with lengths, reverse and initial
states; the clip active on both sides of its bounds; what training keeps; and the clear error
of a backend, or a variant switch, that cannot run."""

from dataclasses import replace

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastrnn
from fastrnn import engine
from fastrnn import reference as rv
from fastrnn.backends.base import Direction
from fastrnn.cells import Cell, Variant, cell_by_name, saved_bytes
from helpers import CLIP, TOL, assert_close, variant_cases

if "numba" not in fastrnn.available_backends():
    pytest.skip("the numba backend cannot run here", allow_module_level=True)

from numba_helpers import NEVER, SPLITS, knob_setter  # noqa: E402

BACKEND = fastrnn.get_backend("numba")
PATHS = {f"{split}-{products}": dict(knobs, direct_max_rows=NEVER if products == "direct" else 0)
         for split, knobs in SPLITS.items() for products in ("packed", "direct")}
VARIANTS = variant_cases(
    "rnn_tanh-clip", "rnn_relu-clip", "lstm-clip", "lstm-peepholes", "lstm-peepholes-clip",
    "gru-clip", "gru_textbook-clip")
# (T, B, I, H), lengths, reverse: odd sizes (H = 33 spans panels and unit chunks), lengths with
# a full-length row, both directions; initial states always given.
CASES = {
    "lengths-reverse": ((6, 5, 7, 33), True, True),
    "full": ((5, 4, 3, 9), False, False),
}


@pytest.fixture
def knobs(monkeypatch):
    return knob_setter(monkeypatch, BACKEND, PATHS)


def variant_cell(name, variant):
    return replace(cell_by_name(name), variant=variant)


def make(cell, shape, lengths, seed=0):
    """A problem in float64 for the reference: params, x, h0, c0, lengths, and cotangents."""
    T, B, I, H = shape
    rng = np.random.default_rng(seed)
    plain = replace(cell, variant=Variant())
    pr = {"params": rv.initial_params(plain, cell.variant, I, H, rng, scale=0.5),
          "x": rng.standard_normal((T, B, I)), "h0": rng.standard_normal((B, H)) * 0.5,
          "c0": rng.standard_normal((B, H)) * 0.5 if cell.has_cell_state else None,
          "lengths": None, "dy": rng.standard_normal((T, B, H)),
          "dh_n": rng.standard_normal((B, H)),
          "dc_n": rng.standard_normal((B, H)) if cell.has_cell_state else None}
    if lengths:
        L = rng.integers(1, T + 1, B)
        L[0] = T
        pr["lengths"] = L
    return pr


def reference(cell, pr, reverse):
    """(outputs, gradients) of the reference, as dicts named like ``numba_run``'s."""
    y, h_n, c_n, saved = rv.forward(replace(cell, variant=Variant()), cell.variant, pr["x"],
                                    pr["params"], pr["h0"], pr["c0"], lengths=pr["lengths"],
                                    reverse=reverse)
    g = rv.backward(saved, pr["dy"], pr["dh_n"], pr["dc_n"])
    out = {"y": y, "h_n": h_n, "c_n": c_n}
    grads = {k: g[k] for k in ("dx", "dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0", "dP")
             if g.get(k) is not None}
    return {k: v for k, v in out.items() if v is not None}, grads


def direction(pr, dtype, reverse):
    def cast(a):
        return None if a is None else np.ascontiguousarray(a, dtype)
    p = pr["params"]
    return Direction(cast(p["W_ih"]), cast(p["W_hh"]), cast(p["b_ih"]), cast(p["b_hh"]),
                     cast(pr["h0"]), cast(pr["c0"]), reverse, cast(p.get("P")))


def numba_run(cell, pr, dtype, reverse, training=True):
    """Forward (through the engine, which checks the variant) and backward on the Numba
    backend: (outputs, gradients, the direction's saved state)."""
    d = direction(pr, dtype, reverse)
    y, h_n, c_n, ctx = engine.run_forward(cell, BACKEND, pr["x"].astype(dtype), [d],
                                          pr["lengths"], training)
    out = {"y": y, "h_n": h_n[0]} | ({} if c_n is None else {"c_n": c_n[0]})
    if not training:
        return out, None, None
    kept = ctx.saved.directions[0]

    def cot(name):
        return None if pr[name] is None else pr[name].astype(dtype)[None]
    dx, (g,) = engine.run_backward(ctx, pr["dy"].astype(dtype), cot("dh_n"), cot("dc_n"))
    grads = {"dx": dx, "dW_ih": g.dW_ih, "dW_hh": g.dW_hh, "db_ih": g.db_ih, "db_hh": g.db_hh,
             "dh0": g.dh0, "dc0": g.dc0, "dP": g.dP}
    return out, {k: v for k, v in grads.items() if v is not None}, kept


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_reference(variant, dtype, case, path, knobs):
    """Outputs and every gradient (x, W_ih, W_hh, biases, h0, c0, P) equal the reference's:
    float64 to 1e-10, float32 to rtol 1e-4 atol 1e-5 (float32 inputs, float64 reference)."""
    knobs(path)
    cell = variant_cell(*VARIANTS[variant])
    shape, lengths, reverse = CASES[case]
    pr = make(cell, shape, lengths)
    if dtype == np.float32:  # the reference sees the inputs the float32 run sees
        pr = {k: v if not isinstance(v, np.ndarray) or v.dtype.kind != "f"
              else v.astype(np.float32).astype(np.float64) for k, v in pr.items()}
        pr["params"] = {k: None if v is None else v.astype(np.float32).astype(np.float64)
                        for k, v in pr["params"].items()}
    out, grads, _ = numba_run(cell, pr, dtype, reverse)
    want_out, want_grads = reference(cell, pr, reverse)
    assert_close(out, want_out, dtype, f"{variant} forward")
    assert_close(grads, want_grads, dtype, f"{variant} backward")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_is_active(variant):
    """The comparison above is not of the plain cell twice: the clip clamps some gate inputs
    and lets others through (the kept flags hold both), and the clip and the peepholes change
    the outputs and the gradients."""
    name, v = VARIANTS[variant]
    cell = variant_cell(name, v)
    pr = make(cell, (6, 5, 7, 33), True)
    out, grads, kept = numba_run(cell, pr, np.float64, True)
    plain_pr = dict(pr, params={k: a for k, a in pr["params"].items() if k != "P"})
    plain_out, plain_grads, _ = numba_run(cell_by_name(name), plain_pr, np.float64, True)
    assert np.abs(out["y"] - plain_out["y"]).max() > 1e-3
    assert np.abs(grads["dW_hh"] - plain_grads["dW_hh"]).max() > 1e-3
    if v.clip is not None:
        R = kept.inside.shape[0]
        assert kept.inside.shape == (R, cell.gates * 33) and kept.inside.dtype == np.uint8
        for j in range(cell.gates):  # every gate is clamped somewhere, and not everywhere
            share = kept.inside[:, j * 33:(j + 1) * 33].mean()
            assert 0 < share < 1, (j, share)
    else:
        assert kept.inside is None
    if v.peepholes:
        assert np.all(np.abs(grads["dP"]) > 0)


@pytest.mark.parametrize("variant", ["lstm-peepholes-clip", "gru-clip", "rnn_relu-clip"])
def test_inference_equals_training_and_chunks(variant, monkeypatch):
    """Inference (no clamp flags kept), chunked inference (the peepholes passed to every
    chunk) and a one-step inference (never the plain step kernel) give the training outputs."""
    cell = variant_cell(*VARIANTS[variant])
    pr = make(cell, (6, 5, 7, 9), True)
    trained, _, _ = numba_run(cell, pr, np.float64, True)
    inferred, _, _ = numba_run(cell, pr, np.float64, True, training=False)
    monkeypatch.setattr(BACKEND, "chunk_elements", 1)
    chunked, _, _ = numba_run(cell, pr, np.float64, True, training=False)
    for k in trained:
        np.testing.assert_array_equal(inferred[k], trained[k], err_msg=k)
        np.testing.assert_allclose(chunked[k], trained[k], rtol=1e-12, atol=1e-12, err_msg=k)
    one = dict(pr, x=pr["x"][:1], lengths=None)
    stepped, _, _ = numba_run(cell, one, np.float64, False, training=False)
    want, _ = reference(cell, dict(one, dy=pr["dy"][:1]), False)
    for k in want:
        np.testing.assert_allclose(stepped[k], want[k], **TOL[np.float64], err_msg=k)


def test_inputs_not_modified():
    cell = variant_cell(*VARIANTS["lstm-peepholes-clip"])
    pr = make(cell, (5, 4, 3, 9), True)
    d = direction(pr, np.float64, False)
    before = {k: getattr(d, k).copy() for k in ("W_ih", "W_hh", "b_ih", "b_hh", "h0", "c0", "P")}
    x = pr["x"].copy()
    y, h_n, c_n, ctx = engine.run_forward(cell, BACKEND, x, [d], pr["lengths"], True)
    engine.run_backward(ctx, np.ones_like(y), np.ones_like(h_n), np.ones_like(c_n))
    np.testing.assert_array_equal(x, pr["x"])
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(d, k), v, err_msg=k)


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "gru", "gru_textbook"])
def test_saved_bytes_count_the_clamp_flags(name):
    """saved_bytes adds one byte per gate input of a clipped cell, what forward keeps."""
    T, B, H = 5, 4, 9
    cell = variant_cell(name, Variant(clip=CLIP))
    pr = make(cell, (T, B, 3, H), False)
    _, _, kept = numba_run(cell, pr, np.float32, False)
    assert kept.inside.nbytes == T * B * cell.gates * H
    assert (saved_bytes(cell, T, B, H, 4) - saved_bytes(cell_by_name(name), T, B, H, 4)
            == kept.inside.nbytes)


def test_plain_variant_is_the_plain_cell():
    """Variant() changes nothing: the same Cell (equal, same hash) and no switches."""
    for name in ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_textbook"):
        cell = cell_by_name(name)
        assert replace(cell, variant=Variant()) == cell
        assert hash(replace(cell, variant=Variant())) == hash(cell)
        assert cell.variant.switches == ()
    assert Variant(peepholes=True, clip=0.5).switches == ("peepholes", "clip")


@pytest.mark.parametrize("cell_kwargs, match", [
    (dict(kind="rnn", variant=Variant(peepholes=True)), "peepholes"),
    (dict(kind="gru", linear_before_reset=False, variant=Variant(layer_norm=True)),
     "layer_norm"),
    (dict(kind="lstm", variant=Variant(clip=-1.0)), "clip"),
])
def test_cell_rejects_a_switch_it_lacks(cell_kwargs, match):
    with pytest.raises(ValueError, match=match):
        Cell(**cell_kwargs)


def test_cell_variant_must_be_a_variant():
    with pytest.raises(TypeError, match="variant must be a cells.Variant"):
        Cell("lstm", variant={"peepholes": True})


@pytest.mark.parametrize("backend, name, variant, match", [
    ("partial", "lstm", Variant(proj_size=4), "proj_size=4"),
    ("partial", "gru", Variant(layer_norm=True), "layer_norm=True"),
    ("partial", "rnn_tanh", Variant(zoneout=0.1), "zoneout=0.1"),
    ("partial", "lstm", Variant(peepholes=True), "peepholes=True"),
    ("partial", "gru", Variant(clip=1.0), "clip=1.0"),
])
def test_backend_refuses_a_variant_it_cannot_run(backend, name, variant, match):
    """A variant switch the backend does not run is an error naming it, before anything runs
    (never the plain cell), in training and in a one-step inference."""
    chosen = fastrnn.get_backend(backend) if backend != "partial" else type(
        "Partial", (type(fastrnn.get_backend("numba")),),
        {"name": "partial", "variant_switches": frozenset()})()
    cell = variant_cell(name, variant)
    H = 9
    pr = make(replace(cell, variant=Variant(peepholes=variant.peepholes)), (1, 2, 3, H), False)
    d = direction(pr, np.float64, False)
    for training in (True, False):
        with pytest.raises(NotImplementedError, match=f"{backend!r} backend cannot run {name} "
                                                      f"with {match}"):
            engine.run_forward(cell, chosen, pr["x"], [d], None, training)


# ----------------------------------------------------------------------------------------------
# The functional API: peepholes= and clip= (lstm_forward), clip= (rnn_forward, gru_forward)


def api_run(cell, pr, dtype, reverse, backend="numba"):
    """The cell's *_forward / *_backward with the variant's arguments: (outputs, gradients)."""
    p = {k: None if v is None else v.astype(dtype) for k, v in pr["params"].items()}
    kwargs = dict(lengths=pr["lengths"], reverse=reverse, backend=backend, clip=cell.variant.clip)
    args = (pr["x"].astype(dtype), p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"],
            pr["h0"].astype(dtype))
    if cell.kind == "lstm":
        res = fastrnn.lstm_forward(*args, pr["c0"].astype(dtype), peepholes=p.get("P"),
                                   **kwargs)
        g = fastrnn.lstm_backward(res.ctx, pr["dy"].astype(dtype), pr["dh_n"].astype(dtype),
                                  pr["dc_n"].astype(dtype))
        out = {"y": res.y, "h_n": res.h_n, "c_n": res.c_n}
    else:
        forward, backward, option = {
            "rnn": (fastrnn.rnn_forward, fastrnn.rnn_backward, "nonlinearity"),
            "gru": (fastrnn.gru_forward, fastrnn.gru_backward, "linear_before_reset")}[cell.kind]
        res = forward(*args, **{option: cell.options[option]}, **kwargs)
        g = backward(res.ctx, pr["dy"].astype(dtype), pr["dh_n"].astype(dtype))
        out = {"y": res.y, "h_n": res.h_n}
    grads = {"dx": g.dx, "dW_ih": g.dW_ih, "dW_hh": g.dW_hh, "db_ih": g.db_ih,
             "db_hh": g.db_hh, "dh0": g.dh0, "dc0": g.dc0, "dP": g.dP}
    return out, {k: v for k, v in grads.items() if v is not None}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_api_matches_reference(variant, dtype):
    """The functional API routes peepholes= and clip= to the Numba backend: outputs and every
    gradient, dP among them, equal the reference's (lengths, reverse, initial states)."""
    cell = variant_cell(*VARIANTS[variant])
    pr = make(cell, (6, 5, 7, 33), True, seed=3)
    pr = {k: v.astype(dtype).astype(np.float64) if isinstance(v, np.ndarray)
          and v.dtype.kind == "f" else v for k, v in pr.items()}
    pr["params"] = {k: None if v is None else v.astype(dtype).astype(np.float64)
                    for k, v in pr["params"].items()}
    out, grads = api_run(cell, pr, dtype, True)
    want_out, want_grads = reference(cell, pr, True)
    assert_close(out, want_out, dtype, f"{variant} forward")
    assert_close(grads, want_grads, dtype, f"{variant} backward")


def test_api_plain_calls_have_no_dP_and_empty_calls_give_zero_dP():
    cell = variant_cell(*VARIANTS["lstm-peepholes"])
    pr = make(cell, (4, 3, 5, 6), False)
    p = pr["params"]
    args = (pr["x"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])
    assert fastrnn.lstm_backward(fastrnn.lstm_forward(*args, backend="numba").ctx).dP is None
    g = fastrnn.lstm_backward(fastrnn.lstm_forward(pr["x"][:0], *args[1:], peepholes=p["P"],
                                                   backend="numba").ctx)
    assert g.dP.shape == (3, 6) and not g.dP.any()


@pytest.mark.parametrize("change, exc, words", [
    (dict(peepholes=np.zeros((4, 6))), ValueError, r"peepholes must have shape \(3, H\)"),
    (dict(peepholes=np.zeros((3, 6), np.float32)), TypeError, "peepholes is float32"),
    (dict(clip=0.0), ValueError, "clip must be None or a positive finite number"),
    (dict(clip=-1), ValueError, "clip must be None or a positive finite number"),
    (dict(clip=np.inf), ValueError, "clip must be None or a positive finite number"),
    (dict(clip="1"), TypeError, "clip must be None or a positive number, got str"),
    (dict(clip=True), TypeError, "clip must be None or a positive number, got bool"),
])
def test_api_bad_variant_arguments_name_them(change, exc, words):
    pr = make(Cell("lstm"), (4, 3, 5, 6), False)
    p = pr["params"]
    kwargs = dict(backend="numba") | change
    with pytest.raises(exc, match=words):
        fastrnn.lstm_forward(pr["x"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], **kwargs)


@pytest.mark.parametrize("forward", ["rnn_forward", "gru_forward"])
def test_api_clip_on_the_reference_backend_matches_numba(forward):
    """The reference backend runs variant cells (through fastrnn.reference): the same
    numbers as the Numba kernels, forward and backward."""
    cell = Cell("rnn") if forward == "rnn_forward" else Cell("gru")
    pr = make(cell, (4, 3, 5, 6), False)
    p = pr["params"]
    results = [getattr(fastrnn, forward)(pr["x"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"],
                                         clip=0.5, backend=name, training=True)
               for name in ("numpy", "numba")]
    backward = getattr(fastrnn, forward.replace("forward", "backward"))
    grads = [backward(r.ctx, dy=np.ones_like(r.y)) for r in results]
    assert_allclose(results[0].y, results[1].y, rtol=1e-10, atol=1e-10)
    assert not np.allclose(results[0].y, getattr(fastrnn, forward)(
        pr["x"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], backend="numpy").y)
    for name in ("dx", "dW_ih", "dW_hh", "db_ih", "db_hh", "dh0"):
        assert_allclose(getattr(grads[0], name), getattr(grads[1], name), rtol=1e-10,
                        atol=1e-10, err_msg=name)

"""The NumPy reference of the cell variants (fastrnn/reference.py, cells.Variant): every
gradient against central finite differences; the projection against torch.nn.LSTM(proj_size);
layer norm against a slow torch transcription of its equations; peepholes against
onnx.reference and, with clip, against ONNX Runtime; zoneout against its formula."""

from dataclasses import replace

import numpy as np
import pytest

from fastrnn import reference as rv
from fastrnn.cells import ALL_CELLS, LN_EPS, Cell, Variant, cell_by_name
from fastrnn.tolerances import FD_RTOL
from helpers import TOL

LSTM, GRU = Cell("lstm"), Cell("gru")


def make_variant_problem(cell, variant, T, B, I, H, seed, lengths=False, bias=True,
                         dtype=np.float64, training=True):
    """Inputs for rv.forward: x, params (gains and b_c drawn near 1 and 0, so that their
    gradients are generic), h0 (B, P), c0 (B, H), lengths, zoneout_mask."""
    rng = np.random.default_rng(seed)
    params = rv.initial_params(cell, variant, I, H, rng, dtype, bias=bias, scale=0.5)
    for name in params:
        if name.startswith("g_") or name == "b_c":
            params[name] = params[name] + rng.uniform(-0.3, 0.3, params[name].shape)
    P = variant.hidden_size(H)
    problem = {"x": rng.standard_normal((T, B, I)).astype(dtype), "params": params,
               "h0": (rng.standard_normal((B, P)) * 0.5).astype(dtype),
               "c0": (rng.standard_normal((B, H)) * 0.5).astype(dtype)
               if cell.has_cell_state else None,
               "lengths": None, "zoneout_mask": None}
    if lengths:
        L = rng.integers(1, T + 1, B)
        L[0] = T
        problem["lengths"] = L
    problem["zoneout_mask"] = variant.zoneout_mask((T, B, P), dtype, training, rng)
    return problem


def forward(cell, variant, problem, reverse=False, training=True):
    pr = problem
    return rv.forward(cell, variant, pr["x"], pr["params"], pr["h0"], pr["c0"],
                      lengths=pr["lengths"], reverse=reverse, zoneout_mask=pr["zoneout_mask"],
                      training=training)


def cotangents(cell, variant, problem, seed):
    T, B, _ = problem["x"].shape
    H = problem["params"]["W_ih"].shape[0] // cell.gates
    rng = np.random.default_rng(seed)
    cot = {"dy": rng.standard_normal((T, B, variant.hidden_size(H))),
           "dh_n": rng.standard_normal((B, variant.hidden_size(H)))}
    cot["dc_n"] = rng.standard_normal((B, H)) if cell.has_cell_state else None
    return cot


def loss(cell, variant, problem, cot, reverse):
    y, h_n, c_n, _ = forward(cell, variant, problem, reverse, training=False)
    total = np.sum(y * cot["dy"]) + np.sum(h_n * cot["dh_n"])
    return total + (np.sum(c_n * cot["dc_n"]) if c_n is not None else 0)


def inputs_of(problem):
    """(gradient name, array) of everything differentiable: x, states, each parameter."""
    named = [("dx", problem["x"]), ("dh0", problem["h0"]), ("dc0", problem["c0"])]
    named += [(f"d{n}", a) for n, a in problem["params"].items()]
    return [(n, a) for n, a in named if a is not None]


def finite_difference(cell, variant, problem, cot, reverse, target, eps=1e-6):
    fd = np.zeros_like(target)
    for idx in np.ndindex(target.shape):
        for sign in (1, -1):
            saved = target[idx]
            target[idx] = saved + sign * eps  # restored below
            fd[idx] += sign * loss(cell, variant, problem, cot, reverse)
            target[idx] = saved
    return fd / (2 * eps)


FD_CASES = {
    "lstm_proj": (LSTM, Variant(proj_size=2)),
    "lstm_layer_norm": (LSTM, Variant(layer_norm=True)),
    "gru_layer_norm": (GRU, Variant(layer_norm=True)),
    "lstm_peepholes": (LSTM, Variant(peepholes=True)),
    "lstm_peepholes_clip": (LSTM, Variant(peepholes=True, clip=0.6)),
    "rnn_tanh_clip": (cell_by_name("rnn_tanh"), Variant(clip=0.6)),
    "rnn_relu_clip": (cell_by_name("rnn_relu"), Variant(clip=0.6)),
    "gru_clip": (GRU, Variant(clip=0.6)),
    "gru_textbook_clip": (cell_by_name("gru_textbook"), Variant(clip=0.6)),
    "rnn_zoneout": (cell_by_name("rnn_tanh"), Variant(zoneout=0.3)),
    "lstm_zoneout": (LSTM, Variant(zoneout=0.3)),
    "gru_zoneout": (GRU, Variant(zoneout=0.3)),
    "gru_all": (GRU, Variant(layer_norm=True, clip=0.6, zoneout=0.3)),
    "lstm_all": (LSTM, Variant(proj_size=3, layer_norm=True, peepholes=True, clip=0.6,
                               zoneout=0.3)),
}


@pytest.mark.parametrize("case", list(FD_CASES))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_variant_gradients_match_finite_differences(case, reverse, lengths):
    cell, variant = FD_CASES[case]
    problem = make_variant_problem(cell, variant, T=4, B=3, I=3, H=4, seed=5, lengths=lengths)
    cot = cotangents(cell, variant, problem, seed=6)
    saved = forward(cell, variant, problem, reverse)[3]
    grads = rv.backward(saved, cot["dy"], cot["dh_n"], cot["dc_n"])
    checked = []
    for name, target in inputs_of(problem):
        fd = finite_difference(cell, variant, problem, cot, reverse, target)
        analytic = grads[name]
        rel = np.linalg.norm(fd - analytic) / max(np.linalg.norm(fd), np.linalg.norm(analytic))
        assert rel <= FD_RTOL, f"{case} {name}: relative error {rel:.2e}"
        checked.append(name)
    expected = {"dx", "dh0"} | {f"d{n}" for n in problem["params"]}
    assert set(checked) == expected | ({"dc0"} if cell.has_cell_state else set())


@pytest.mark.parametrize("case", [c for c in FD_CASES if FD_CASES[c][1].clip])
def test_clip_bounds_some_gates_in_the_gradient_cases(case):
    """The clip of the cases above changes the outputs and the gradients (some gate inputs lie
    outside the bounds) without zeroing the gradients (some lie inside), so the finite
    differences above see both sides of the clamp."""
    cell, variant = FD_CASES[case]
    results = []
    for v in (variant, replace(variant, clip=None)):
        problem = make_variant_problem(cell, v, T=4, B=3, I=3, H=4, seed=5)
        cot = cotangents(cell, v, problem, seed=6)
        y, _, _, saved = forward(cell, v, problem)
        results.append((y, rv.backward(saved, cot["dy"], cot["dh_n"], cot["dc_n"])["dW_ih"]))
    (y_clip, dW_clip), (y_free, dW_free) = results
    assert np.abs(y_clip - y_free).max() > 1e-3
    assert np.abs(dW_clip - dW_free).max() > 1e-3
    assert np.linalg.norm(dW_clip) > 0.1 * np.linalg.norm(dW_free)


def test_padding_never_enters():
    """Invalid steps are never computed: NaN padding leaves outputs and gradients unchanged."""
    variant = Variant(proj_size=2, layer_norm=True, peepholes=True, clip=0.6, zoneout=0.3)
    problem = make_variant_problem(LSTM, variant, T=5, B=3, I=3, H=4, seed=1, lengths=True)
    problem["lengths"] = np.array([5, 2, 3])
    padded = {**problem, "x": problem["x"].copy()}
    for b, L in enumerate(problem["lengths"]):
        padded["x"][L:, b] = np.nan
    cot = cotangents(LSTM, variant, problem, seed=2)
    results = []
    for pr in (problem, padded):
        y, h_n, c_n, saved = forward(LSTM, variant, pr, reverse=True)
        results.append((y, h_n, c_n, rv.backward(saved, cot["dy"], cot["dh_n"], cot["dc_n"])))
    (y0, h0, c0, g0), (y1, h1, c1, g1) = results
    assert np.isfinite(y1).all() and np.all(y1[3:, 1] == 0)
    for a, b in [(y0, y1), (h0, h1), (c0, c1)] + [(g0[k], g1[k]) for k in g0 if k != "dx"]:
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.nan_to_num(g1["dx"], nan=-1), g0["dx"])


def test_inputs_are_not_modified():
    variant = Variant(proj_size=2, layer_norm=True, peepholes=True, clip=0.6, zoneout=0.3)
    problem = make_variant_problem(LSTM, variant, T=4, B=3, I=3, H=4, seed=3, lengths=True)
    cot = cotangents(LSTM, variant, problem, seed=4)
    before = [a.copy() for _, a in inputs_of(problem)] + [
        a.copy() for a in (problem["zoneout_mask"], problem["lengths"], *cot.values())]
    saved = forward(LSTM, variant, problem, reverse=True)[3]
    rv.backward(saved, cot["dy"], cot["dh_n"], cot["dc_n"])
    after = [a for _, a in inputs_of(problem)] + [
        problem["zoneout_mask"], problem["lengths"], *cot.values()]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# Projection against torch.nn.LSTM(proj_size=...)


def _torch_proj_run(problem, cot, reverse):
    """Outputs and gradients of the same direction in torch.nn.LSTM(proj_size): reverse is the
    reverse half of a bidirectional layer (the forward half zeros), lengths packed."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    p, x = problem["params"], problem["x"]
    T, B, I = x.shape
    P, H = p["W_hr"].shape
    D = 2 if reverse else 1
    mod = torch.nn.LSTM(I, H, proj_size=P, bidirectional=reverse, dtype=torch.float64)
    suffix = "_reverse" if reverse else ""
    with torch.no_grad():
        for name, key in (("weight_ih", "W_ih"), ("weight_hh", "W_hh"), ("bias_ih", "b_ih"),
                          ("bias_hh", "b_hh"), ("weight_hr", "W_hr")):
            getattr(mod, f"{name}_l0{suffix}").copy_(torch.from_numpy(p[key]))
            if reverse:
                getattr(mod, f"{name}_l0").zero_()
    xt = torch.from_numpy(x.copy()).requires_grad_()
    h0 = np.stack([np.zeros_like(problem["h0"]), problem["h0"]][-D:])
    c0 = np.stack([np.zeros_like(problem["c0"]), problem["c0"]][-D:])
    h0t, c0t = (torch.from_numpy(s).requires_grad_() for s in (h0, c0))
    inp = xt if problem["lengths"] is None else pack_padded_sequence(
        xt, torch.as_tensor(problem["lengths"]), enforce_sorted=False)
    out, (h_n, c_n) = mod(inp, (h0t, c0t))
    if problem["lengths"] is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    y = out[..., (D - 1) * P:]
    total = ((y * torch.from_numpy(cot["dy"])).sum() + (h_n[D - 1] * torch.from_numpy(
        cot["dh_n"])).sum() + (c_n[D - 1] * torch.from_numpy(cot["dc_n"])).sum())
    total.backward()
    grads = {f"d{key}": getattr(mod, f"{name}_l0{suffix}").grad.numpy() for name, key in (
        ("weight_ih", "W_ih"), ("weight_hh", "W_hh"), ("bias_ih", "b_ih"), ("bias_hh", "b_hh"),
        ("weight_hr", "W_hr"))}
    grads.update(dx=xt.grad.numpy(), dh0=h0t.grad[D - 1].numpy(), dc0=c0t.grad[D - 1].numpy())
    outs = [t.detach().numpy() for t in (y, h_n[D - 1], c_n[D - 1])]
    return outs, grads


@pytest.mark.torch
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_projection_matches_torch(reverse, lengths):
    pytest.importorskip("torch", reason="the PyTorch cross-checks need torch (test extra)")
    variant = Variant(proj_size=3)
    problem = make_variant_problem(LSTM, variant, T=6, B=4, I=5, H=7, seed=11, lengths=lengths)
    cot = cotangents(LSTM, variant, problem, seed=12)
    y, h_n, c_n, saved = forward(LSTM, variant, problem, reverse)
    assert y.shape == (6, 4, 3) and h_n.shape == (4, 3) and c_n.shape == (4, 7)
    grads = rv.backward(saved, cot["dy"], cot["dh_n"], cot["dc_n"])
    t_outs, t_grads = _torch_proj_run(problem, cot, reverse)
    for name, ours, theirs in zip(("y", "h_n", "c_n"), (y, h_n, c_n), t_outs):
        np.testing.assert_allclose(ours, theirs, err_msg=name, **TOL[np.float64])
    assert set(t_grads) <= set(grads)
    for name, expected in t_grads.items():
        np.testing.assert_allclose(grads[name], expected, err_msg=name, **TOL[np.float64])


# ----------------------------------------------------------------------------------------------
# Layer norm against a slow torch transcription of its equations (torch autograd's gradients)


def _torch_layer_norm_loop(cell, problem, cot, reverse):
    import torch

    def LN(v):  # over the whole row, biased variance, eps as the reference
        mean = v.mean(dim=1, keepdim=True)
        var = ((v - mean) ** 2).mean(dim=1, keepdim=True)
        return (v - mean) / torch.sqrt(var + LN_EPS)

    leaves = {name: torch.tensor(a, requires_grad=True) for name, a in inputs_of(problem)}
    p = {name[1:]: a for name, a in leaves.items()}
    x, h, c = p["x"], p["h0"], p.get("c0")
    T, B = x.shape[:2]
    L = torch.full((B,), T) if problem["lengths"] is None else torch.as_tensor(
        problem["lengths"])
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        valid = (t < L)[:, None]
        gx = LN(x[t] @ p["W_ih"].T) * p["g_ih"] + p["b_ih"]
        gh = LN(h @ p["W_hh"].T) * p["g_hh"] + p["b_hh"]
        if cell.kind == "lstm":
            a_i, a_f, a_g, a_o = (gx + gh).chunk(4, dim=1)
            c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
            h_new = torch.sigmoid(a_o) * torch.tanh(LN(c_new) * p["g_c"] + p["b_c"])
            c = torch.where(valid, c_new, c)
        else:
            gx_r, gx_z, gx_n = gx.chunk(3, dim=1)
            gh_r, gh_z, gh_n = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
            n = torch.tanh(gx_n + r * gh_n)
            h_new = (1 - z) * n + z * h
        h = torch.where(valid, h_new, h)
        ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
    y = torch.stack(ys)
    total = (y * torch.from_numpy(cot["dy"])).sum() + (h * torch.from_numpy(cot["dh_n"])).sum()
    if c is not None:
        total = total + (c * torch.from_numpy(cot["dc_n"])).sum()
    total.backward()
    outs = [y.detach().numpy(), h.detach().numpy()] + ([c.detach().numpy()] if c is not None
                                                       else [None])
    return outs, {name: a.grad.numpy() for name, a in leaves.items()}


@pytest.mark.torch
@pytest.mark.parametrize("cell", [LSTM, GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_layer_norm_matches_torch_transcription(cell, reverse, lengths):
    pytest.importorskip("torch", reason="the PyTorch cross-checks need torch (test extra)")
    variant = Variant(layer_norm=True)
    problem = make_variant_problem(cell, variant, T=6, B=4, I=5, H=7, seed=21, lengths=lengths)
    cot = cotangents(cell, variant, problem, seed=22)
    y, h_n, c_n, saved = forward(cell, variant, problem, reverse)
    grads = rv.backward(saved, cot["dy"], cot["dh_n"], cot["dc_n"])
    (t_y, t_h, t_c), t_grads = _torch_layer_norm_loop(cell, problem, cot, reverse)
    for name, ours, theirs in (("y", y, t_y), ("h_n", h_n, t_h), ("c_n", c_n, t_c)):
        if theirs is not None:
            np.testing.assert_allclose(ours, theirs, err_msg=name, **TOL[np.float64])
    assert set(t_grads) == {k for k, v in grads.items() if v is not None}
    for name, expected in t_grads.items():
        np.testing.assert_allclose(grads[name], expected, err_msg=name, **TOL[np.float64])


def test_layer_norm_starts_as_layer_norm_only():
    """With its initial parameters (gains 1, b_c 0) a layer-normalised cell differs from the
    plain one, and the normalisation removes a common offset of W_ih's rows' products."""
    variant = Variant(layer_norm=True)
    rng = np.random.default_rng(4)
    params = rv.initial_params(LSTM, variant, 3, 5, rng)
    assert np.all(params["g_ih"] == 1) and np.all(params["g_c"] == 1)
    assert np.all(params["b_c"] == 0)
    x = rng.standard_normal((4, 2, 3))
    y, _, _, _ = rv.forward(LSTM, variant, x, params, training=False)
    plain = {k: params[k] for k in ("W_ih", "W_hh", "b_ih", "b_hh")}
    y_plain, _, _, _ = rv.forward(LSTM, Variant(), x, plain, training=False)
    assert np.abs(y - y_plain).max() > 1e-2
    scaled = {**params, "W_ih": params["W_ih"] * 3.0}  # LN(3 W x) = LN(W x) up to eps
    y_scaled, _, _, _ = rv.forward(LSTM, variant, x, scaled, training=False)
    np.testing.assert_allclose(y_scaled, y, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Peepholes and clip against ONNX (onnx.reference ignores clip; ONNX Runtime implements it)

ONNX_OP = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
ONNX_GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}  # ONNX: iofc, zrh


def _onnx_inputs(cell, problem):
    """The problem's direction as ONNX inputs: gates reordered, biases [Wb, Rb], a leading
    num_directions axis of 1, peepholes in ONNX's order p_i, p_o, p_f."""
    p = problem["params"]
    H = p["W_ih"].shape[0] // cell.gates
    order = ONNX_GATE_ORDER[cell.kind]

    def gates(a):
        return np.concatenate([a[k * H:(k + 1) * H] for k in order])

    feeds = {"X": problem["x"], "W": gates(p["W_ih"])[None], "R": gates(p["W_hh"])[None],
             "B": np.concatenate([gates(p["b_ih"]), gates(p["b_hh"])])[None],
             "initial_h": problem["h0"][None]}
    if problem["lengths"] is not None:
        feeds["sequence_lens"] = problem["lengths"].astype(np.int32)
    if cell.has_cell_state:
        feeds["initial_c"] = problem["c0"][None]
        if "P" in p:
            feeds["P"] = p["P"][[0, 2, 1]].reshape(1, 3 * H)
    return feeds


def _onnx_model(cell, feeds, H, clip, reverse):
    import onnx
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(feeds["X"].dtype)
    T, B, _ = feeds["X"].shape
    slots = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    slots = slots[:6] if not cell.has_cell_state else slots
    names = [s if s in feeds else "" for s in slots]
    while names[-1] == "":
        names.pop()
    attrs = {"hidden_size": H, "direction": "reverse" if reverse else "forward"}
    if clip is not None:
        attrs["clip"] = float(clip)
    if cell.kind == "rnn":
        attrs["activations"] = ["Tanh" if cell.nonlinearity == "tanh" else "Relu"]
    if cell.kind == "gru":
        attrs["linear_before_reset"] = int(cell.linear_before_reset)
    outputs = ["Y", "Y_h"] + (["Y_c"] if cell.has_cell_state else [])
    node = helper.make_node(ONNX_OP[cell.kind], names, outputs, **attrs)
    graph = helper.make_graph(
        [node], "variant",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in feeds.items()],
        [helper.make_tensor_value_info(n, elem, shape) for n, shape in zip(
            outputs, [(T, 1, B, H), (1, B, H), (1, B, H)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _onnx_outputs(results, cell):
    """(y (T, B, H), h_n, c_n or None) from ONNX's Y (T, 1, B, H), Y_h (1, B, H)..."""
    y, h_n = results[0][:, 0], results[1][0]
    return y, h_n, results[2][0] if cell.has_cell_state else None


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_peepholes_match_onnx_reference(reverse):
    pytest.importorskip("onnx", reason="the ONNX cross-checks need onnx (test extra)")
    from onnx.reference import ReferenceEvaluator

    variant = Variant(peepholes=True)
    problem = make_variant_problem(LSTM, variant, T=6, B=4, I=5, H=7, seed=31)
    feeds = _onnx_inputs(LSTM, problem)
    evaluator = ReferenceEvaluator(_onnx_model(LSTM, feeds, 7, None, reverse))
    expected = _onnx_outputs(evaluator.run(None, feeds), LSTM)
    ours = forward(LSTM, variant, problem, reverse, training=False)[:3]
    without = forward(LSTM, Variant(), {**problem, "params": {
        k: v for k, v in problem["params"].items() if k != "P"}}, reverse, training=False)[0]
    assert np.abs(ours[0] - without).max() > 1e-2  # the peepholes matter here
    for name, a, b in zip(("y", "h_n", "c_n"), ours, expected):
        np.testing.assert_allclose(a, b, err_msg=name, **TOL[np.float64])


CLIP_CASES = {
    "lstm_peepholes": (LSTM, Variant(peepholes=True, clip=0.6)),
    "lstm": (LSTM, Variant(clip=0.6)),
    "rnn_tanh": (cell_by_name("rnn_tanh"), Variant(clip=0.6)),
    "rnn_relu": (cell_by_name("rnn_relu"), Variant(clip=0.6)),
    "gru": (GRU, Variant(clip=0.6)),
    "gru_textbook": (cell_by_name("gru_textbook"), Variant(clip=0.6)),
}


@pytest.mark.parametrize("case", list(CLIP_CASES))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_clip_matches_onnxruntime(case, reverse, lengths):
    ort = pytest.importorskip("onnxruntime", reason="the clip cross-check needs onnxruntime")
    cell, variant = CLIP_CASES[case]
    # ONNX Runtime's recurrent kernels take float32 only
    problem = make_variant_problem(cell, variant, T=6, B=4, I=5, H=7, seed=41, lengths=lengths,
                                   dtype=np.float32)
    feeds = _onnx_inputs(cell, problem)
    session = ort.InferenceSession(_onnx_model(cell, feeds, 7, variant.clip, reverse)
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    expected = _onnx_outputs(session.run(None, feeds), cell)
    ours = forward(cell, variant, problem, reverse, training=False)[:3]
    unclipped = forward(cell, replace(variant, clip=None), problem, reverse, training=False)[0]
    assert np.abs(ours[0] - unclipped).max() > 1e-2  # the clip matters here
    for name, a, b in zip(("y", "h_n", "c_n"), ours, expected):
        if b is not None:
            np.testing.assert_allclose(a, b, err_msg=name, **TOL[np.float32])


# ----------------------------------------------------------------------------------------------
# Zoneout


def test_zoneout_masks():
    variant = Variant(zoneout=0.3)
    shape = (50, 40, 100)
    train = variant.zoneout_mask(shape, np.float64, True, np.random.default_rng(0))
    assert train.shape == shape and set(np.unique(train)) == {0.0, 1.0}
    assert abs(train.mean() - 0.7) < 0.01  # 200000 draws: 4.5 standard deviations
    # per step, unit and row: no axis repeats one pattern
    assert np.abs(train[0] - train[1]).max() == 1 and np.abs(train[:, 0] - train[:, 1]).max() == 1
    assert np.all(variant.zoneout_mask(shape, np.float64, False) == 0.7)
    assert Variant().zoneout_mask(shape, np.float64, True, np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="rng"):
        variant.zoneout_mask(shape, np.float64, True)


@pytest.mark.parametrize("cell", [c for c in ALL_CELLS if c.name != "rnn_relu"],
                         ids=[c.name for c in ALL_CELLS if c.name != "rnn_relu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_zoneout_matches_its_formula(cell, training):
    """Step by step with the plain cell: in training h' = h + m (h_new - h) with the 0/1 mask;
    in evaluation h' = p h + (1 - p) h_new; the LSTM's c is never zoned out; y is h'."""
    p_zone = 0.3
    variant = Variant(zoneout=p_zone)
    T, B, I, H = 5, 3, 4, 6
    problem = make_variant_problem(cell, variant, T, B, I, H, seed=51, training=training)
    M = problem["zoneout_mask"]
    y, h_n, c_n, _ = forward(cell, variant, problem, training=False)
    plain = Variant()
    h, c = problem["h0"], problem["c0"]
    for t in range(T):
        _, h_new, c_new, _ = rv.forward(cell, plain, problem["x"][t:t + 1], problem["params"],
                                        h, c, training=False)
        h = h + M[t] * (h_new - h) if training else p_zone * h + (1 - p_zone) * h_new
        c = c_new
        np.testing.assert_allclose(y[t], h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_n, h, rtol=1e-12, atol=1e-12)
    if cell.has_cell_state:
        np.testing.assert_allclose(c_n, c, rtol=1e-12, atol=1e-12)


def test_zoneout_keeps_the_zoned_out_units():
    """Where the training mask is 0 the unit keeps its previous value exactly."""
    variant = Variant(zoneout=0.5)
    problem = make_variant_problem(GRU, variant, T=4, B=3, I=2, H=5, seed=61)
    y, _, _, _ = forward(GRU, variant, problem, training=True)
    M = problem["zoneout_mask"]
    previous = np.concatenate([problem["h0"][None], y[:-1]])
    assert (M == 0).sum() > 10
    np.testing.assert_array_equal(y[M == 0], previous[M == 0])
    assert np.all(y[M == 1] != previous[M == 1])


# ----------------------------------------------------------------------------------------------
# Errors name the argument


DROP = object()  # a parameter left out
RNN_TANH, GRU_TEXTBOOK = cell_by_name("rnn_tanh"), cell_by_name("gru_textbook")
ZONE, PROJ = Variant(zoneout=0.2), Variant(proj_size=2)


@pytest.mark.parametrize("cell, variant, made_for, change, message", [
    # (cell, variant called, variant the inputs are made for, inputs changed, message)
    (GRU, PROJ, Variant(), {}, "proj_size and peepholes are LSTM switches"),
    (RNN_TANH, Variant(peepholes=True), Variant(), {}, "LSTM switches"),
    (GRU_TEXTBOOK, Variant(layer_norm=True), Variant(), {}, "layer_norm applies"),
    (RNN_TANH, Variant(layer_norm=True), Variant(), {}, "layer_norm applies"),
    (LSTM, Variant(clip=0.0), Variant(), {}, "clip must be None or a positive float"),
    (LSTM, Variant(clip=-1.0), Variant(), {}, "clip must be None or a positive float"),
    (LSTM, Variant(zoneout=1.5), Variant(), {}, r"zoneout must be in \[0, 1\]"),
    (LSTM, Variant(proj_size=-1), Variant(), {}, "proj_size must be an int"),
    (LSTM, ZONE, Variant(), {}, "zoneout needs zoneout_mask"),
    (LSTM, Variant(), ZONE, {}, "zoneout_mask given but the variant has zoneout=0"),
    (LSTM, ZONE, ZONE, {"zoneout_mask": np.ones((4, 3, 5))}, r"zoneout_mask must have shape"),
    (LSTM, PROJ, PROJ, {"h0": np.zeros((3, 4))}, r"h0 must have shape \(3, 2\)"),
    (LSTM, PROJ, PROJ, {"c0": np.zeros((3, 2))}, r"c0 must have shape \(3, 4\)"),
    (GRU, Variant(), Variant(), {"c0": np.zeros((3, 4))}, "c0 is an LSTM state"),
    (LSTM, Variant(peepholes=True), Variant(peepholes=True), {"params": {"P": np.zeros((4, 4))}},
     r"params\['P'\] must have shape \(3, 4\)"),
    (LSTM, Variant(layer_norm=True), Variant(layer_norm=True), {"params": {"g_c": None}},
     r"params\['g_c'\] must be a numpy array"),
    (LSTM, Variant(), PROJ, {}, r"unexpected \['W_hr'\]"),
    (LSTM, PROJ, PROJ, {"params": {"W_hr": DROP}}, r"missing \['W_hr'\]"),
    (LSTM, Variant(proj_size=4), Variant(), {"params": {"W_hr": np.zeros((4, 4))}},
     r"proj_size must be smaller than the hidden size H=4"),
    (LSTM, Variant(), Variant(), {"lengths": np.array([1, 5, 2])},
     r"lengths must lie in \[1, T=4\]"),
    (LSTM, Variant(), Variant(), {"x": np.zeros((4, 3))},
     r"x must be a numpy array of shape \(T, B, I\)"),
])
def test_bad_inputs_raise_clear_errors(cell, variant, made_for, change, message):
    problem = make_variant_problem(cell, made_for, 4, 3, 2, 4, seed=0)
    params = {**problem["params"], **change.get("params", {})}
    problem = {**problem, **change, "params": {k: v for k, v in params.items() if v is not DROP}}
    with pytest.raises((ValueError, TypeError), match=message):
        forward(cell, variant, problem)

"""The cell variants through the layers and modules: fastrnn.torch.LSTM(proj_size) against
torch.nn.LSTM, the layer-normalised modules and zoneout against a slow torch transcription of
their equations, the NumPy layers against the modules, state dicts both ways, and clear errors.

Every backend that runs the variants is checked: the reference ("numpy"), Numba, and the CUDA
kernels compiled for the CPU ("cupy-emulated", tests/cuda_emulation).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the module checks need torch (test extra)")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from cuda_emulation import NAME as EMULATED  # noqa: E402
from cuda_emulation import emulated_backend, register_emulated_backend  # noqa: E402
from fastrnn.cells import LN_EPS  # noqa: E402
from fastrnn.params import constant_start  # noqa: E402
from helpers import TOL  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

pytestmark = pytest.mark.torch

BACKENDS = {"numpy": fastrnn.get_backend("numpy"), "numba": fastrnn.get_backend("numba"),
            EMULATED: emulated_backend()}
DTYPES = {"f64": torch.float64, "f32": torch.float32}


@pytest.fixture(scope="module", autouse=True)
def emulated_backend_by_name():
    """The emulated CUDA backend selectable by name while this module runs."""
    register_emulated_backend()
    yield
    fastrnn.dispatch.unregister_backend(EMULATED)


def running(switches, cases=None):
    """(backend, case) pairs, or backends, for the backends that run every switch in
    ``switches`` (a set, or a case name -> switches function); a backend that does not run a
    switch refuses it by name (test_numba_variants), so it is not a case here."""
    if cases is None:
        return [name for name, b in BACKENDS.items() if switches <= b.variant_switches]
    return [(b, c) for c in cases for b in running(switches(c))]


def switches_of(cls, kwargs):
    return set(cls(3, 6, **kwargs).cell.variant.switches)


def tol(dtype):
    return TOL[np.float64 if dtype == torch.float64 else np.float32]


def close(actual, expected, dtype, label):
    np.testing.assert_allclose(actual.detach().double().numpy(),
                               expected.detach().double().numpy(), err_msg=label, **tol(dtype))


# ----------------------------------------------------------------------------------------------
# The transcription: the stack, written from the equations (cells.Variant) in torch operations,
# one step at a time, on the module's own parameters; autograd gives its gradients.


def _layer_norm(v):
    mean = v.mean(dim=1, keepdim=True)
    return (v - mean) / torch.sqrt(((v - mean) ** 2).mean(dim=1, keepdim=True) + LN_EPS)


def _direction(module, k, suffix, x, h, c, lengths, reverse, mask):
    p = {name[:-len(f"_l{k}{suffix}")]: value for name, value in module.named_parameters()
         if name.endswith(f"_l{k}{suffix}")}
    layer_norm = "layernorm_ih_weight" in p

    def project(inp, W, gain, bias):
        pre = inp @ W.T
        pre = _layer_norm(pre) * gain if layer_norm else pre
        return pre + bias

    T = x.shape[0]
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        valid = (t < lengths)[:, None]
        gx = project(x[t], p["weight_ih"], p.get("layernorm_ih_weight"), p["bias_ih"])
        gh = project(h, p["weight_hh"], p.get("layernorm_hh_weight"), p["bias_hh"])
        if module.cell.kind == "lstm":
            a_i, a_f, a_g, a_o = (gx + gh).chunk(4, dim=1)
            c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
            c_out = (_layer_norm(c_new) * p["layernorm_c_weight"] + p["layernorm_c_bias"]
                     if layer_norm else c_new)
            h_new = torch.sigmoid(a_o) * torch.tanh(c_out)
            if "weight_hr" in p:
                h_new = h_new @ p["weight_hr"].T
            c = torch.where(valid, c_new, c)
        elif module.cell.kind == "rnn":
            h_new = (torch.tanh if module.nonlinearity == "tanh" else torch.relu)(gx + gh)
        else:
            (gx_r, gx_z, gx_n), (gh_r, gh_z, gh_n) = gx.chunk(3, dim=1), gh.chunk(3, dim=1)
            r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
            h_new = (1 - z) * torch.tanh(gx_n + r * gh_n) + z * h
        h_new = h + mask[t] * (h_new - h)  # zoneout (mask 1: no zoneout)
        h = torch.where(valid, h_new, h)
        ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
    return torch.stack(ys), h, c


def transcription(module, x, h0, c0, lengths, masks):
    """The module's stack on time-major x; masks: per layer and direction zoneout's M."""
    D = 2 if module.bidirectional else 1
    inp, h_n, c_n = x, [], []
    for k in range(module.num_layers):
        outs = []
        for j, suffix in enumerate(["", "_reverse"][:D]):
            row = k * D + j
            y, h, c = _direction(module, k, suffix, inp, h0[row],
                                 None if c0 is None else c0[row], lengths, j == 1, masks[row])
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        inp = torch.cat(outs, dim=2)
    return inp, torch.stack(h_n), None if c0 is None else torch.stack(c_n)


def randomise(module, seed):
    """Every parameter drawn again, layer-norm gains and c's bias too (so none is trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            shift = 1.0 if constant_start(name) == 1.0 else 0.0
            p.copy_(shift + 0.5 * (2 * torch.rand(p.shape, generator=g, dtype=p.dtype) - 1))


def _problem(module, T, B, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    H_out = module.proj_size or module.hidden_size
    x = torch.randn(T, B, module.input_size, generator=g, dtype=dtype)
    h0 = 0.5 * torch.randn(module.num_layers * D, B, H_out, generator=g, dtype=dtype)
    c0 = (0.5 * torch.randn(module.num_layers * D, B, module.hidden_size, generator=g,
                            dtype=dtype) if module.cell.kind == "lstm" else None)
    lengths = torch.tensor([T, max(1, T - 3), T - 1, 2][:B])
    cot_y = torch.randn(T, B, D * H_out, generator=g, dtype=dtype)
    return x, h0, c0, lengths, cot_y


def _compare_with_transcription(module, dtype, training, T=6, B=4, seed=3):
    """The module (padded input with lengths, hx given) against the transcription in float64 on
    the same (rounded) values: y, h_n, c_n and the gradients of x, h0, c0 and every parameter.
    In training the zoneout masks are drawn by the module, replayed for the transcription from
    the same seed."""
    x, h0, c0, lengths, cot_y = _problem(module, T, B, seed, dtype)
    leaves = [t.requires_grad_() for t in (x, h0, c0) if t is not None]
    ref = copy.deepcopy(module).double()
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    hx = (h0, c0) if c0 is not None else h0
    module.train(training)
    torch.manual_seed(seed)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, finals = module(packed, hx)
    y = pad_packed_sequence(out, total_length=T)[0]
    D = 2 if module.bidirectional else 1
    H_out = module.proj_size or module.hidden_size
    p = module.zoneout
    torch.manual_seed(seed)  # the module's draws, in its order (no dropout here)
    masks = [x.new_empty((T, B, H_out)).bernoulli_(1 - p) if training and p else
             x.new_full((T, B, H_out), 1 - p) for _ in range(module.num_layers * D)]
    t_y, t_h, t_c = transcription(ref, *leaves64, *([None] if c0 is None else []), lengths,
                                  [m.double() for m in masks])
    ours = [y, *(finals if c0 is not None else (finals,))]
    theirs = [t_y, t_h] + ([t_c] if c0 is not None else [])
    for label, a, b in zip(("y", "h_n", "c_n"), ours, theirs):
        close(a, b, dtype, label)

    def total(outs):
        """A loss averaged over the batch and the steps, as training takes it: float32's
        absolute error grows with the gradients' scale (layer norm's backward subtracts row
        means of gradients), and a summed loss makes gradients of several units here."""
        weights = [cot_y] + [torch.ones_like(o) for o in outs[1:]]
        return sum((o * w.to(o.dtype)).sum() for o, w in zip(outs, weights)) / (T * B)

    grads = torch.autograd.grad(total(ours), leaves + list(module.parameters()))
    expected = torch.autograd.grad(total(theirs), leaves64 + list(ref.parameters()))
    names = ["x", "h0", "c0"][:len(leaves)] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, grads, expected):
        close(a, b, dtype, f"d{name}")
    return masks


# ----------------------------------------------------------------------------------------------
# Projection: torch.nn.LSTM(proj_size) itself


@pytest.mark.parametrize("backend", running({"proj_size"}))
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)], ids=["1", "2bi"])
def test_projection_matches_torch_lstm(backend, dtype, layers, bidirectional):
    """Outputs, both states and every gradient of a packed batch (unsorted lengths, hx given)
    equal torch.nn.LSTM(proj_size=...) loaded into fastrnn.torch.LSTM with from_torch."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 7, layers, bidirectional=bidirectional, proj_size=3, dtype=dtype)
    ours = ft.LSTM.from_torch(ref, backend=backend)
    assert ours.proj_size == 3 and ours.weight_hr_l0.shape == (3, 7)
    x, h0, c0, lengths, cot_y = _problem(ours, 6, 4, 5, dtype)
    results = []
    for module in (ref, ours):
        leaves = [t.clone().requires_grad_() for t in (x, h0, c0)]
        out, (h, c) = module(pack_padded_sequence(leaves[0], lengths, enforce_sorted=False),
                             (leaves[1], leaves[2]))
        y = pad_packed_sequence(out, total_length=6)[0]
        loss = (y * cot_y).sum() + (h ** 2).sum() + c.sum()
        results.append([y, h, c] + list(torch.autograd.grad(loss, leaves + list(
            module.parameters()))))
    names = ["y", "h_n", "c_n", "dx", "dh0", "dc0"] + [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in ours.named_parameters()] == names[6:]
    for name, theirs, mine in zip(names, *results):
        close(mine, theirs, dtype, name)


def test_projection_state_dicts_load_both_ways():
    """torch.nn.LSTM(proj_size) <-> fastrnn.torch.LSTM <-> fastrnn.LSTM (NumPy): the same names
    and shapes, strict loads, the same outputs."""
    torch.manual_seed(1)
    ref = torch.nn.LSTM(4, 6, 2, bidirectional=True, proj_size=2, dtype=torch.float64)
    ours = ft.LSTM(4, 6, 2, bidirectional=True, proj_size=2, dtype=torch.float64,
                   backend="numpy")
    ours.load_state_dict(ref.state_dict())
    back = torch.nn.LSTM(4, 6, 2, bidirectional=True, proj_size=2, dtype=torch.float64)
    back.load_state_dict(ours.state_dict())
    layer = fastrnn.LSTM(4, 6, 2, bidirectional=True, proj_size=2, dtype=np.float64,
                         backend="numpy")
    layer.load_state_dict(ours.state_dict())
    assert list(layer.state_dict()) == list(ref.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    expected = ref(x)
    for y, (h, c) in (back(x), ours(x), layer(x.numpy())):
        for a, b in ((y, expected[0]), (h, expected[1][0]), (c, expected[1][1])):
            np.testing.assert_allclose(np.asarray(a.detach() if hasattr(a, "detach") else a),
                                       b.detach().numpy(), rtol=1e-12, atol=1e-12)
        assert h.shape == (4, 3, 2) and c.shape == (4, 3, 6)


# ----------------------------------------------------------------------------------------------
# Layer norm and zoneout against the transcription


MODULES = {
    "ln_lstm": (ft.LayerNormLSTM, {}),
    "ln_gru": (ft.LayerNormGRU, {}),
    "ln_lstm_zoneout": (ft.LayerNormLSTM, {"zoneout": 0.3}),
    "gru_zoneout": (ft.GRU, {"zoneout": 0.25}),
    "lstm_proj_zoneout": (ft.LSTM, {"proj_size": 3, "zoneout": 0.2}),
    "rnn_zoneout": (ft.RNN, {"zoneout": 0.4}),
}


@pytest.mark.parametrize("backend, case", running(lambda c: switches_of(*MODULES[c]), MODULES))
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_modules_match_the_transcription(backend, dtype, case, training):
    """Stacked and bidirectional, with lengths and hx: outputs, states and every gradient
    (each layer-norm gain and bias, each weight, x, h0, c0) of the module equal the
    transcription's, in training (the same zoneout masks, drawn by the module on torch's
    generator) and in eval mode (h' = p h + (1 - p) h_new)."""
    cls, kwargs = MODULES[case]
    module = cls(5, 6, 2, bidirectional=True, dtype=dtype, backend=backend, **kwargs)
    randomise(module, 7)
    masks = _compare_with_transcription(module, dtype, training)
    if training and module.zoneout:  # the masks were real draws: both values, about 1 - p kept
        kept = torch.stack(masks).mean().item()
        assert 0 < kept < 1 and abs(kept - (1 - module.zoneout)) < 0.12


@pytest.mark.parametrize("backend", running({"layer_norm", "zoneout"}))
def test_zoneout_gradients_match_finite_differences(backend):
    """gradcheck (float64 central differences) of a zoned-out LayerNormLSTM in training, with
    the masks held fixed by reseeding torch's generator before each call: backward uses the
    masks the forward drew."""
    module = ft.LayerNormLSTM(3, 4, bidirectional=True, zoneout=0.3, dtype=torch.float64,
                              backend=backend)
    randomise(module, 2)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(x):
        torch.manual_seed(11)
        y, (h, c) = module(x)
        return y, h, c

    assert torch.autograd.gradcheck(run, (x,), eps=1e-6, atol=1e-9, rtol=1e-6)


def test_initial_layer_norm_parameters_and_names():
    """Gains start at 1 and c's bias at 0 (layers and modules); the names of the issue."""
    module = ft.LayerNormLSTM(3, 4, 2, bidirectional=True)
    layer = fastrnn.LayerNormLSTM(3, 4, 2, bidirectional=True)
    for params in (dict(module.named_parameters()), layer.state_dict()):
        for k in (0, 1):
            for suffix in ("", "_reverse"):
                for name, value in (("layernorm_ih_weight", 1), ("layernorm_hh_weight", 1),
                                    ("layernorm_c_weight", 1), ("layernorm_c_bias", 0)):
                    p = params[f"{name}_l{k}{suffix}"]
                    shape = (16,) if "h_weight" in name else (4,)
                    assert tuple(p.shape) == shape and (np.asarray(
                        p.detach() if hasattr(p, "detach") else p) == value).all()
    gru = dict(ft.LayerNormGRU(3, 4).named_parameters())
    assert [n for n in gru if n.startswith("layernorm")] == [
        "layernorm_ih_weight_l0", "layernorm_hh_weight_l0"]


# ----------------------------------------------------------------------------------------------
# The NumPy layers: the same numbers as the modules, their own zoneout generator


LAYER_CASES = {
    "ln_lstm": (fastrnn.LayerNormLSTM, ft.LayerNormLSTM, {}),
    "ln_gru": (fastrnn.LayerNormGRU, ft.LayerNormGRU, {}),
    "lstm_proj": (fastrnn.LSTM, ft.LSTM, {"proj_size": 2}),
    "gru_zoneout": (fastrnn.GRU, ft.GRU, {"zoneout": 0.3}),
}


@pytest.mark.parametrize("backend, case", running(
    lambda c: switches_of(*LAYER_CASES[c][1:]), LAYER_CASES))
def test_numpy_layers_equal_the_modules(backend, case):
    """Loaded with the module's state dict, a NumPy layer gives the module's outputs and
    gradients (eval-mode forward, so zoneout is its deterministic 1 - p mix, and a backward)."""
    layer_cls, module_cls, kwargs = LAYER_CASES[case]
    module = module_cls(4, 5, 2, bidirectional=True, dtype=torch.float64, backend=backend,
                        **kwargs).eval()
    randomise(module, 4)
    layer = layer_cls(4, 5, 2, bidirectional=True, dtype=np.float64, backend=backend, **kwargs)
    layer.load_state_dict(module.state_dict())
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    y, _ = module(x)
    y.backward(torch.ones_like(y))
    layer.eval()
    y_np, _ = layer(x.detach().numpy())
    np.testing.assert_allclose(y_np, y.detach().numpy(), rtol=1e-12, atol=1e-12)
    if not kwargs.get("zoneout"):  # a training forward of the layer (no masks to match)
        layer.train()
        y_np, _ = layer(x.detach().numpy())
        dx, _ = layer.backward(np.ones_like(y_np))
        np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-10, atol=1e-12)
        for name, p in module.named_parameters():
            np.testing.assert_allclose(layer.grads[name], p.grad.numpy(), rtol=1e-10,
                                       atol=1e-12, err_msg=name)


def test_numpy_layer_zoneout_draws_from_its_seed():
    """The layer's masks come from its seed: the same seed gives the same training output, p = 1
    keeps every unit at its initial state (y is h0 at every step), and the gradient then reaches
    neither x nor the weights."""
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    h0 = np.random.default_rng(1).standard_normal((1, 2, 4))
    runs = [fastrnn.GRU(3, 4, zoneout=0.5, dtype=np.float64, seed=9)(x, h0)[0] for _ in "ab"]
    np.testing.assert_array_equal(runs[0], runs[1])
    other = fastrnn.GRU(3, 4, zoneout=0.5, dtype=np.float64, seed=10)(x, h0)[0]
    assert not np.allclose(runs[0], other)
    frozen = fastrnn.GRU(3, 4, zoneout=1.0, dtype=np.float64, seed=9)
    y, h_n = frozen(x, h0)
    np.testing.assert_array_equal(y, np.broadcast_to(h0, y.shape))
    dx, dh0 = frozen.backward(np.ones_like(y))
    assert not dx.any() and not frozen.grads["weight_hh_l0"].any()
    np.testing.assert_array_equal(dh0, np.full_like(h0, 5.0))


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("make, exc, words", [
    (lambda: fastrnn.LSTM(3, 4, proj_size=4), ValueError,
     "proj_size has to be smaller than hidden_size"),
    (lambda: fastrnn.LSTM(3, 4, proj_size=-1), ValueError, "proj_size must be at least 0"),
    (lambda: fastrnn.GRU(3, 4, zoneout=1.5), ValueError, r"zoneout must be a number in \[0, 1\]"),
    (lambda: fastrnn.RNN(3, 4, zoneout=-0.1), ValueError, "zoneout must be a number"),
    (lambda: ft.LayerNormLSTM(3, 4, proj_size=5), ValueError, "proj_size has to be smaller"),
    (lambda: ft.RNN(3, 4, zoneout="0.1"), ValueError, "zoneout must be a number"),
    (lambda: fastrnn.LayerNormGRU(3, 4, linear_before_reset=False), ValueError,
     "layer_norm applies to the LSTM and the linear_before_reset GRU"),
])
def test_constructor_errors_name_the_argument(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def _lstm_args(H=4, I=3, T=5, B=2):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((T, B, I)), rng.standard_normal((4 * H, I)),
            rng.standard_normal((4 * H, H)))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(W_hr=np.zeros((4, 4))), ValueError,
     r"W_hr must have shape \(proj_size, H\) with proj_size < H = 4"),
    (dict(W_hr=np.zeros((2, 5))), ValueError, r"W_hh must have shape \(G\*H, proj_size\)"),
    (dict(g_ih=np.ones(16), g_hh=np.ones(16)), ValueError,
     "layer norm needs all of g_ih, g_hh, g_c, b_c; got only g_ih, g_hh"),
    (dict(g_ih=np.ones(12), g_hh=np.ones(16), g_c=np.ones(4), b_c=np.zeros(4)), ValueError,
     r"g_ih must have shape \(G\*H,\)"),
    (dict(zoneout=0.2), ValueError, "zoneout in training needs zoneout_mask"),
    (dict(zoneout=0.2, zoneout_mask=np.ones((5, 2, 3))), ValueError,
     r"zoneout_mask must have shape \(T, B, H\)"),
    (dict(zoneout_mask=np.ones((5, 2, 4))), ValueError, "zoneout_mask is given but zoneout is 0"),
    (dict(zoneout=2.0), ValueError, r"zoneout must be a number in \[0, 1\]"),
    (dict(peepholes=np.zeros((4, 4))), ValueError, r"peepholes must have shape \(3, H\)"),
    (dict(clip=-1.0), ValueError, "clip must be None or a positive finite number"),
])
def test_functional_errors_name_the_argument(kwargs, exc, words):
    x, W_ih, W_hh = _lstm_args()
    with pytest.raises(exc, match=words):
        fastrnn.lstm_forward(x, W_ih, W_hh, backend="numpy", **kwargs)


# ----------------------------------------------------------------------------------------------
# Higher-order gradients: create_graph=True re-expresses the stack in torch operations


def test_double_backward_of_the_projection_matches_torch():
    """A gradient penalty's gradient through fastrnn.torch.LSTM(proj_size) equals torch.nn's."""
    torch.manual_seed(2)
    ref = torch.nn.LSTM(3, 5, 2, bidirectional=True, proj_size=2, dtype=torch.float64)
    ours = ft.LSTM.from_torch(ref, backend="numpy")
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for module in (ref, ours):
        x.grad = None
        y, _ = module(x)
        (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
        (gx.pow(2).sum() + y.sum()).backward()
        results.append([x.grad] + [p.grad for p in module.parameters()])
        module.zero_grad()
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["ln_lstm_zoneout", "ln_gru", "rnn_zoneout"])
def test_double_backward_of_variants(case):
    """With create_graph=True the first-order gradient (the torch re-expression, zoneout masks
    included) equals the kernels', and gradgradcheck passes on it."""
    cls, kwargs = MODULES[case]
    module = cls(3, 4, 2, bidirectional=True, dtype=torch.float64, backend="numpy", **kwargs)
    randomise(module, 5)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(x):
        torch.manual_seed(4)
        return module(x)[0]

    fused = torch.autograd.grad((run(x) ** 2).sum(), x)[0]
    recorded = torch.autograd.grad((run(x) ** 2).sum(), x, create_graph=True)[0]
    assert recorded.requires_grad
    torch.testing.assert_close(recorded, fused, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(run, (x,), eps=1e-6, atol=1e-8, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("case", ["lstm_proj_zoneout", "ln_gru"])
def test_compile_fullgraph_of_variant_modules(case):
    """torch.compile(fullgraph=True) traces a variant module (the custom op carries the
    variant; its fake implementation knows proj_size's width) and gives the eager numbers, the
    zoneout masks drawn in the graph from the same seed as eager; opcheck passes."""
    from fastrnn.torch import ops

    cls, kwargs = MODULES[case]
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = cls(3, 6, 2, bidirectional=True, dtype=torch.float64, backend="numpy", **kwargs)
    randomise(module, 1)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)

    def loss(x):
        y, _ = module(x)
        return (y ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    eager_value = loss(x)
    eager_grads = torch.autograd.grad(eager_value, [x, *module.parameters()])
    torch.manual_seed(3)
    value = compiled(x)
    grads = torch.autograd.grad(value, [x, *module.parameters()])
    torch.testing.assert_close(value, eager_value, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    states = [torch.zeros(4, 2, module.proj_size or 6, dtype=torch.float64)]
    if module.cell.kind == "lstm":
        states.append(torch.zeros(4, 2, 6, dtype=torch.float64))
    args = (x, states, list(module.parameters()), None, [], module.cell.spec, 6, 2, True, False,
            0.0, True, "numpy")
    torch.library.opcheck(ops.stack_forward, args, test_utils=(
        "test_schema", "test_faketensor", "test_autograd_registration"))


def test_convert_keeps_what_the_backend_cannot_run():
    """convert swaps a projected torch.nn.LSTM only where the device's backend runs the
    projection; elsewhere the torch module stays, with a warning naming it."""
    model = torch.nn.Sequential(torch.nn.LSTM(3, 6, proj_size=2), torch.nn.GRU(2, 4))
    runs = "proj_size" in fastrnn.get_backend("numba").variant_switches
    with pytest.warns(UserWarning, match="stays torch.nn's") if not runs else \
            contextlib.nullcontext():
        ft.convert(model)
    assert type(model[0]) is (ft.LSTM if runs else torch.nn.LSTM)
    assert type(model[1]) is ft.GRU
    converted = ft.convert(torch.nn.Sequential(torch.nn.LSTM(3, 6, proj_size=2)),
                           backend="numpy")
    assert type(converted[0]) is ft.LSTM and converted[0].proj_size == 2

"""The layers (fastrnn.RNN / LSTM / GRU) against torch.nn with one state dict, on every backend.

Every test that runs the recurrence is parametrized over the available backends plus the CPU
emulation of the CUDA backend when tests/cuda_emulation is importable (see conftest.py).
"""

import importlib.util
import warnings

import numpy as np
import pytest

import fastrnn
from fastrnn.tolerances import tolerance

HAS_TORCH = importlib.util.find_spec("torch") is not None
TOL = {dtype: tolerance(dtype) for dtype in (np.float32, np.float64)}
KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def needs_torch(test):
    """Cross-checks against torch.nn: skipped, saying so, only where torch is not installed."""
    skip = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
    return pytest.mark.torch(skip(test))


@pytest.fixture
def backend(backend_target):
    """What ``backend=`` takes for the backend under test; conftest.py parametrizes
    ``backend_target`` over the backends that run here on NumPy arrays plus the CUDA emulation."""
    return backend_target.backend


def make_layer(kind, *args, **kwargs):
    if kind.startswith("rnn"):
        return fastrnn.RNN(*args, nonlinearity=kind[4:], **kwargs)
    return {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[kind](*args, **kwargs)


def torch_module(kind, *args, **kwargs):
    import torch

    if kind.startswith("rnn"):
        return torch.nn.RNN(*args, nonlinearity=kind[4:], **kwargs)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](*args, **kwargs)


def assert_close(actual, expected, dtype, label):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=label,
                               **TOL[dtype])


# ----------------------------------------------------------------------------------------------
# Random configurations against torch.nn


def random_configs(n=48, seed=2024):
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(n):
        configs.append(dict(
            kind=KINDS[i % len(KINDS)],
            num_layers=int(rng.integers(1, 4)),
            bidirectional=bool(rng.integers(2)),
            batch_first=bool(rng.integers(2)),
            lengths=bool(rng.integers(2)),
            bias=bool(rng.random() < 0.75),
            hx=bool(rng.integers(2)),
            d_state=bool(rng.random() < 0.75),
            dtype=(np.float32, np.float64)[int(rng.integers(2))],
            T=int(rng.integers(1, 6)), B=int(rng.integers(1, 5)),
            I=int(rng.integers(1, 5)), H=int(rng.integers(1, 5)), seed=i))
    return configs


def config_id(c):
    flags = "".join(f for f, on in (("b", c["bidirectional"]), ("f", c["batch_first"]),
                                    ("L", c["lengths"]), ("+", c["bias"]), ("h", c["hx"]),
                                    ("s", c["d_state"])) if on)
    return (f"{c['kind']}-l{c['num_layers']}-{flags or '0'}-{np.dtype(c['dtype']).name}"
            f"-T{c['T']}B{c['B']}I{c['I']}H{c['H']}")


def torch_reference(module, c, x, hx, lengths, dy, dh):
    """Forward and backward in torch; hx (zeros when not given) always gets a gradient."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.from_numpy(x.copy()).requires_grad_()
    hxt = tuple(torch.from_numpy(s.copy()).requires_grad_() for s in hx)
    inp = xt
    if lengths is not None:
        inp = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=c["batch_first"],
                                   enforce_sorted=False)
    out, state = module(inp, hxt if c["kind"] == "lstm" else hxt[0])
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=c["batch_first"], total_length=c["T"])
    states = state if c["kind"] == "lstm" else (state,)
    loss = (out * torch.from_numpy(dy)).sum()
    for s, d in zip(states, dh):
        if d is not None:
            loss = loss + (s * torch.from_numpy(d)).sum()
    loss.backward()
    return ({"y": out.detach().numpy(), "states": [s.detach().numpy() for s in states]},
            {"dx": xt.grad.numpy(), "dhx": [s.grad.numpy() for s in hxt],
             "params": {n: p.grad.numpy() for n, p in module.named_parameters()}})


@pytest.mark.parametrize("c", random_configs(), ids=config_id)
@needs_torch
def test_matches_torch(c, backend):
    import torch

    rng = np.random.default_rng(c["seed"])
    T, B, I, H, dtype = c["T"], c["B"], c["I"], c["H"], c["dtype"]
    L, D = c["num_layers"], 2 if c["bidirectional"] else 1
    kw = dict(num_layers=L, bias=c["bias"], batch_first=c["batch_first"],
              bidirectional=c["bidirectional"])
    torch.manual_seed(c["seed"])
    module = torch_module(c["kind"], I, H, dtype=torch.float64 if dtype == np.float64
                          else torch.float32, **kw)
    layer = make_layer(c["kind"], I, H, dtype=dtype, backend=backend, **kw)
    layer.load_state_dict(module.state_dict())

    x = rng.standard_normal((B, T, I) if c["batch_first"] else (T, B, I)).astype(dtype)
    n_states = 2 if c["kind"] == "lstm" else 1
    hx = [(rng.standard_normal((L * D, B, H)) * 0.5).astype(dtype) if c["hx"]
          else np.zeros((L * D, B, H), dtype) for _ in range(n_states)]
    lengths = None
    if c["lengths"]:
        lengths = rng.integers(1, T + 1, B)
        lengths[rng.integers(B)] = T  # pad_packed_sequence pads to the longest
    dy = rng.standard_normal((B, T, D * H) if c["batch_first"] else (T, B, D * H)).astype(dtype)
    dh = [rng.standard_normal((L * D, B, H)).astype(dtype) if c["d_state"] else None
          for _ in range(n_states)]
    given = [x, dy] + (hx if c["hx"] else []) + [d for d in dh if d is not None]
    copies = [a.copy() for a in given]

    expected, expected_grads = torch_reference(module, c, x, hx, lengths, dy, dh)

    layer_hx = None
    if c["hx"]:
        layer_hx = tuple(hx) if c["kind"] == "lstm" else hx[0]
    y, state = layer(x, layer_hx, lengths)
    states = state if c["kind"] == "lstm" else (state,)
    d_state = None
    if c["d_state"]:
        d_state = tuple(dh) if c["kind"] == "lstm" else dh[0]
    dx, dhx = layer.backward(dy, d_state)
    dhx = dhx if c["kind"] == "lstm" else (dhx,)

    assert_close(y, expected["y"], dtype, "y")
    for k, (s, e) in enumerate(zip(states, expected["states"])):
        assert s.shape == (L * D, B, H)
        assert_close(s, e, dtype, f"state {k}")
    assert_close(dx, expected_grads["dx"], dtype, "dx")
    for k, (g, e) in enumerate(zip(dhx, expected_grads["dhx"])):
        assert_close(g, e, dtype, f"dhx {k}")
    assert list(layer.grads) == list(expected_grads["params"])
    for name, e in expected_grads["params"].items():
        assert_close(layer.grads[name], e, dtype, name)
    for a, copy in zip(given, copies):
        np.testing.assert_array_equal(a, copy, err_msg="an input was modified")


@needs_torch
@pytest.mark.parametrize("kind", KINDS)
def test_grads_accumulate_like_torch_until_zero_grad(kind, backend):
    import torch

    T, B, I, H = 4, 3, 2, 3
    torch.manual_seed(7)
    module = torch_module(kind, I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    layer = make_layer(kind, I, H, num_layers=2, bidirectional=True, dtype=np.float64,
                       backend=backend)
    layer.load_state_dict(module.state_dict())
    rng = np.random.default_rng(3)
    for _ in range(2):
        x = rng.standard_normal((T, B, I))
        dy = rng.standard_normal((T, B, 2 * H))
        (module(torch.from_numpy(x))[0] * torch.from_numpy(dy)).sum().backward()
        layer(x)
        layer.backward(dy)
    for name, p in module.named_parameters():
        assert_close(layer.grads[name], p.grad.numpy(), np.float64, name)
    held = layer.grads["weight_hh_l1_reverse"]
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())
    assert layer.grads["weight_hh_l1_reverse"] is held  # zeroed in place


# ----------------------------------------------------------------------------------------------
# The textbook GRU against the functional reference composed by hand


def compose_gru_textbook(params, x, h0, lengths, dy, dh_n, L, D, H):
    """Stacked, optionally bidirectional textbook GRU from gru_forward/gru_backward (numpy)."""
    inp, ctxs, h_n = x, [], []
    for k in range(L):
        ys = []
        for j, suffix in enumerate(("", "_reverse")[:D]):
            p = [params.get(f"{n}_l{k}{suffix}") for n in
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            out = fastrnn.gru_forward(inp, *p, h0[k * D + j], linear_before_reset=False,
                                      lengths=lengths, reverse=j == 1, backend="numpy")
            ys.append(out.y)
            h_n.append(out.h_n)
            ctxs.append(out.ctx)
        inp = np.concatenate(ys, axis=2)
    grads, dh0 = {}, [None] * (L * D)
    d_out = dy
    for k in reversed(range(L)):
        dx = 0
        for j, suffix in enumerate(("", "_reverse")[:D]):
            g = fastrnn.gru_backward(ctxs[k * D + j], d_out[..., j * H:(j + 1) * H],
                                     dh_n[k * D + j])
            dx = dx + g.dx
            dh0[k * D + j] = g.dh0
            for n, v in (("weight_ih", g.dW_ih), ("weight_hh", g.dW_hh), ("bias_ih", g.db_ih),
                         ("bias_hh", g.db_hh)):
                if v is not None:
                    grads[f"{n}_l{k}{suffix}"] = v
        d_out = dx
    return inp, np.stack(h_n), d_out, np.stack(dh0), grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional,bias,batch_first", [
    (True, True, False), (True, False, True), (False, True, True)])
def test_gru_textbook_matches_composed_reference(bidirectional, bias, batch_first, dtype,
                                                 backend):
    T, B, I, H, L = 5, 4, 3, 4, 3
    D = 2 if bidirectional else 1
    layer = fastrnn.GRU(I, H, L, bias=bias, batch_first=batch_first,
                        bidirectional=bidirectional, linear_before_reset=False, dtype=dtype,
                        backend=backend, seed=11)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (rng.standard_normal((L * D, B, H)) * 0.5).astype(dtype)
    lengths = np.array([3, 5, 1, 3])
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    dh_n = rng.standard_normal((L * D, B, H)).astype(dtype)
    y_e, h_e, dx_e, dh0_e, grads_e = compose_gru_textbook(
        layer.state_dict(), x, h0, lengths, dy, dh_n, L, D, H)

    swap = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    y, h_n = layer(swap(x), h0, lengths)
    dx, dh0 = layer.backward(swap(dy), dh_n)
    assert_close(swap(y), y_e, dtype, "y")
    assert_close(h_n, h_e, dtype, "h_n")
    assert_close(swap(dx), dx_e, dtype, "dx")
    assert_close(dh0, dh0_e, dtype, "dh0")
    assert set(grads_e) == set(layer.grads)
    for name, e in grads_e.items():
        assert_close(layer.grads[name], e, dtype, name)


# ----------------------------------------------------------------------------------------------
# Truncated backpropagation through time


@needs_torch
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_truncated_bptt_matches_torch(kind, backend):
    """Chunks of a long sequence: h_n of chunk k is chunk k+1's hx, detached (torch) or simply
    passed on (fastrnn: backward of chunk k+1 stops at its hx); gradients accumulate."""
    import torch

    T, chunk, B, I, H = 12, 4, 3, 2, 3
    torch.manual_seed(1)
    module = torch_module(kind, I, H, num_layers=2, batch_first=True, dtype=torch.float64)
    layer = make_layer(kind, I, H, num_layers=2, batch_first=True, dtype=np.float64,
                       backend=backend)
    layer.load_state_dict(module.state_dict())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, I))
    dy = rng.standard_normal((B, T, H))
    hx, hx_t = None, None
    for t0 in range(0, T, chunk):
        part = slice(t0, t0 + chunk)
        xt = torch.from_numpy(x[:, part].copy()).requires_grad_()
        out_t, state_t = module(xt, hx_t)
        (out_t * torch.from_numpy(dy[:, part])).sum().backward()
        hx_t = tuple(s.detach() for s in state_t) if kind == "lstm" else state_t.detach()

        y, hx = layer(x[:, part], hx)
        dx, _ = layer.backward(dy[:, part])
        assert_close(y, out_t.detach().numpy(), np.float64, f"y at {t0}")
        assert_close(dx, xt.grad.numpy(), np.float64, f"dx at {t0}")
    final = hx if kind == "lstm" else (hx,)
    final_t = hx_t if kind == "lstm" else (hx_t,)
    for s, e in zip(final, final_t):
        assert_close(s, e.numpy(), np.float64, "final state")
    for name, p in module.named_parameters():
        assert_close(layer.grads[name], p.grad.numpy(), np.float64, name)


# ----------------------------------------------------------------------------------------------
# Dropout


def identity_stack(p, backend, T=60, B=20, H=16, num_layers=2, seed=0):
    """A relu RNN whose layers pass positive inputs through unchanged, so y / x is the product
    of the dropout masks applied between the layers."""
    layer = fastrnn.RNN(H, H, num_layers, nonlinearity="relu", bias=False, dropout=p,
                        dtype=np.float64, backend=backend, seed=seed)
    eye, zero = np.eye(H), np.zeros((H, H))
    layer.load_state_dict({n: eye if "_ih_" in n else zero for n in layer.state_dict()})
    x = np.random.default_rng(seed).uniform(0.5, 1.5, (T, B, H))
    return layer, x


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_keep_rate_scale_and_gradient(p, backend):
    layer, x = identity_stack(p, backend)
    y, _ = layer(x)
    ratio = y / x
    scale = 1 / (1 - p)
    kept = ratio != 0
    np.testing.assert_allclose(ratio[kept], scale, rtol=1e-12)
    # One mask between the two layers, none after the last: kept ~ Binomial(n, 1 - p).
    n = x.size
    std = np.sqrt(n * p * (1 - p))
    assert abs(kept.sum() - n * (1 - p)) < 5 * std, (kept.sum(), n * (1 - p), std)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx, _ = layer.backward(dy)
    np.testing.assert_allclose(dx, dy * ratio, rtol=1e-12, atol=0)


def test_dropout_one_zeroes_and_eval_passes_through(backend):
    layer, x = identity_stack(1.0, backend)
    y, _ = layer(x)
    assert not y.any()
    y_eval, _ = layer.eval()(x)
    np.testing.assert_array_equal(y_eval, x)


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_train_vs_eval(kind, backend):
    T, B, I, H = 6, 5, 3, 8
    kw = dict(num_layers=3, bidirectional=True, dtype=np.float64, backend=backend)
    layer = make_layer(kind, I, H, dropout=0.5, seed=3, **kw)
    plain = make_layer(kind, I, H, **kw)
    plain.load_state_dict(layer.state_dict())
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y_plain = plain(x)[0]  # training mode, no dropout
    y_eval = layer.eval()(x)[0]
    np.testing.assert_array_equal(y_eval, layer(x)[0])
    assert_close(y_eval, y_plain, np.float64, "eval equals dropout=0")
    with pytest.raises(RuntimeError, match="eval mode"):
        layer.backward(np.ones_like(y_eval))
    y_train = layer.train()(x)[0]
    assert np.abs(y_train - y_eval).max() > 1e-3
    assert np.abs(layer(x)[0] - y_train).max() > 1e-3  # fresh masks every forward
    # Seeded: the same seed gives the same masks.
    twin = make_layer(kind, I, H, dropout=0.5, seed=3, **kw)
    again = make_layer(kind, I, H, dropout=0.5, seed=3, **kw)
    np.testing.assert_array_equal(twin(x)[0], again(x)[0])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_dropout_gradient_by_finite_differences(kind, backend):
    """With a fixed seed the masks are fixed, so the training forward is a function to
    differentiate numerically."""
    T, B, I, H = 4, 3, 2, 3
    kw = dict(num_layers=3, bidirectional=True, dropout=0.4, dtype=np.float64, backend=backend)
    params = make_layer(kind, I, H, seed=0, **kw).state_dict()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, 2 * H))

    def fresh():
        layer = make_layer(kind, I, H, seed=5, **kw)
        layer.load_state_dict({n: p.copy() for n, p in params.items()})
        return layer

    def loss(x_, name=None, value=None):
        layer = fresh()
        if name is not None:
            layer.load_state_dict({**params, name: value})
        return float((layer(x_)[0] * dy).sum())

    layer = fresh()
    layer(x)
    dx, _ = layer.backward(dy)
    eps = 1e-6
    for idx in [(0, 0, 0), (2, 1, 1), (3, 2, 0)]:
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += eps
        xm[idx] -= eps
        numeric = (loss(xp_) - loss(xm)) / (2 * eps)
        assert abs(numeric - dx[idx]) <= 1e-6 * abs(numeric), (idx, numeric, dx[idx])
    for name in ["weight_ih_l0", "weight_hh_l1_reverse", "bias_ih_l2"]:
        plus, minus = params[name].copy(), params[name].copy()
        plus.flat[1] += eps
        minus.flat[1] -= eps
        numeric = (loss(x, name, plus) - loss(x, name, minus)) / (2 * eps)
        analytic = layer.grads[name].flat[1]
        assert abs(numeric - analytic) <= 1e-6 * abs(numeric), (name, numeric, analytic)


# ----------------------------------------------------------------------------------------------
# Parameters and state dicts


@needs_torch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_names_shapes_and_init_like_torch(kind, bias):
    module = torch_module(kind, 5, 7, num_layers=3, bias=bias, bidirectional=True)
    layer = make_layer(kind, 5, 7, num_layers=3, bias=bias, bidirectional=True, seed=0)
    expected = {n: tuple(t.shape) for n, t in module.state_dict().items()}
    assert {n: a.shape for n, a in layer.state_dict().items()} == expected
    assert list(layer.named_parameters()) == list(expected)
    assert list(layer.grads) == list(expected)
    values = np.concatenate([a.ravel() for a in layer.state_dict().values()])
    assert values.dtype == np.float32
    bound = 1 / np.sqrt(7)
    assert values.min() >= -bound and values.max() <= bound
    # Uniform on [-bound, bound]: mean 0 and variance bound^2 / 3, within 5 standard errors.
    n = values.size
    assert abs(values.mean()) < 5 * bound / np.sqrt(3 * n)
    assert abs(values.var() - bound ** 2 / 3) < 5 * bound ** 2 * np.sqrt(4 / 45 / n)


def test_seed_makes_initialisation_reproducible():
    a = fastrnn.LSTM(3, 4, seed=1).state_dict()
    b = fastrnn.LSTM(3, 4, seed=1).state_dict()
    c = fastrnn.LSTM(3, 4, seed=2).state_dict()
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["weight_ih_l0"], c["weight_ih_l0"])


@needs_torch
def test_load_state_dict_from_torch_copies():
    import torch

    module = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
    layer = fastrnn.GRU(3, 4, num_layers=2, bidirectional=True)
    params = dict(module.named_parameters())  # requires_grad tensors
    layer.load_state_dict(params)
    for name, t in params.items():
        # issue 13: a copy, as torch's load_state_dict (this asserted shared memory before)
        assert not np.shares_memory(layer.state_dict()[name], t.detach().numpy()), name
        np.testing.assert_array_equal(layer.state_dict()[name], t.detach().numpy())
    state = module.state_dict()
    layer.load_state_dict(state)
    for name, t in state.items():
        np.testing.assert_array_equal(layer.state_dict()[name], t.numpy())
    with pytest.raises(TypeError, match=r"state_dict\['weight_ih_l0'\] must have dtype"):
        layer.load_state_dict({**state, "weight_ih_l0": state["weight_ih_l0"].bfloat16()})
    with pytest.raises(TypeError, match="dtype float32.*got float64"):
        layer.load_state_dict({**state, "weight_hh_l1": state["weight_hh_l1"].double()})


def test_load_state_dict_numpy_copies_and_round_trips():
    src = fastrnn.RNN(3, 4, 2, seed=0, dtype=np.float64)
    dst = fastrnn.RNN(3, 4, 2, seed=1, dtype=np.float64)
    state = src.state_dict()
    dst.load_state_dict(state)
    for name, a in state.items():
        # issue 13: copied, as torch does (this asserted `is a` before)
        assert not np.shares_memory(dst.state_dict()[name], a)
        np.testing.assert_array_equal(dst.state_dict()[name], a)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    np.testing.assert_array_equal(src(x)[0], dst(x)[0])


@pytest.mark.parametrize("change,error,match", [
    (lambda d: d.pop("bias_hh_l1"), ValueError, r"missing keys \['bias_hh_l1'\]"),
    (lambda d: d.update(weight_hr_l0=d["weight_hh_l0"]), ValueError,
     r"unexpected keys \['weight_hr_l0'\]"),
    (lambda d: d.update(weight_ih_l1=np.zeros((16, 3), np.float32)), ValueError,
     r"state_dict\['weight_ih_l1'\] must have shape \(G\*H, I\) = \(16, 4\), got \(16, 3\)"),
    (lambda d: d.update(bias_ih_l0=np.zeros(16)), TypeError, "layer's dtype float32"),
    (lambda d: d.update(bias_ih_l0=[0.0] * 16), TypeError,
     r"state_dict\['bias_ih_l0'\] must be a NumPy or CuPy array"),
    (lambda d: d.update({0: d["bias_ih_l0"]}), TypeError, "keys must be parameter names"),
])
def test_load_state_dict_errors_leave_the_layer_unchanged(change, error, match):
    layer = fastrnn.LSTM(3, 4, num_layers=2, seed=0)
    before = {n: a.copy() for n, a in layer.state_dict().items()}
    d = {n: np.zeros_like(a) for n, a in before.items()}
    change(d)
    with pytest.raises(error, match=match):
        layer.load_state_dict(d)
    for name, a in layer.state_dict().items():
        np.testing.assert_array_equal(a, before[name])
    with pytest.raises(TypeError, match="must be a mapping"):
        layer.load_state_dict(list(before.items()))


# ----------------------------------------------------------------------------------------------
# Argument checks and errors


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(input_size=0), ValueError, "input_size must be at least 1"),
    (dict(hidden_size=2.0), TypeError, "hidden_size must be an int"),
    (dict(num_layers=0), ValueError, "num_layers must be at least 1"),
    (dict(num_layers=True), TypeError, "num_layers must be an int"),
    (dict(dropout=1.5), ValueError, r"dropout must be a number in \[0, 1\]"),
    (dict(dropout=-0.1), ValueError, "dropout must be"),
    (dict(dropout="0.1"), ValueError, "dropout must be"),
    (dict(bias=1), TypeError, "bias must be True or False"),
    (dict(batch_first=None), TypeError, "batch_first must be True or False"),
    (dict(bidirectional="yes"), TypeError, "bidirectional must be True or False"),
    (dict(dtype=np.float16), TypeError, "dtype must be numpy.float32 or numpy.float64"),
    (dict(dtype="complex"), TypeError, "dtype must be"),
    (dict(backend="fortran"), ValueError, "backend must be one of"),
    (dict(seed="abc"), TypeError, "seed must be"),
])
def test_constructor_checks(kwargs, error, match):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fastrnn.LSTM(**args)


def test_variant_arguments_and_repr():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        fastrnn.RNN(3, 4, 1, "sigmoid")
    with pytest.raises(TypeError, match="linear_before_reset must be True or False"):
        fastrnn.GRU(3, 4, linear_before_reset=0)
    assert fastrnn.RNN(3, 4, 2, "relu").nonlinearity == "relu"  # torch's positional order
    assert repr(fastrnn.GRU(3, 4, 2, bidirectional=True, linear_before_reset=False)) == (
        "GRU(3, 4, num_layers=2, linear_before_reset=False, bidirectional=True)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastrnn.LSTM(3, 4, num_layers=1, dropout=0.5)  # torch warns here; fastrnn does not


def test_forward_and_backward_errors(backend):
    layer = fastrnn.LSTM(3, 4, num_layers=2, dtype=np.float64, backend=backend)
    x = np.zeros((5, 2, 3))
    h = np.zeros((2, 2, 4))
    with pytest.raises(RuntimeError, match="no forward has run yet"):
        layer.backward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, I\)"):
        layer(x[0])
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, input_size\) = \(5, 2, 3\)"):
        layer(np.zeros((5, 2, 2)))
    with pytest.raises(TypeError, match="x must have the layer's dtype float64, got float32"):
        layer(x.astype(np.float32))
    with pytest.raises(TypeError, match=r"hx for the LSTM must be a pair \(h0, c0\)"):
        layer(x, h)
    with pytest.raises(ValueError, match=r"hx\[1\] \(c0\) must have shape"):
        layer(x, (h, h[:1]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\]"):
        layer(x, lengths=[0, 5])
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array"):
        layer(x.tolist())
    layer(x)
    with pytest.raises(ValueError, match=r"dy must have shape \(T, B, D\*H\) = \(5, 2, 4\)"):
        layer.backward(np.zeros((5, 2, 8)))
    with pytest.raises(ValueError, match=r"dc_n must have shape"):
        layer.backward(None, (None, h[:1]))
    dx, (dh0, dc0) = layer.backward(None, h + 1)  # dh_n alone is fine for the LSTM
    assert dx.shape == x.shape and dh0.shape == dc0.shape == h.shape
    with pytest.raises(RuntimeError, match="already consumed by a backward call"):
        layer.backward()


def test_empty_sequences_and_batches(backend):
    layer = fastrnn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                        dtype=np.float64, backend=backend, dropout=0.5)
    for shape in [(2, 0, 3), (0, 5, 3)]:
        B = shape[0]
        h0 = np.random.default_rng(0).standard_normal((4, B, 4))
        y, h_n = layer(np.zeros(shape), h0)
        assert y.shape == shape[:2] + (8,)
        np.testing.assert_array_equal(h_n, h0)
        dh_n = h0 + 1
        dx, dh0 = layer.backward(np.zeros(y.shape), dh_n)
        assert dx.shape == shape and not dx.any()
        np.testing.assert_array_equal(dh0, dh_n)


def test_to_moves_between_backends(backend):
    layer = fastrnn.LSTM(3, 4, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    y_default = layer(x)[0]
    assert layer.to(backend) is layer
    assert layer.device == "cpu"
    assert_close(layer(x)[0], y_default, np.float64, "y after to()")
    layer.to("cpu")
    assert layer.backend is None
    layer(x)
    layer.to(backend)
    with pytest.raises(RuntimeError, match="moved with to"):
        layer.backward()
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.to("fortran")
    with pytest.raises(TypeError, match="to\\(\\) takes 'cpu', 'cuda' or a backend name"):
        layer.to(0)


def test_to_cuda_explains_why_it_cannot_run():
    if "cupy" in fastrnn.available_backends():
        pytest.skip("the cupy backend runs here")
    layer = fastrnn.GRU(3, 4)
    with pytest.raises(fastrnn.BackendUnavailable, match="cupy.*cannot run here"):
        layer.to("cuda")
    assert layer.device == "cpu" and layer.backend is None  # unchanged


# ----------------------------------------------------------------------------------------------
# clip_grad_norm


@needs_torch
@pytest.mark.parametrize("fraction", [0.3, 0.9, 1.5])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_matches_torch(fraction, norm_type):
    import torch

    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((4, 3)).astype(np.float32),
             "b": rng.standard_normal(5).astype(np.float32)}
    flat = np.concatenate([g.ravel() for g in grads.values()]).astype(np.float64)
    max_norm = fraction * np.linalg.norm(flat, ord=norm_type)
    tensors = [torch.zeros(g.shape, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.from_numpy(g.copy())
    held = grads["a"]
    expected = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type=norm_type)
    total = fastrnn.clip_grad_norm(grads, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, expected.item(), rtol=1e-6)
    assert grads["a"] is held  # scaled in place
    for g, t in zip(grads.values(), tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6, atol=0)
    if max_norm < total:
        new_total = fastrnn.clip_grad_norm(list(grads.values()), 1e9, norm_type=norm_type)
        np.testing.assert_allclose(new_total, max_norm, rtol=1e-5)


def test_clip_grad_norm_on_layer_grads_and_errors():
    layer = fastrnn.RNN(2, 3, seed=0, dtype=np.float64)
    layer(np.ones((3, 1, 2)))
    layer.backward(np.ones((3, 1, 3)))
    total = np.sqrt(sum((g ** 2).sum() for g in layer.grads.values()))
    assert fastrnn.clip_grad_norm(layer.grads, total / 2) == pytest.approx(total, rel=1e-12)
    clipped = np.sqrt(sum((g ** 2).sum() for g in layer.grads.values()))
    assert clipped == pytest.approx(total / 2, rel=1e-5)
    assert fastrnn.clip_grad_norm({}, 1.0) == 0.0
    with pytest.raises(ValueError, match="max_norm must be a non-negative number"):
        fastrnn.clip_grad_norm(layer.grads, -1)
    with pytest.raises(ValueError, match="norm_type must be a positive number"):
        fastrnn.clip_grad_norm(layer.grads, 1.0, norm_type=0)
    with pytest.raises(TypeError, match=r"grads\[1\] must be a NumPy or CuPy array"):
        fastrnn.clip_grad_norm([np.ones(2), [1.0]], 1.0)

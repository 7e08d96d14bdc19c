"""fastrnn.torch modules against torch.nn: outputs, states and every gradient, on random
configurations, and the fixed checks (gradcheck, retain_graph, double backward, state dicts,
dropout, convert, errors, a training run)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from torch_helpers import (KINDS, assert_same, forward_backward, make_input,  # noqa: E402
                           twins)

pytestmark = pytest.mark.torch


def _configs(n, seed=13):
    """n random configurations, each input mode and dtype equally often."""
    rng = random.Random(seed)
    modes = ["padded", "unbatched", "packed_sorted", "packed_unsorted"]
    out = []
    for i in range(n):
        out.append(dict(
            kind=list(KINDS)[i % 4], mode=modes[(i // 4) % 4],
            dtype=(torch.float32, torch.float64)[(i // 2) % 2],
            num_layers=rng.randint(1, 3), bidirectional=rng.random() < 0.5,
            batch_first=rng.random() < 0.5, bias=rng.random() < 0.75,
            hx=rng.random() < 0.5, T=rng.randint(1, 6), B=rng.randint(1, 4),
            I=rng.randint(1, 5), H=rng.randint(1, 6), seed=i))
    return out


@pytest.mark.parametrize("cfg", _configs(48), ids=lambda c: (
    f"{c['kind']}-{c['mode']}-{str(c['dtype'])[6:]}-L{c['num_layers']}"
    f"{'-bi' if c['bidirectional'] else ''}{'-bf' if c['batch_first'] else ''}"
    f"{'' if c['bias'] else '-nobias'}{'-hx' if c['hx'] else ''}"))
def test_matches_torch_nn(cfg):
    torch.manual_seed(cfg["seed"])
    dtype = cfg["dtype"]
    ref, ours = twins(cfg["kind"], cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
                      batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"],
                      dtype=dtype)
    gen = torch.Generator().manual_seed(cfg["seed"])
    inp, leaf = make_input(cfg["mode"], cfg["T"], cfg["B"], cfg["I"], dtype,
                           cfg["batch_first"], gen)
    hx = None
    if cfg["hx"]:
        D = 2 if cfg["bidirectional"] else 1
        shape = (cfg["num_layers"] * D,) + (() if cfg["mode"] == "unbatched" else (cfg["B"],))
        make = lambda: torch.randn(shape + (cfg["H"],), dtype=dtype, generator=gen,  # noqa
                                   requires_grad=True)
        hx = (make(), make()) if cfg["kind"] == "lstm" else make()
    expected = forward_backward(ref, inp, leaf, hx, cfg["seed"])
    actual = forward_backward(ours, inp, leaf, hx, cfg["seed"])
    assert_same(expected, actual, dtype)


# ----------------------------------------------------------------------------------------------
# Autograd


def _small(kind="lstm", dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    ref, ours = twins(kind, 3, 4, 2, dtype=dtype, **kwargs)
    x = torch.randn(5, 2, 3, dtype=dtype, requires_grad=True)
    return ref, ours, x


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck(kind):
    _, ours, x = _small(kind, bidirectional=True)
    lengths = torch.tensor([5, 3])
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    hx = (h0, torch.randn_like(h0).requires_grad_()) if kind == "lstm" else h0
    params = list(ours.parameters())

    def f(x, *tensors):
        state = tensors[:len(tensors) - len(params)]
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
        out, _ = torch.func.functional_call(
            ours, dict(zip(dict(ours.named_parameters()), tensors[len(state):])),
            (packed, tuple(state) if kind == "lstm" else state[0]))
        return out.data

    inputs = (x, *(hx if kind == "lstm" else (hx,)), *params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_retain_graph_accumulates_as_torch():
    ref, ours, x = _small(bidirectional=True)
    grads = []
    for module in (ref, ours):
        x.grad = None
        y, (h, c) = module(x)
        loss = (y ** 2).sum() + h.sum()
        loss.backward(retain_graph=True)
        first = [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]
        loss.backward()
        grads.append([x.grad] + [p.grad for p in module.parameters()])
        for a, b in zip(first, grads[-1]):  # the second backward recomputed the consumed state
            torch.testing.assert_close(b, 2 * a, rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_double_backward_matches_torch(kind):
    """create_graph=True runs the slow torch-operations fallback; a gradient penalty's gradient
    matches torch.nn's."""
    results = []
    ref, ours, x = _small(kind)
    for module in (ref, ours):
        x.grad = None
        for p in module.parameters():
            p.grad = None
        y, _ = module(x)
        (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
        (gx.pow(2).sum() + y.sum()).backward()
        results.append([x.grad] + [p.grad for p in module.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_eval_mode_still_backpropagates_and_no_grad_keeps_nothing():
    from fastrnn.torch import ops

    ref, ours, x = _small("gru", dropout=0.5)
    ref.eval(), ours.eval()
    expected = torch.autograd.grad(ref(x)[0].sum(), x)[0]
    torch.testing.assert_close(torch.autograd.grad(ours(x)[0].sum(), x)[0], expected,
                               rtol=1e-10, atol=1e-10)
    before = ops.pending_states()
    with torch.no_grad():
        y, _ = ours(x)
    assert not y.requires_grad and ops.pending_states() == before


def test_saved_states_are_freed_with_the_graph():
    """Forwards whose graphs are dropped without backward, backward once, retain_graph: the
    registry of saved states returns to empty and memory does not grow."""
    import psutil

    from fastrnn.torch import ops

    torch.manual_seed(0)
    model = ft.LSTM(8, 32, 2)
    x = torch.randn(20, 4, 8)
    rss = []
    for step in range(60):
        y, state = model(x)
        if step % 3 == 0:
            y.sum().backward()
        elif step % 3 == 1:
            y.sum().backward(retain_graph=True)
        del y, state  # the graph goes with its outputs (by reference counting: no cycles)
        assert ops.pending_states() == 0
        if step in (20, 59):
            rss.append(psutil.Process().memory_info().rss)
    assert rss[1] - rss[0] < 8 * 2**20, rss


# ----------------------------------------------------------------------------------------------
# Parameters, state dicts, dropout, convert


@pytest.mark.parametrize("kind", list(KINDS))
def test_initialisation_names_and_repr_as_torch(kind):
    ref_cls, cls, extra = KINDS[kind]
    torch.manual_seed(5)
    ref = ref_cls(3, 4, 2, bidirectional=True, batch_first=True, bias=False, **extra)
    torch.manual_seed(5)
    ours = cls(3, 4, 2, bidirectional=True, batch_first=True, bias=False, **extra)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    # torch.nn's repr, plus the nonlinearity when it is not tanh
    assert repr(ours).split("(", 1)[1].startswith(repr(ref).split("(", 1)[1][:-1])
    assert [[p.shape for p in layer] for layer in ours.all_weights] == [
        [p.shape for p in layer] for layer in ref.all_weights]
    ours.flatten_parameters()


def test_state_dict_round_trips_and_moves():
    ref, ours, x = _small("gru", dtype=torch.float32, bidirectional=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref2 = torch.nn.GRU(3, 4, 2, bidirectional=True)
    ref2.load_state_dict(ours.state_dict(), strict=True)
    x = x.detach().float()
    torch.testing.assert_close(ours(x)[0], ref2(x)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="Missing key"):
        ours.load_state_dict({k: v for k, v in ref.state_dict().items() if "l1" not in k})
    ours.double(), ref2.double()
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    torch.testing.assert_close(ours(x.double())[0], ref2(x.double())[0], rtol=1e-10,
                               atol=1e-10)
    ours.to(torch.float32)
    assert ours.weight_ih_l0.dtype == torch.float32
    assert ours.eval() is ours and not ours.training and ours.train().training


def test_dropout_reproducible_and_as_torch_nn():
    """Masks come from torch's generator in torch.nn's order and shape, so the same seed gives
    torch.nn's numbers, dropout included."""
    ref, ours, x = _small("lstm", dtype=torch.float64, dropout=0.4)
    outs = []
    for module in (ours, ours, ref):
        torch.manual_seed(11)
        outs.append(module(x)[0])
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-10, atol=1e-10)
    torch.manual_seed(12)
    assert not torch.equal(ours(x)[0], outs[0])
    torch.manual_seed(11)
    g_ours = torch.autograd.grad(ours(x)[0].sum(), x)[0]
    torch.manual_seed(11)
    g_ref = torch.autograd.grad(ref(x)[0].sum(), x)[0]
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-10)


def test_convert_embedding_lstm_linear():
    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(20, 6)
            self.body = torch.nn.Sequential(torch.nn.LSTM(6, 8, 2, batch_first=True))
            self.head = torch.nn.Linear(8, 5)

        def forward(self, tokens):
            return self.head(self.body(self.embed(tokens))[0])

    torch.manual_seed(0)
    model = Tagger().double().eval()
    tokens = torch.randint(0, 20, (3, 7))
    expected = model(tokens)
    assert ft.convert(model) is model
    lstm = model.body[0]
    assert type(lstm) is ft.LSTM and not lstm.training and lstm.batch_first
    assert lstm.weight_hh_l1.dtype == torch.float64
    torch.testing.assert_close(model(tokens), expected, rtol=1e-10, atol=1e-10)
    assert type(ft.convert(torch.nn.GRU(2, 3))) is ft.GRU
    rnn = ft.RNN.from_torch(torch.nn.RNN(2, 3, nonlinearity="relu"))
    assert rnn.nonlinearity == "relu"
    projected = torch.nn.LSTM(4, 6, proj_size=2)
    converted = ft.LSTM.from_torch(projected)
    assert converted.proj_size == 2 and converted.weight_hr_l0.shape == (2, 6)
    torch.testing.assert_close(converted.weight_hr_l0, projected.weight_hr_l0, rtol=0, atol=0)
    with pytest.raises(TypeError, match="takes a torch.nn.GRU"):
        ft.GRU.from_torch(torch.nn.LSTM(4, 6))


def test_errors():
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        ft.LSTM(4, 6, proj_size=6)
    with pytest.raises(ValueError, match="proj_size should be a positive integer or zero"):
        ft.LSTM(4, 6, proj_size=-1)
    with pytest.raises(ValueError, match=r"zoneout must be a number in \[0, 1\]"):
        ft.GRU(4, 6, zoneout=1.5)
    with pytest.raises(ValueError, match="dropout should be"):
        ft.GRU(4, 6, dropout=2)
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        ft.GRU(4, 6, dtype=torch.float16)
    m = ft.LSTM(3, 4)
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=f"input has dtype {dtype}"):
            m(torch.zeros(2, 1, 3, dtype=dtype))
    with pytest.raises(TypeError, match="input is a torch.float64 tensor"):
        m(torch.zeros(2, 1, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 2, 4\) for h_0"):
        m(torch.zeros(2, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(TypeError, match="pair"):
        m(torch.zeros(2, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="2D or 3D"):
        m(torch.zeros(3))


def test_backend_and_textbook_gru():
    """backend= picks the NumPy reference; the textbook GRU (not in torch.nn) matches the NumPy
    layer."""
    import numpy as np

    import fastrnn

    torch.manual_seed(0)
    a = ft.GRU(3, 4, linear_before_reset=False, dtype=torch.float64)
    b = ft.GRU(3, 4, linear_before_reset=False, dtype=torch.float64, backend="numpy")
    b.load_state_dict(a.state_dict())
    layer = fastrnn.GRU(3, 4, linear_before_reset=False, dtype=np.float64)
    layer.load_state_dict(a.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a(x)[0].detach().numpy(), layer(x.numpy())[0], rtol=1e-10)
    assert "linear_before_reset=False" in repr(a) and "backend='numpy'" in repr(b)


# ----------------------------------------------------------------------------------------------
# Training


def test_training_run_follows_torch_nn():
    """Adam, 50 steps, a fixed copy task in float64: the loss curves agree step by step."""
    curves = []
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(12, 16, 4, generator=gen, dtype=torch.float64)
    target = torch.roll(x, 2, dims=0)[..., :2]
    for use_fastrnn in (False, True):
        torch.manual_seed(1)
        rnn = torch.nn.LSTM(4, 16, 2, dtype=torch.float64)
        head = torch.nn.Linear(16, 2, dtype=torch.float64)
        if use_fastrnn:
            rnn = ft.convert(rnn)
        opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-2)
        curve = []
        for _ in range(50):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(head(rnn(x)[0]), target)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        curves.append(curve)
    assert curves[0][-1] < 0.5 * curves[0][0]  # it learns
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=1e-10,
                               atol=1e-10)

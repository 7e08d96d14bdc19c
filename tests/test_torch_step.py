"""fastrnn.torch modules' step: equal to forward, in-place updates seen (optimizer steps and
writes through .data, which leave the version counter alone), autograd in training mode and
nothing kept when no gradient is wanted."""

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from fastrnn.torch import ops  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
KINDS = {"rnn_tanh": (ft.RNN, {}), "rnn_relu": (ft.RNN, {"nonlinearity": "relu"}),
         "lstm": (ft.LSTM, {}), "gru": (ft.GRU, {})}


def make(kind, *args, **kwargs):
    cls, extra = KINDS[kind]
    return cls(*args, **extra, **kwargs)


def states(hx):
    return hx if isinstance(hx, tuple) else (hx,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_step_equals_forward(kind, dtype):
    torch.manual_seed(0)
    for batch_first, batched in ((False, True), (True, True), (False, False)):
        m = make(kind, 5, 6, num_layers=2, batch_first=batch_first, dtype=dtype).eval()
        shape = ((3, 4, 5) if batch_first else (4, 3, 5)) if batched else (4, 5)
        x = torch.randn(shape, dtype=dtype)
        y, finals = m(x)
        h, time_dim = None, 1 if batch_first and batched else 0
        for t in range(4):
            y_t, h = m.step(x.select(time_dim, t), h)
            torch.testing.assert_close(y_t, y.select(time_dim, t), **TOL[dtype])
            assert not y_t.requires_grad
        for got, want in zip(states(h), states(finals)):
            torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_large_batch_steps_run_on_torchs_thread_count(kind, monkeypatch):
    """A batch at or above the numba backend's step_forward_min_state steps through the
    forward path, which runs on torch's thread count; the numbers are forward's."""
    import fastrnn
    from fastrnn.torch import devices

    backend = fastrnn.get_backend("numba")
    monkeypatch.setattr(backend, "step_forward_min_state", 3 * 6)
    seen = []
    running = devices.adapter_for(torch.device("cpu")).running

    def spy(*args):
        seen.append(args)
        return running(*args)

    monkeypatch.setattr(devices.adapter_for(torch.device("cpu")), "running", spy)
    torch.manual_seed(2)
    m = make(kind, 5, 6, num_layers=2, dtype=torch.float64).eval()
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    y, _ = m(x)
    y_0, h = m.step(x[0])
    assert len(seen) == 2  # the forward, then the step
    torch.testing.assert_close(y_0, y[0], **TOL[torch.float64])
    torch.testing.assert_close(m.step(x[1], h)[0], y[1], **TOL[torch.float64])
    monkeypatch.setattr(backend, "step_forward_min_state", 3 * 6 + 1)
    m.step(x[0])
    assert len(seen) == 3  # the step kernel is serial: no thread setting


@pytest.mark.parametrize("kind", list(KINDS))
def test_step_sees_optimizer_steps_and_data_writes(kind):
    torch.manual_seed(1)
    m = make(kind, 4, 5, num_layers=2, dtype=torch.float64).eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    first, _ = m.step(x)
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    (m(x[None])[0] - 1).square().sum().backward()  # outputs pushed up: no relu dies
    opt.step()
    after_step, _ = m.step(x)
    torch.testing.assert_close(after_step, m(x[None])[0][0].detach(), **TOL[torch.float64])
    assert (after_step - first).abs().max() > 1e-3
    versions = [p._version for p in m.parameters()]
    for p in m.parameters():
        p.data.mul_(1.5)  # the counter does not move: the step must still see it
    assert [p._version for p in m.parameters()] == versions
    scaled, _ = m.step(x)
    torch.testing.assert_close(scaled, m(x[None])[0][0].detach(), **TOL[torch.float64])
    assert (scaled - after_step).abs().max() > 1e-3
    m.weight_hh_l1.data = torch.randn_like(m.weight_hh_l1)  # new memory
    rebound, _ = m.step(x)
    torch.testing.assert_close(rebound, m(x[None])[0][0].detach(), **TOL[torch.float64])


def test_training_step_has_autograd():
    torch.manual_seed(2)
    m = make("lstm", 3, 4, num_layers=2, dtype=torch.float64)
    twin = make("lstm", 3, 4, num_layers=2, dtype=torch.float64)
    twin.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64)
    y_t, (h, c) = m.step(x)
    assert y_t.grad_fn is not None
    (y_t.sum() + c.sum()).backward()
    y, (_, c_n) = twin(x[None])
    (y[0].sum() + c_n.sum()).backward()
    for (name, p), q in zip(m.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL[torch.float64], msg=name)
    assert torch.autograd.gradcheck(lambda a: m.step(a)[0], (x.clone().requires_grad_(),))


def test_no_grad_steps_keep_nothing():
    m = make("gru", 3, 4, num_layers=2).eval()
    held = ops.pending_states()
    x = torch.randn(2, 3)
    with torch.no_grad():
        m.train()
        y_train, _ = m.step(x)  # training mode without dropout: the same inference step
    m.eval()
    y_eval, h = m.step(x)
    assert not y_eval.requires_grad and not h.requires_grad
    assert ops.pending_states() == held
    torch.testing.assert_close(y_train, y_eval, rtol=0, atol=0)


def test_dropout_still_applies_in_training_mode_without_grad():
    m = make("gru", 3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(2, 3)
    with torch.no_grad():
        torch.manual_seed(3)
        y_step, _ = m.step(x)
        torch.manual_seed(3)
        y_forward, _ = m(x[None])
    torch.testing.assert_close(y_step, y_forward[0], rtol=0, atol=0)
    assert (y_step - m.eval().step(x)[0]).abs().max() > 1e-4


def test_step_errors():
    with pytest.raises(ValueError, match="bidirectional"):
        make("lstm", 3, 4, bidirectional=True).step(torch.zeros(2, 3))
    m = make("lstm", 3, 4).eval()
    with pytest.raises(ValueError, match=r"expected input \(N, H_in\)"):
        m.step(torch.zeros(1, 2, 3))
    with pytest.raises(TypeError, match="input is a torch.float64 tensor"):
        m.step(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        m.step(torch.zeros(2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)))

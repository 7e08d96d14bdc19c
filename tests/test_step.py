"""layer.step / module.step, the decoding step: one time step through every layer equals the
forward over a sequence, the weights are read as they are (in-place updates are seen), and eval
steps keep nothing for backward."""

import numpy as np
import pytest

import fastrnn
from fastrnn.tolerances import tolerance

LAYERS = {"rnn_tanh": (fastrnn.RNN, {}), "rnn_relu": (fastrnn.RNN, {"nonlinearity": "relu"}),
          "lstm": (fastrnn.LSTM, {}), "gru": (fastrnn.GRU, {}),
          "gru_textbook": (fastrnn.GRU, {"linear_before_reset": False})}
BACKENDS = ["numba", "numpy"]


def make(kind, *args, **kwargs):
    cls, extra = LAYERS[kind]
    return cls(*args, **extra, **kwargs)


def as_tuple(hx):
    return hx if isinstance(hx, tuple) else (hx,)


def random_hx(kind, L, B, H, dtype, rng):
    states = tuple(rng.standard_normal((L, B, H)).astype(dtype)
                   for _ in range(2 if kind == "lstm" else 1))
    return states if kind == "lstm" else states[0]


def assert_steps_match_forward(layer, x, hx, dtype, label):
    """Stepping through x (T, B, I) gives forward's y at every step and its final states."""
    y, finals = layer(x, hx)
    h = hx
    for t in range(x.shape[0]):
        y_t, h = layer.step(x[t], h)
        assert y_t.shape == y.shape[1:] and y_t.dtype == dtype
        np.testing.assert_allclose(y_t, y[t], err_msg=f"{label} y[{t}]", **tolerance(dtype))
    for got, want in zip(as_tuple(h), as_tuple(finals)):
        np.testing.assert_allclose(got, want, err_msg=f"{label} final", **tolerance(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_steps_equal_forward(kind, dtype, backend):
    rng = np.random.default_rng(1)
    for L, B, bias in ((1, 1, True), (2, 3, True), (3, 2, False)):
        layer = make(kind, 5, 7, num_layers=L, bias=bias, dtype=dtype, backend=backend,
                     seed=L).eval()
        x = rng.standard_normal((6, B, 5)).astype(dtype)
        for hx in (None, random_hx(kind, L, B, 7, dtype, rng)):
            assert_steps_match_forward(layer, x, hx, dtype, f"{kind} L={L} B={B} bias={bias}")


@pytest.mark.parametrize("kind", list(LAYERS))
def test_large_batches_step_through_forward(kind, monkeypatch):
    """From step_forward_min_state state elements on, the numba step is a forward of one step
    per layer (never the serial kernel); both paths give forward's numbers."""
    backend = fastrnn.get_backend("numba")
    rng = np.random.default_rng(3)
    layer = make(kind, 5, 7, num_layers=2, dtype=np.float64, backend="numba", seed=2).eval()
    x = rng.standard_normal((4, 6, 5))
    hx = random_hx(kind, 2, 6, 7, np.float64, rng)
    per_path = []
    for limit in (6 * 7 + 1, 6 * 7):
        monkeypatch.setattr(backend, "step_forward_min_state", limit)
        if limit == 6 * 7:
            monkeypatch.setattr(backend, "_stepper", lambda *a: pytest.fail("the kernel ran"))
        assert_steps_match_forward(layer, x, hx, np.float64, f"{kind} limit {limit}")
        per_path.append(layer.step(x[0], hx)[0])
    np.testing.assert_allclose(*per_path, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_step_sees_in_place_updates(kind):
    """An update of the parameter arrays in place (an optimizer step, load_state_dict) between
    two steps is seen by the second."""
    rng = np.random.default_rng(2)
    layer = make(kind, 4, 6, num_layers=2, dtype=np.float64, seed=0).eval()
    x, hx = rng.standard_normal((3, 4)), random_hx(kind, 2, 3, 6, np.float64, rng)
    before, _ = layer.step(x, hx)
    params = layer.named_parameters()
    params["weight_hh_l1"] *= 1.5  # in place, as an optimizer updates
    params["bias_ih_l0"] -= 0.25
    after, _ = layer.step(x, hx)
    y, _ = layer(x[None], hx)
    np.testing.assert_allclose(after, y[0], rtol=1e-12, atol=1e-12)
    assert np.abs(after - before).max() > 1e-3
    fresh = make(kind, 4, 6, num_layers=2, dtype=np.float64, seed=5)
    layer.load_state_dict(fresh.state_dict())
    loaded, _ = layer.step(x, hx)
    np.testing.assert_allclose(loaded, fresh.eval()(x[None], hx)[0][0], rtol=1e-12, atol=1e-12)


def test_step_follows_the_layer_to_another_backend():
    rng = np.random.default_rng(3)
    layer = make("lstm", 4, 5, dtype=np.float64, seed=1).eval()
    x = rng.standard_normal((2, 4))
    on_numba, _ = layer.step(x)
    layer.to("numpy")
    on_reference, _ = layer.step(x)
    np.testing.assert_allclose(on_reference, on_numba, rtol=1e-12, atol=1e-12)


def test_eval_step_keeps_nothing_and_inputs_stay():
    rng = np.random.default_rng(4)
    layer = make("lstm", 4, 5, num_layers=2, seed=1).eval()
    x = rng.standard_normal((3, 4)).astype(np.float32)
    hx = random_hx("lstm", 2, 3, 5, np.float32, rng)
    copies = [a.copy() for a in (x, *hx)]
    layer.step(x, hx)
    assert layer.last_forward is None
    with pytest.raises(RuntimeError, match="step in eval mode"):
        layer.backward(np.ones((1, 3, 5), np.float32))
    for a, b in zip((x, *hx), copies):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch_first", [False, True])
def test_training_step_is_a_forward_of_one_step(batch_first):
    """In training mode step keeps what backward needs: the gradients are those of forward over
    a sequence of one step."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3))
    layers = [make("gru", 3, 4, num_layers=2, batch_first=batch_first, dtype=np.float64,
                   seed=2) for _ in range(2)]
    y_t, h = layers[0].step(x)
    assert y_t.shape == (2, 4)
    dy = np.ones((2, 1, 4) if batch_first else (1, 2, 4))
    layers[0].backward(dy)
    y, _ = layers[1](x[:, None] if batch_first else x[None])
    layers[1].backward(dy)
    np.testing.assert_allclose(y_t, y[:, 0] if batch_first else y[0], rtol=1e-12)
    for name, g in layers[1].grads.items():
        np.testing.assert_allclose(layers[0].grads[name], g, rtol=1e-12, err_msg=name)
    assert np.abs(layers[0].grads["weight_hh_l1"]).max() == 0  # zero state: no W_hh gradient
    assert np.abs(layers[0].grads["weight_ih_l1"]).max() > 0


def test_step_errors_name_the_argument():
    layer = make("lstm", 4, 5, num_layers=2).eval()
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="bidirectional"):
        make("gru", 4, 5, bidirectional=True).eval().step(x)
    with pytest.raises(ValueError, match=r"x must have shape \(B, input_size\)"):
        layer.step(x[None])
    with pytest.raises(ValueError, match=r"x must have shape \(B, input_size\) = \(3, 4\)"):
        layer.step(np.zeros((3, 6), np.float32))
    with pytest.raises(TypeError, match="x must have the layer's dtype float32"):
        layer.step(x.astype(np.float64))
    with pytest.raises(TypeError, match="hx for the LSTM must be a pair"):
        layer.step(x, np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"hx\[1\] \(c\) must have shape"):
        layer.step(x, (np.zeros((2, 3, 5), np.float32), np.zeros((1, 3, 5), np.float32)))


def test_step_takes_strided_and_read_only_inputs():
    """Views and read-only arrays go through the same compiled step (typed again for them)."""
    rng = np.random.default_rng(6)
    layer = make("rnn_tanh", 4, 5, num_layers=2, dtype=np.float64, seed=3).eval()
    wide = rng.standard_normal((3, 8))
    x = wide[:, ::2]
    h = rng.standard_normal((2, 3, 5))
    want, want_h = layer(np.ascontiguousarray(x)[None], h)
    h.flags.writeable = False
    for _ in range(2):
        got, got_h = layer.step(x, h)
        np.testing.assert_allclose(got, want[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_h, want_h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_one_step_functional_calls(kind):
    """A one-step inference call of the functional API runs the step kernel: it matches the
    NumPy reference, and the same arrays updated in place between calls give the new result."""
    from helpers import FORWARD, make_problem
    from fastrnn.cells import cell_by_name

    cell = cell_by_name(kind)
    p = make_problem(cell, 1, 3, 4, 6, np.float64, seed=7)
    forward = FORWARD[cell.kind]
    for _ in range(2):
        got = forward(**p, **cell.options, training=False, backend="numba")
        want = forward(**p, **cell.options, training=False, backend="numpy")
        assert got[-1] is None
        for g, w in zip(got[:-1], want[:-1]):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
        p["W_hh"] *= 1.7  # in place: the second round must see it
        p["b_ih"] += 0.3

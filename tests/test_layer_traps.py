"""The NumPy layers' two traps of issue 13, closed: load_state_dict copies, and a second
training forward before backward is either backpropagated through its handle or refused."""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn


def test_load_state_dict_copies_and_keeps_earlier_references():
    src = fastrnn.LSTM(3, 4, seed=0)
    dst = fastrnn.LSTM(3, 4, seed=1)
    held = dict(dst.named_parameters())
    state = src.state_dict()
    dst.load_state_dict(state)
    dst.named_parameters()["weight_ih_l0"] += 1  # an optimizer step in place
    np.testing.assert_array_equal(state["weight_ih_l0"] + 1, dst.state_dict()["weight_ih_l0"])
    for name, a in held.items():
        assert a is dst.named_parameters()[name]  # still the layer's own arrays


def test_parameters_in_torch_order():
    layer = fastrnn.GRU(3, 4, 2, bidirectional=True)
    named = layer.named_parameters()
    params = list(layer.parameters())
    assert len(params) == len(named) == 16
    assert all(p is q for p, q in zip(params, named.values()))


def test_second_training_forward_needs_a_handle():
    rng = np.random.default_rng(0)
    layer = fastrnn.GRU(3, 4, dtype=np.float64, seed=0)
    a, b = rng.standard_normal((5, 2, 3)), rng.standard_normal((6, 2, 3))
    dy_a, dy_b = rng.standard_normal((5, 2, 4)), rng.standard_normal((6, 2, 4))
    expected = []
    for x, dy in ((a, dy_a), (b, dy_b)):
        layer(x)
        expected.append(layer.backward(dy)[0])
    layer(a)
    handle_a = layer.last_forward
    layer(b)
    with pytest.raises(RuntimeError, match="two training forwards ran before a backward"):
        layer.backward(dy_a)
    np.testing.assert_array_equal(layer.backward(dy_a, handle=handle_a)[0], expected[0])
    del handle_a  # consumed and dropped: the last forward is unambiguous now
    np.testing.assert_array_equal(layer.backward(dy_b)[0], expected[1])
    layer(a)
    layer(b)  # the first forward abandoned: still ambiguous, still refused
    with pytest.raises(RuntimeError, match="ambiguous"):
        layer.backward(dy_b)
    with pytest.raises(TypeError, match="handle must be a last_forward of this layer"):
        layer.backward(dy_b, handle=fastrnn.GRU(3, 4).last_forward or object())

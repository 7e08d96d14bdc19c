"""The functional API's contract: dispatch, input checks, ctx lifetime, empty inputs."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import dispatch
from fastrnn.cells import ALL_CELLS, Cell
from helpers import BACKWARD, FORWARD, make_cotangents, make_problem, run, variant_kwargs

LSTM = Cell("lstm")


def test_import_does_not_import_cupy_or_kernels():
    code = ("import sys, fastrnn; import numpy as np; "
            "print('cupy' in sys.modules, 'fastrnn.backends.numba_cpu' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_available_backends_lists_numpy_and_explains_cupy():
    names = fastrnn.available_backends()
    assert "numpy" in names
    if "cupy" not in names:
        with pytest.raises(fastrnn.BackendUnavailable, match="install"):
            fastrnn.get_backend("cupy")


def test_unknown_backend_is_a_value_error():
    p = make_problem(LSTM, 2, 2, 3, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        fastrnn.lstm_forward(**p, backend="fortran")


def test_selection_order(monkeypatch):
    p = make_problem(LSTM, 2, 2, 3, 4)
    default = "numba" if "numba" in fastrnn.available_backends() else "numpy"
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert fastrnn.lstm_forward(**p).ctx.backend.name == default
    monkeypatch.setenv(dispatch.ENV_VAR, "numpy")
    assert fastrnn.lstm_forward(**p).ctx.backend.name == "numpy"
    with fastrnn.use_backend(default):
        assert fastrnn.lstm_forward(**p).ctx.backend.name == default  # use_backend beats env
        assert fastrnn.lstm_forward(**p, backend="numpy").ctx.backend.name == "numpy"  # call wins
    assert fastrnn.lstm_forward(**p).ctx.backend.name == "numpy"  # restored: env again


def test_mixed_libraries_name_the_arguments():
    class Foreign:
        __module__ = "otherlib"
        dtype = np.dtype(np.float64)

    p = make_problem(LSTM, 2, 2, 3, 4)
    with pytest.raises(TypeError, match="W_hh must be a NumPy or CuPy array"):
        fastrnn.lstm_forward(**{**p, "W_hh": Foreign()})


@pytest.mark.parametrize("cell", ALL_CELLS, ids=[c.name for c in ALL_CELLS])
def test_inputs_are_not_modified_and_noncontiguous_inputs_work(cell):
    T, B, I, H = 5, 4, 3, 6
    p = make_problem(cell, T, B, I, H, lengths=True)
    cot = make_cotangents(cell, T, B, H)
    copies = {k: np.array(v, copy=True) for k, v in {**p, **cot}.items() if v is not None}
    expected = run(cell, p, cot, "numpy", reverse=True)
    for k, v in {**p, **cot}.items():
        if v is not None:
            np.testing.assert_array_equal(v, copies[k], err_msg=k)
    # Fortran-ordered and strided views of the same values give the same results.
    strided = {k: (np.asfortranarray(v) if isinstance(v, np.ndarray) and v.ndim > 1 else v)
               for k, v in p.items()}
    wide = np.zeros((T, B, 2 * I))
    wide[..., ::2] = p["x"]
    strided["x"] = wide[..., ::2]
    got = run(cell, strided, cot, "numpy", reverse=True)
    for a, b in zip(got, expected):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("cell", ALL_CELLS, ids=[c.name for c in ALL_CELLS])
@pytest.mark.parametrize("T,B", [(0, 3), (4, 0), (0, 0)])
def test_empty_inputs_give_empty_outputs(cell, T, B):
    p = make_problem(cell, max(T, 1), max(B, 1), 3, 4)
    p["x"] = p["x"][:T, :B]
    p["h0"] = p["h0"][:B]
    if cell.has_cell_state:
        p["c0"] = p["c0"][:B]
    cot = make_cotangents(cell, T, B, 4)
    outs, grads = run(cell, p, cot, "numpy")
    assert outs["y"].shape == (T, B, 4)
    np.testing.assert_array_equal(outs["h_n"], p["h0"])
    np.testing.assert_array_equal(grads["dh0"], cot["dh_n"])
    assert grads["dx"].shape == (T, B, 3)
    assert not grads["dW_hh"].any() and grads["dW_hh"].shape == p["W_hh"].shape


def test_inference_keeps_nothing_and_backward_on_it_is_clear():
    p = make_problem(LSTM, 3, 2, 3, 4)
    y, h_n, c_n, ctx = fastrnn.lstm_forward(**p, training=False, backend="numpy")
    y_train = fastrnn.lstm_forward(**p, backend="numpy").y
    np.testing.assert_array_equal(y, y_train)
    assert ctx is None
    with pytest.raises(TypeError, match="training=False"):
        fastrnn.lstm_backward(ctx)


def test_backward_consumes_ctx():
    p = make_problem(LSTM, 3, 2, 3, 4)
    ctx = fastrnn.lstm_forward(**p, backend="numpy").ctx
    g = fastrnn.lstm_backward(ctx, dh_n=np.ones((2, 4)))
    assert g.dx.shape == (3, 2, 3) and np.abs(g.dx).sum() > 0
    assert ctx.saved is None and ctx.consumed
    with pytest.raises(ValueError, match="already consumed"):
        fastrnn.lstm_backward(ctx)


def test_ctx_of_another_cell_is_refused():
    p = make_problem(Cell("gru"), 3, 2, 3, 4)
    ctx = fastrnn.gru_forward(**p, backend="numpy").ctx
    with pytest.raises(TypeError, match="gru_backward"):
        fastrnn.rnn_backward(ctx)


def test_gradients_without_bias_are_none():
    p = make_problem(LSTM, 3, 2, 3, 4, bias=False)
    g = fastrnn.lstm_backward(fastrnn.lstm_forward(**p, backend="numpy").ctx)
    assert g.db_ih is None and g.db_hh is None and g.dc0 is not None


BAD = [
    # (what to change, expected exception, words the message must contain)
    (dict(x=np.zeros((3, 2))), ValueError, "x must have shape (T, B, I)"),
    (dict(W_ih=np.zeros((16, 5))), ValueError, "W_ih must have shape (G*H, I)"),
    (dict(W_hh=np.zeros((12, 4))), ValueError, "W_hh must have shape (G*H, H)"),
    (dict(b_ih=np.zeros(15)), ValueError, "b_ih must have shape (G*H,)"),
    (dict(b_hh=np.zeros((16, 1))), ValueError, "b_hh must have shape (G*H,)"),
    (dict(h0=np.zeros((3, 4))), ValueError, "h0 must have shape (B, H)"),
    (dict(c0=np.zeros((2, 5))), ValueError, "c0 must have shape (B, H)"),
    (dict(x=np.zeros((3, 2, 3), np.float16)), TypeError, "x must have dtype float32 or float64"),
    (dict(W_hh=np.zeros((16, 4), np.int64)), TypeError, "W_hh must have dtype"),
    (dict(h0=np.zeros((2, 4), np.complex128)), TypeError, "h0 must have dtype"),
    (dict(x=np.zeros((3, 2, 3), np.float32)), TypeError, "x is float32"),
    (dict(x=None), TypeError, "x is required"),
    (dict(W_ih=[[0.0] * 3] * 16), TypeError, "W_ih must be a NumPy or CuPy array"),
    (dict(lengths=[1, 2.5]), TypeError, "lengths must hold integers"),
    (dict(lengths=np.array([1.0, 2.0])), TypeError, "lengths must hold integers"),
    (dict(lengths=[0, 2]), ValueError, "lengths must lie in [1, T]"),
    (dict(lengths=[4, 2]), ValueError, "lengths must lie in [1, T]"),
    (dict(lengths=[-1, 2]), ValueError, "lengths must lie in [1, T]"),
    (dict(lengths=[1, 2, 3]), ValueError, "lengths must have shape (B,)"),
    (dict(lengths=[True, False]), TypeError, "lengths must hold integers"),
    (dict(reverse="yes"), TypeError, "reverse must be True or False"),
]


@pytest.mark.parametrize("change,exc,words", BAD, ids=[w for _, _, w in BAD])
def test_bad_input_names_the_argument(change, exc, words):
    p = make_problem(LSTM, 3, 2, 3, 4)
    p.update(change)
    with pytest.raises(exc) as info:
        fastrnn.lstm_forward(**p, backend="numpy")
    assert words in str(info.value)


def test_unknown_nonlinearity():
    p = make_problem(Cell("rnn"), 3, 2, 3, 4)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        fastrnn.rnn_forward(**p, nonlinearity="sigmoid")


@pytest.mark.parametrize("name,shape", [("dy", (3, 2, 5)), ("dh_n", (2, 3)), ("dc_n", (4,))])
def test_bad_gradient_shapes(name, shape):
    p = make_problem(LSTM, 3, 2, 3, 4)
    ctx = fastrnn.lstm_forward(**p, backend="numpy").ctx
    with pytest.raises(ValueError, match=f"{name} must have shape"):
        fastrnn.lstm_backward(ctx, **{name: np.zeros(shape)})
    # a refused call leaves the ctx usable
    assert fastrnn.lstm_backward(ctx).dx.shape == (3, 2, 3)


def test_results_unpack_and_have_names():
    p = make_problem(LSTM, 3, 2, 3, 4)
    res = fastrnn.lstm_forward(**p, backend="numpy")
    y, h_n, c_n, ctx = res
    assert res.y is y and res.h_n is h_n and res.c_n is c_n and res.ctx is ctx
    np.testing.assert_array_equal(y[-1], h_n)


def test_numba_backend_runs_here():
    """Numba is a hard dependency: its backend must load, never fall back silently."""
    assert "numba" in fastrnn.available_backends(), dispatch.unavailable_reasons()

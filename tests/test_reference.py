"""The NumPy reference: backward against central finite differences, forward and backward
against torch.nn, and the textbook GRU against a direct transcription of its equations."""

import numpy as np
import pytest

from fastrnn.cells import ALL_CELLS, Cell
from helpers import (FORWARD, assert_close, make_cotangents, make_problem, run, torch_run,
                     variant_kwargs)

CELL_IDS = [c.name for c in ALL_CELLS]
GRAD_OF = {"x": "dx", "W_ih": "dW_ih", "W_hh": "dW_hh", "b_ih": "db_ih", "b_hh": "db_hh",
           "h0": "dh0", "c0": "dc0"}


def _loss(cell, problem, cot, reverse):
    out = FORWARD[cell.kind](**problem, **variant_kwargs(cell), reverse=reverse,
                             training=False, backend="numpy")
    total = np.sum(out[0] * cot["dy"]) + np.sum(out[1] * cot["dh_n"])
    if cell.has_cell_state:
        total += np.sum(out[2] * cot["dc_n"])
    return total


@pytest.mark.parametrize("cell", ALL_CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_backward_matches_finite_differences(cell, reverse, lengths):
    T, B, I, H = 4, 3, 3, 4
    problem = make_problem(cell, T, B, I, H, lengths=lengths, seed=7)
    cot = make_cotangents(cell, T, B, H, seed=8)
    _, grads = run(cell, problem, cot, "numpy", reverse=reverse)
    eps = 1e-6
    checked = 0
    for name, grad_name in GRAD_OF.items():
        if problem.get(name) is None:
            continue
        base = problem[name]
        fd = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            for sign in (1, -1):
                perturbed = base.copy()
                perturbed[idx] += sign * eps
                fd[idx] += sign * _loss(cell, {**problem, name: perturbed}, cot, reverse)
        fd /= 2 * eps
        analytic = grads[grad_name]
        rel = np.linalg.norm(fd - analytic) / max(np.linalg.norm(fd), np.linalg.norm(analytic))
        assert rel <= 1e-6, f"{grad_name}: relative error {rel:.2e}"
        checked += 1
    assert checked == (7 if cell.has_cell_state else 6)


@pytest.mark.torch
@pytest.mark.parametrize("cell", [c for c in ALL_CELLS if c.name != "gru_textbook"],
                         ids=[c.name for c in ALL_CELLS if c.name != "gru_textbook"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_reference_matches_torch(cell, dtype, reverse, lengths):
    pytest.importorskip("torch", reason="the PyTorch cross-checks need torch (test extra)")
    T, B, I, H = 7, 5, 6, 9
    for seed, (bias, states) in enumerate([(True, True), (False, False)]):
        problem = make_problem(cell, T, B, I, H, dtype=dtype, seed=seed, bias=bias,
                               states=states, lengths=lengths)
        cot = make_cotangents(cell, T, B, H, dtype=dtype, seed=seed + 10)
        outs, grads = run(cell, problem, cot, "numpy", reverse=reverse)
        t_outs, t_grads = torch_run(cell, problem, cot, reverse=reverse)
        assert_close(outs, t_outs, dtype, f"{cell.name} outputs")
        assert_close(grads, t_grads, dtype, f"{cell.name} grads")


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_textbook_gru_matches_its_equations():
    """n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), written out step by step."""
    cell = Cell("gru", linear_before_reset=False)
    T, B, I, H = 6, 4, 5, 7
    p = make_problem(cell, T, B, I, H, seed=3)
    W_ir, W_iz, W_in = np.split(p["W_ih"], 3)
    W_hr, W_hz, W_hn = np.split(p["W_hh"], 3)
    b_ir, b_iz, b_in = np.split(p["b_ih"], 3)
    b_hr, b_hz, b_hn = np.split(p["b_hh"], 3)
    h = p["h0"]
    ys = []
    for t in range(T):
        x = p["x"][t]
        r = _sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z = _sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        n = np.tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
        h = (1 - z) * n + z * h
        ys.append(h)
    y, h_n, _ = FORWARD["gru"](**p, linear_before_reset=False, backend="numpy")
    np.testing.assert_allclose(y, np.stack(ys), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_n, h, rtol=1e-12, atol=1e-12)
    # and the two GRU forms really differ
    y_lbr, _, _ = FORWARD["gru"](**p, linear_before_reset=True, backend="numpy")
    assert np.abs(y_lbr - y).max() > 1e-3

"""The CUDA backend's opt-in graph path (cupy_cuda/graphs.py, ``CupyBackend.cuda_graphs``) on
the CPU emulation, against the per-step launches of the same backend.

The emulated device records a capture as a CUDA graph does (launches, GEMMs and copies by the
memory they address, nothing run) and refuses what a graph cannot hold; so a replay that
missed an input, kept a caller's array, or read a buffer freed since its capture gives other
numbers here, or raises. Every comparison is bitwise: both paths run the same kernels and GEMMs
on the same values.
"""

from __future__ import annotations

import gc
from dataclasses import replace

import numpy as np
import pytest

from cuda_emulation import EmulatedDevice, emulated_backend, make_backend
from fastrnn import engine
from fastrnn.backends import tuning
from fastrnn.backends.cupy_cuda import CupyBackend
from fastrnn.cells import cell_by_name
from test_cuda_variants import SHAPE, directions, make, run, variant_cell

CELLS = {name: cell_by_name(name)
         for name in ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_textbook")}
CELLS.update({name: variant_cell(name) for name in (
    "rnn_relu-zoneout-clip", "lstm-proj-zoneout-peepholes-clip", "lstm-layer_norm-all",
    "gru-layer_norm-zoneout-clip", "gru_textbook-zoneout")})
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def assert_same(actual, expected, label):
    assert set(actual) == set(expected), (label, sorted(actual), sorted(expected))
    for k in expected:
        np.testing.assert_array_equal(actual[k], expected[k], err_msg=f"{label} {k}")


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CELLS))
def test_replays_equal_per_step_launches(name, dtype, training):
    """Three calls of one bidirectional layer with lengths, new values each time: the graph
    path equals the per-step launches bit for bit. The first call captures one graph per
    direction and loop (forward, and backward when training); the later ones replay them and
    launch no kernel themselves."""
    cell = CELLS[name]
    graphs, steps = make_backend(cuda_graphs=True), make_backend()
    loops = 2 * (2 if training else 1)  # two directions, forward (and backward)
    for seed in range(3):
        pr = make(cell, (False, True), True, seed=seed)
        pr["lengths"][1] = 2  # the same shapes each time, other lengths
        got = run(cell, graphs, pr, dtype, training)
        want = run(cell, steps, pr, dtype, training)
        for part, label in ((0, "outputs"), (1, "gradients")):
            if training or part == 0:
                assert_same(got[part], want[part], f"{name} call {seed} {label}")
        if seed == 0:
            launched = sum(graphs.device.launches.values())
            assert launched == sum(steps.device.launches.values()) > 0
        assert graphs.device.captures == loops
        assert graphs.device.graph_launches == loops * seed
    assert sum(graphs.device.launches.values()) == launched


@pytest.mark.parametrize("name", ["lstm-proj-zoneout-peepholes-clip", "gru_textbook"])
def test_earlier_results_survive_later_calls(name):
    """Two forwards of the same shapes, then their backwards in that order: what the first
    forward returned (y, h_n, the saved state) is unchanged by the second, which overwrites the
    graphs' buffers, and each backward equals the per-step path's. The inputs are unchanged."""
    cell = CELLS[name]
    graphs, steps = make_backend(cuda_graphs=True), make_backend()
    problems = [make(cell, (False, True), True, seed=s) for s in (5, 6)]
    before = [{k: v.copy() for k, v in pr.items() if isinstance(v, np.ndarray)}
              for pr in problems]

    def forward(backend, pr):
        return engine.run_forward(cell, backend, pr["x"], directions(pr, np.float64),
                                  pr["lengths"], True)

    def backward(ctx, pr):
        dx, grads = engine.run_backward(ctx, pr["dy"], pr["dh_n"], pr["dc_n"])
        return {"dx": dx} | {f"{k}[{d}]": v for d, g in enumerate(grads)
                             for k, v in vars(g).items() if v is not None}

    first = forward(graphs, problems[0])
    kept = [a.copy() for a in first[:2]]
    second = forward(graphs, problems[1])
    for a, b in zip(first[:2], kept):
        np.testing.assert_array_equal(a, b)
    for got_ctx, pr in ((first[3], problems[0]), (second[3], problems[1])):
        want = forward(steps, pr)
        assert_same(backward(got_ctx, pr), backward(want[3], pr), name)
    assert graphs.device.captures == 4 and graphs.device.graph_launches == 4
    for pr, b in zip(problems, before):
        for k, v in b.items():
            np.testing.assert_array_equal(pr[k], v, err_msg=f"input {k} was modified")


def test_the_key_captures_each_new_shape_once():
    """A new batch, length, dtype, lengths argument or block size captures again; a shape seen
    before replays; with room for three entries the least recently used is dropped and captured
    again when it comes back. Every result equals the per-step path's."""
    cell = CELLS["gru"]
    graphs = make_backend(cuda_graphs=True, cuda_graph_cache=3)
    steps = make_backend()
    T, B, I, H = SHAPE
    calls = [  # (shape, lengths, dtype, threads per block) -> captures after the call
        ((T, B, I, H), False, np.float64, None, 1),
        ((T, B, I, H), False, np.float64, None, 1),
        ((T, B - 1, I, H), False, np.float64, None, 2),
        ((T - 2, B, I, H), False, np.float64, None, 3),
        ((T, B, I, H), False, np.float64, None, 3),  # the least recently used: B - 1
        ((T, B, I, H), True, np.float64, None, 4),  # drops B - 1
        ((T, B, I, H), False, np.float64, None, 4),
        ((T, B - 1, I, H), False, np.float64, None, 5),  # captured again
        ((T, B, I, H), False, np.float32, None, 6),
        ((T, B, I, H), False, np.float32, 16, 7),
    ]
    for k, (shape, lengths, dtype, threads, captures) in enumerate(calls):
        pr = make(cell, (False,), lengths, shape=shape, seed=k)
        for backend in (graphs, steps):
            backend.threads_per_block = threads or CupyBackend.threads_per_block
        got = run(cell, graphs, pr, dtype, training=False)[0]
        assert_same(got, run(cell, steps, pr, dtype, training=False)[0], f"call {k}")
        assert graphs.device.captures == captures, k
        assert len(graphs.graphs.entries) == min(captures, 3)


@pytest.mark.parametrize("name", ["lstm-layer_norm-all", "rnn_tanh"])
def test_chunked_inference(name):
    """Inference in chunks of two steps (the last chunk shorter, one past a row's end with
    length 0): chunks of a shape seen before replay, and the result is the per-step path's."""
    cell = CELLS[name]
    T, B, _, H = SHAPE
    chunk = 2 * B * cell.gates * H
    graphs = make_backend(chunk_elements=chunk, cuda_graphs=True)
    steps = make_backend(chunk_elements=chunk)
    pr = make(cell, (False, True), True, seed=7)
    pr["lengths"] = np.array([6, 2, 5, 1, 3])
    got = run(cell, graphs, pr, np.float64, training=False)[0]
    assert_same(got, run(cell, steps, pr, np.float64, training=False)[0], name)
    assert graphs.device.captures == 2  # one chunk shape (T = 2) per direction
    assert graphs.device.graph_launches == 2 * (T // 2) - 2


def test_a_stale_replay_is_caught():
    """The comparison is sensitive: a cache that stops copying a call's inputs into its
    buffers replays the previous call's numbers, and the outputs differ from the per-step
    path's."""
    cell = CELLS["lstm"]
    graphs, steps = make_backend(cuda_graphs=True), make_backend()
    run(cell, graphs, make(cell, (False,), True, seed=0), np.float64, training=False)
    graphs.graphs.stage = lambda entry, inputs: None
    pr = make(cell, (False,), True, seed=1)
    got = run(cell, graphs, pr, np.float64, training=False)[0]
    want = run(cell, steps, pr, np.float64, training=False)[0]
    assert graphs.device.graph_launches == 1
    with pytest.raises(AssertionError, match="y"):
        assert_same(got, want, "stale")


def test_graphs_are_off_by_default():
    cell = CELLS["gru"]
    assert tuning.cuda_graphs is False and CupyBackend.cuda_graphs is False
    backend = emulated_backend()
    run(cell, backend, make(cell, (False,), False), np.float64)
    assert backend.device.captures == 0 and backend.graphs is None


def test_emulated_capture_records_and_replays():
    """The stand-in's graph: nothing runs during the capture; a launch replays on what the
    recorded memory holds then; a replay after that memory is freed raises."""
    device = EmulatedDevice()
    xp = device.xp
    held = {"a": xp.zeros((2, 3))}
    b, out = xp.zeros((3, 4)), xp.zeros((2, 4))
    graph = device.capture(lambda: xp.matmul(held["a"], b, out=out))
    assert not out.any()
    held["a"][...], b[...] = np.arange(6).reshape(2, 3), np.ones((3, 4))
    graph.launch()
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3) @ np.ones((3, 4)))
    assert (device.captures, device.graph_launches) == (1, 1)
    held.clear()  # the graph's memory goes back, as a buffer the cache dropped would
    gc.collect()
    with pytest.raises(RuntimeError, match="freed"):
        graph.launch()


def test_emulated_capture_refuses_what_a_graph_cannot_hold():
    """An allocation, or a GEMM operand cupy.matmul would copy into a temporary (a block of
    columns), during a capture."""
    device = EmulatedDevice()
    xp = device.xp
    wide, b, out = xp.zeros((2, 6)), xp.zeros((3, 4)), xp.zeros((2, 4))
    with pytest.raises(RuntimeError, match="xp.zeros during a graph capture"):
        device.capture(lambda: xp.zeros(3))
    with pytest.raises(RuntimeError, match="copied into a temporary"):
        device.capture(lambda: xp.matmul(wide[:, 3:], b, out=out))
    assert device.capturing is None and device.captures == 0
    xp.zeros(3)  # allowed again after the capture


def test_a_variant_is_part_of_the_key():
    """The same shapes for the plain LSTM and the clipped one: two captures, each result the
    per-step path's."""
    plain = CELLS["lstm"]
    clipped = replace(plain, variant=variant_cell("lstm-clip").variant)
    graphs, steps = make_backend(cuda_graphs=True), make_backend()
    pr = make(plain, (False,), False, seed=3)
    for cell in (plain, clipped):
        got = run(cell, graphs, pr, np.float64, training=False)[0]
        assert_same(got, run(cell, steps, pr, np.float64, training=False)[0], str(cell))
    assert graphs.device.captures == 2

"""The "cupy" backend's complete code path on the CPU, against the NumPy reference.

tests/cuda_emulation compiles the very kernels/*.cu sources with the host C++ compiler under a
shim header and stands in for CuPy (NumPy arrays, NumPy matmul, serial kernel launches), so
FusedBackend's GEMMs, the launch configuration, the per-step loop and the kernels all run here
as they would on a GPU. Uninitialised memory is NaN in the stand-in, so an output element a
kernel fails to write cannot pass.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cuda_emulation import (NAME, EmulatedDevice, emulated_backend, make_backend,
                            register_emulated_backend)
from fastrnn import dispatch
from fastrnn.backends.base import Direction
from fastrnn.backends.cupy_cuda import CupyBackend, loader
from fastrnn.cells import ALL_CELLS
from fastrnn.reference import NumpyBackend
from helpers import FORWARD, assert_close, make_cotangents, make_problem, run, variant_kwargs

CELLS = [pytest.param(c, id=c.name) for c in ALL_CELLS]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
# B*H = 65: not a multiple of any block size used here
T, B, I, H = 7, 5, 4, 13

CASES = {
    "states": dict(problem=dict(bias=True, states=True, lengths=False), reverse=False),
    "lengths-reverse": dict(problem=dict(bias=True, states=True, lengths=True), reverse=True),
    "no-bias-zero-states-lengths": dict(problem=dict(bias=False, states=False, lengths=True),
                                        reverse=False),
    "no-bias-reverse": dict(problem=dict(bias=False, states=True, lengths=False), reverse=True),
}


def _copies(problem):
    return {k: v.copy() for k, v in problem.items() if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, dtype, case):
    spec = CASES[case]
    problem = make_problem(cell, T, B, I, H, dtype=dtype, seed=3, **spec["problem"])
    cot = make_cotangents(cell, T, B, H, dtype=dtype, seed=4)
    before = _copies(problem)
    outs, grads = run(cell, problem, cot, emulated_backend(), reverse=spec["reverse"])
    ref_outs, ref_grads = run(cell, problem, cot, "numpy", reverse=spec["reverse"])
    assert_close(outs, ref_outs, dtype, f"{cell.name} {case}")
    assert_close(grads, ref_grads, dtype, f"{cell.name} {case}")
    for k, v in before.items():
        np.testing.assert_array_equal(problem[k], v, err_msg=f"input {k} was modified")


def _directions(cell, dtype):
    """A forward direction and a reverse one over the same x, as a bidirectional layer has."""
    x = make_problem(cell, T, B, I, H, dtype=dtype, seed=10)["x"]
    dirs = []
    for k, reverse in enumerate((False, True)):
        p = make_problem(cell, T, B, I, H, dtype=dtype, seed=11 + k)
        dirs.append(Direction(p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], p["h0"],
                              p.get("c0"), reverse))
    return x, dirs


def _layer(backend, cell, x, dirs, lengths):
    """Forward and backward of one two-direction layer through Backend.forward/backward."""
    rng = np.random.default_rng(20)
    y, h_n, c_n, saved = backend.forward(cell, x, dirs, lengths, True)
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    dh_n = rng.standard_normal(h_n.shape).astype(x.dtype)
    dc_n = rng.standard_normal(c_n.shape).astype(x.dtype) if c_n is not None else None
    dx, grads = backend.backward(cell, saved, dy, dh_n, dc_n)
    outs = {"y": y, "h_n": h_n} | ({"c_n": c_n} if c_n is not None else {})
    flat = {"dx": dx}
    for k, g in enumerate(grads):
        for name in ("dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0"):
            if getattr(g, name) is not None:
                flat[f"{name}[{k}]"] = getattr(g, name)
    return outs, flat


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_two_directions_with_strided_halves(cell, dtype):
    """x_proj, y, dy and d_gx of each direction are views with rows D*G*H or D*H apart."""
    x, dirs = _directions(cell, dtype)
    lengths = np.array([7, 3, 3, 1, 6])
    outs, grads = _layer(emulated_backend(), cell, x, dirs, lengths)
    ref_outs, ref_grads = _layer(NumpyBackend(), cell, x, dirs, lengths)
    assert_close(outs, ref_outs, dtype, cell.name)
    assert_close(grads, ref_grads, dtype, cell.name)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_chunked_inference(cell, dtype, reverse):
    """Long inference projects the input in chunks; a chunk past a sequence's end gets L = 0."""
    backend = make_backend(chunk_elements=2 * B * cell.gates * H)  # two steps per chunk
    calls = []
    plain = backend.recurrence_forward

    def spy(cell_, x_proj, W_hh, b_hh, h0, c0, lengths, reverse_, y, training):
        calls.append(None if lengths is None else lengths.copy())
        return plain(cell_, x_proj, W_hh, b_hh, h0, c0, lengths, reverse_, y, training)

    backend.recurrence_forward = spy
    problem = make_problem(cell, T, B, I, H, dtype=dtype, seed=5, lengths=True)
    problem["lengths"] = np.array([7, 2, 5, 1, 3])
    kw = dict(**problem, **variant_kwargs(cell), reverse=reverse, training=False)
    out = FORWARD[cell.kind](**kw, backend=backend)
    ref = FORWARD[cell.kind](**kw, backend="numpy")
    assert len(calls) == 4 and any((L == 0).any() for L in calls)
    names = ("y", "h_n", "c_n") if cell.has_cell_state else ("y", "h_n")
    assert_close(dict(zip(names, out[:-1])), dict(zip(names, ref[:-1])), dtype, cell.name)


@pytest.mark.parametrize("threads", [1, 32, 48])
@pytest.mark.parametrize("cell", CELLS)
def test_block_sizes(cell, threads):
    """B*H = 65 over blocks of 1, 32 (3 blocks, the last with 1 thread) and 48 threads."""
    problem = make_problem(cell, T, B, I, H, lengths=True)
    cot = make_cotangents(cell, T, B, H)
    backend = make_backend(threads_per_block=threads)
    outs, grads = run(cell, problem, cot, backend, reverse=True)
    ref_outs, ref_grads = run(cell, problem, cot, "numpy", reverse=True)
    assert_close(outs | grads, ref_outs | ref_grads, np.float64, cell.name)


@pytest.mark.parametrize("cell", CELLS)
def test_thread_order_does_not_change_results(cell):
    """The kernels' threads do not interact: running every grid backwards gives the same bits."""
    problem = make_problem(cell, T, B, I, H, dtype=np.float32, lengths=True)
    cot = make_cotangents(cell, T, B, H, dtype=np.float32)
    outs, grads = run(cell, problem, cot, make_backend(threads_per_block=16))
    r_outs, r_grads = run(cell, problem, cot, make_backend(threads_per_block=16,
                                                            reverse_threads=True))
    for k in outs | grads:
        np.testing.assert_array_equal((outs | grads)[k], (r_outs | r_grads)[k], err_msg=k)


STEP_KERNELS = {  # the plain cells: Clip, the last template argument, false
    "rnn_tanh": ["rnn_forward<double, false, false>", "rnn_backward<double, false, false>"],
    "rnn_relu": ["rnn_forward<double, true, false>", "rnn_backward<double, true, false>"],
    "lstm": ["lstm_forward<double, false>", "lstm_backward<double, false>"],
    "gru": ["gru_forward<double, false>", "gru_backward<double, false>"],
    "gru_textbook": [f"gru_textbook_{k}<double, false>" for k in (
        "forward_gates", "forward_state", "backward_state", "backward_reset")],
}


@pytest.mark.parametrize("cell", CELLS)
def test_one_fused_kernel_per_step(cell):
    """Forward and backward launch one kernel per step (two for the textbook GRU), each over
    ceil(B*H / threads_per_block) blocks, and the source compiles once per device."""
    backend = make_backend(threads_per_block=16)
    run(cell, make_problem(cell, T, B, I, H), make_cotangents(cell, T, B, H), backend)
    assert dict(backend.device.launches) == {k: T for k in STEP_KERNELS[cell.name]}
    assert all(s == {((5,), (16,))} for s in backend.device.shapes.values())
    assert backend.device.compiled == 1


def test_registered_by_name():
    cell = ALL_CELLS[3]
    problem = make_problem(cell, T, B, I, H, lengths=True)
    cot = make_cotangents(cell, T, B, H)
    backend = register_emulated_backend()
    try:
        before = sum(backend.device.launches.values())
        outs, grads = run(cell, problem, cot, NAME)
        assert sum(backend.device.launches.values()) == before + 2 * T
    finally:
        dispatch.unregister_backend(NAME)
    ref_outs, ref_grads = run(cell, problem, cot, "numpy")
    assert_close(outs | grads, ref_outs | ref_grads, np.float64)


def test_stand_in_checks_kernel_arguments():
    """The stand-in refuses what CuPy would pass wrongly: a Python int for an int parameter
    (CuPy sends 8 bytes), an array of the wrong dtype, too few arguments."""
    device = EmulatedDevice()
    f = loader.kernel(device, "rnn.cu", "rnn_forward<double, false, false>")
    a = np.zeros((2, 3))
    args = [a, np.int32(3), a, np.zeros(3), a, None, np.int32(0), a.copy(), np.int32(3),
            a.copy(), np.float64(0), None, None, np.int32(0), None, np.int32(2), np.int32(3)]
    f((1,), (8,), tuple(args))  # accepted
    np.testing.assert_array_equal(args[7], np.zeros((2, 3)))
    with pytest.raises(TypeError, match="NumPy scalar"):
        f((1,), (8,), tuple(args[:1] + [3] + args[2:]))
    with pytest.raises(TypeError, match="float32 array"):
        f((1,), (8,), tuple([a.astype(np.float32)] + args[1:]))
    with pytest.raises(TypeError, match="takes 17 arguments"):
        f((1,), (8,), tuple(args[:-1]))


def test_a_wrong_kernel_is_caught():
    """The comparison is sensitive: one wrong derivative (the forget gate's, from i instead of f)
    in lstm.cu fails it."""
    class Mutated(EmulatedDevice):
        def compile(self, code, options, name_expressions):
            wrong = code.replace("c_in * d_sigmoid(f)", "c_in * d_sigmoid(i)")
            assert wrong != code
            return super().compile(wrong, options, name_expressions)

    cell = ALL_CELLS[2]
    assert cell.name == "lstm"
    problem = make_problem(cell, T, B, I, H)
    cot = make_cotangents(cell, T, B, H)
    outs, grads = run(cell, problem, cot, CupyBackend(device=Mutated(), name="mutated"))
    ref_outs, ref_grads = run(cell, problem, cot, "numpy")
    assert_close(outs, ref_outs, np.float64)  # the forward is untouched
    with pytest.raises(AssertionError, match="dW_hh|dx|dW_ih"):
        assert_close(grads, ref_grads, np.float64)


def _python(script):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, cwd=Path(__file__).parent)


def test_without_cupy_the_backend_says_what_to_install():
    done = _python("""
        import sys
        sys.modules["cupy"] = None  # as if CuPy were not installed
        import fastrnn
        import numpy as np
        try:
            fastrnn.lstm_forward(np.zeros((2, 1, 3)), np.zeros((8, 3)), np.zeros((8, 2)),
                                 backend="cupy")
        except fastrnn.BackendUnavailable as exc:
            print(exc)
        else:
            print("no error")
        """)
    assert done.returncode == 0, done.stderr
    message = done.stdout
    assert "backend 'cupy' cannot run here" in message
    assert "CuPy is not installed" in message
    assert "pip install" in message and "cupy-cuda12x" in message


def test_without_a_gpu_the_backend_says_why():
    done = _python("""
        import sys, types
        cupy = types.ModuleType("cupy")  # a CuPy that finds no driver
        class CUDARuntimeError(RuntimeError):
            pass
        def getDeviceCount():
            raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
            getDeviceCount=getDeviceCount, CUDARuntimeError=CUDARuntimeError))
        sys.modules["cupy"] = cupy
        import fastrnn
        try:
            fastrnn.get_backend("cupy")
        except fastrnn.BackendUnavailable as exc:
            print(exc)
        """)
    assert done.returncode == 0, done.stderr
    assert "no usable CUDA device" in done.stdout and "no CUDA-capable device" in done.stdout
    assert "pip install" in done.stdout


def test_importing_fastrnn_imports_neither_cupy_nor_the_emulation():
    done = _python("""
        import sys
        import fastrnn, fastrnn.backends.cupy_cuda
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cuda_emulation")))
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

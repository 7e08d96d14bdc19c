"""fastrnn's backends, the NumPy reference, PyTorch and ONNX Runtime on the same float32 cases:
an inference forward, and a training forward + backward with dy = ones."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fastrnn.tools import runners


def test_rnn(benchmark, case, impl, threads, reference_shapes):
    if impl.role == "reference" and reference_shapes is not None \
            and case.shape.name not in reference_shapes:
        pytest.skip(f"the NumPy reference runs only at {sorted(reference_shapes)} "
                    "(--fastrnn-reference-shapes)")
    s = case.shape
    params = runners.make_params(case.cell, s.T, s.B, s.I, s.H, np.float32)
    try:
        call, sync, setup_s = impl.make(case.cell, params, case.mode, threads)
    except runners.Unsupported as exc:
        pytest.skip(str(exc))
    if sync is not None:
        plain = call

        def call():
            out = plain()
            sync()
            return out
    start = time.perf_counter()
    call()  # the first call compiles (Numba) or plans (torch, ONNX Runtime): not timed
    first_call_s = time.perf_counter() - start
    benchmark.group = case.label
    benchmark.extra_info.update(
        cell=case.cell_name, shape=s.name, T=s.T, B=s.B, I=s.I, H=s.H, mode=case.mode,
        impl=impl.key, flops=case.flops, setup_s=setup_s, first_call_s=first_call_s)
    benchmark(call)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops"] = case.flops / benchmark.stats.stats.median / 1e9


def test_sgemm_peak(benchmark, threads):
    """The yardstick: a NumPy float32 2048 x 2048 matmul (2 * 2048**3 FLOPs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    b = rng.standard_normal((2048, 2048), dtype=np.float32)
    benchmark.group = "sgemm peak"
    benchmark(np.matmul, a, b)
    if benchmark.stats is not None:
        benchmark.extra_info["gflops"] = 2 * 2048 ** 3 / benchmark.stats.stats.min / 1e9

"""fastrnn.torch's device glue on the CPU: zero-copy views, the CUDA path's selection and DLPack
conversion (run here with NumPy standing in for CuPy), and the thread count a call runs on."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from fastrnn.torch import devices  # noqa: E402

pytestmark = pytest.mark.torch


def test_cpu_tensors_are_viewed_not_copied():
    t = torch.randn(3, 4, requires_grad=True)
    a = devices.Host().array(t)
    assert np.shares_memory(a, t.detach().numpy())
    back = devices.Host().tensor(a)
    assert back.data_ptr() == t.data_ptr()


def test_cuda_path_selection_and_dlpack_conversion():
    """CUDA tensors pick the CuPy backend (unavailable here, with the reason), and the Cuda
    adapter converts through DLPack both ways without a copy (NumPy stands in for CuPy)."""
    assert devices.adapter_for(torch.device("cuda", 0)).library == "cupy"
    assert devices.adapter_for(torch.device("cpu")).library == "numpy"
    with pytest.raises(TypeError, match="CPU and CUDA tensors"):
        devices.adapter_for(torch.device("meta"))
    if "cupy" not in fastrnn.available_backends():
        with pytest.raises(fastrnn.BackendUnavailable, match="cupy"):
            devices.backend_for(torch.device("cuda"), "")
    with pytest.raises(TypeError, match="runs on numpy arrays"):
        devices.backend_for(torch.device("cuda"), "numba")
    adapter = devices.Cuda(xp=np)
    t = torch.randn(2, 3)
    a = adapter.array(t)
    assert isinstance(a, np.ndarray) and np.shares_memory(a, t.numpy())
    assert adapter.tensor(a).data_ptr() == t.data_ptr()


def test_cuda_calls_run_on_torchs_device_and_stream(monkeypatch):
    """A call on CUDA tensors enters CuPy's device of the tensors' index, then torch's current
    stream there as CuPy's, and leaves both in reverse order (a stand-in records it)."""
    from types import SimpleNamespace

    events = []

    class Context:
        def __init__(self, kind, value):
            self.kind, self.value = kind, value

        def __enter__(self):
            events.append(("enter", self.kind, self.value))

        def __exit__(self, *exc):
            events.append(("exit", self.kind, self.value))

    stand_in = SimpleNamespace(cuda=SimpleNamespace(
        Device=lambda index: Context("device", index),
        ExternalStream=lambda ptr: Context("stream", ptr)))
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device: SimpleNamespace(cuda_stream=4096 + device.index))
    with devices.Cuda(xp=stand_in).running(None, torch.device("cuda", 1)):
        events.append("call")
    assert events == [("enter", "device", 1), ("enter", "stream", 4097), "call",
                      ("exit", "stream", 4097), ("exit", "device", 1)]


def test_threads_follow_torch_unless_set():
    pytest.importorskip("numba")
    import numba

    from fastrnn.backends import numba_cpu

    seen = []
    original = numba_cpu.NumbaBackend.forward

    def spy(self, *args):
        seen.append(numba.get_num_threads())
        return original(self, *args)

    model = ft.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    old_torch, old_numba = torch.get_num_threads(), numba.get_num_threads()
    saved_request = numba_cpu._requested_threads
    try:
        numba_cpu.NumbaBackend.forward = spy
        numba_cpu._requested_threads = None
        torch.set_num_threads(1)
        model(x)
        torch.set_num_threads(numba.config.NUMBA_NUM_THREADS + 3)  # never beyond the cores
        model(x)
        fastrnn.set_num_threads(1)
        model(x)
    finally:
        numba_cpu.NumbaBackend.forward = original
        numba_cpu._requested_threads = saved_request
        torch.set_num_threads(old_torch)
        numba.set_num_threads(old_numba)
    assert seen == [1, numba.config.NUMBA_NUM_THREADS, 1]
    assert numba.get_num_threads() == old_numba


def test_torch_frontend_bench_table():
    from fastrnn.tools import torch_bench
    from fastrnn.tools.presets import Shape

    table = torch_bench.run(["gru"], [Shape("t", 3, 2, 4, 5)], threads=1, rounds=1,
                            min_sample_s=0.001)
    rows = [line for line in table.splitlines() if line.startswith("| gru |")]
    assert len(rows) == 4  # inference and training, then the two overhead rows
    assert all(float(cell.strip().rstrip("x")) > 0 for row in rows[:2]
               for cell in row.split("|")[4:7])
    with pytest.raises(ValueError, match="gru_textbook"):
        torch_bench.run(["gru_textbook"], [], threads=1)

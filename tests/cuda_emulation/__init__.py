"""Run the CuPy backend without a GPU: its kernels compiled for the CPU, NumPy for CuPy.

``emulated_backend()`` is a ready ``CupyBackend`` on NumPy arrays (library "numpy", name
"cupy-emulated") that runs the whole "cupy" code path: FusedBackend's GEMMs, the launch
configuration, the per-step loop, and the very kernels of kernels/*.cu, through the stand-in
device of device.py. Nothing in the fastrnn package imports this.

FASTRNN_TEST_DEVICE=cupy runs the same tests on the GPU instead: ``make_backend`` then gives
the real backend behind NumPy arrays (on_device.py, name "cupy-device"), and fails with
BackendUnavailable, never skips, where CuPy or a GPU is missing. Unset or "emulation": the
stand-in. The tests that exercise the stand-in itself (EmulatedDevice) run on it either way.
"""

from __future__ import annotations

import functools
import os

import fastrnn
from fastrnn.backends.cupy_cuda import CupyBackend

from .device import EmulatedDevice

DEVICE_VAR = "FASTRNN_TEST_DEVICE"
DEVICES = ("emulation", "cupy")


def device_kind() -> str:
    """What the tests run the CUDA backend on: "emulation" (the default) or "cupy" (the GPU)."""
    device = os.environ.get(DEVICE_VAR, "") or "emulation"
    if device not in DEVICES:
        raise ValueError(f"{DEVICE_VAR} must be one of {DEVICES}, got {device!r}")
    return device


NAME = "cupy-device" if device_kind() == "cupy" else "cupy-emulated"


def make_backend(threads_per_block=None, reverse_threads=False, chunk_elements=None,
                 cuda_graphs=False, cuda_graph_cache=None):
    """A new backend with its own device (and launch counters): emulated, or on the GPU when
    FASTRNN_TEST_DEVICE=cupy (raising BackendUnavailable where it cannot run); ``cuda_graphs``
    turns on the graph path (CupyBackend.cuda_graphs), with at most ``cuda_graph_cache``
    entries."""
    if device_kind() == "cupy":
        from .on_device import CountingDevice, DeviceBackend

        backend = DeviceBackend(NAME, CountingDevice(reverse_threads))
    else:
        backend = CupyBackend(device=EmulatedDevice(reverse_threads=reverse_threads), name=NAME)
    backend.cuda_graphs = cuda_graphs
    if cuda_graph_cache is not None:
        backend.cuda_graph_cache = cuda_graph_cache
    if threads_per_block is not None:
        backend.threads_per_block = threads_per_block
    if chunk_elements is not None:
        backend.chunk_elements = chunk_elements
    return backend


@functools.lru_cache(maxsize=None)
def emulated_backend():
    """The shared backend (emulated, or the GPU's), with the default launch configuration.
    Do not modify it;
    ``make_backend`` gives one to change."""
    return make_backend()


def register_emulated_backend():
    """Make the shared emulated backend selectable by name, as ``backend="cupy-emulated"``."""
    backend = emulated_backend()
    fastrnn.register_backend(NAME, backend)
    return backend


__all__ = ["DEVICE_VAR", "EmulatedDevice", "NAME", "device_kind", "emulated_backend",
           "make_backend",
           "register_emulated_backend"]

"""Run the CuPy backend without a GPU: its kernels compiled for the CPU, NumPy for CuPy.

``emulated_backend()`` is a ready ``CupyBackend`` on NumPy arrays (library "numpy", name
"cupy-emulated") that runs the whole "cupy" code path: FusedBackend's GEMMs, the launch
configuration, the per-step loop, and the very kernels of kernels/*.cu, through the stand-in
device of device.py. Nothing in the fastrnn package imports this.
"""

from __future__ import annotations

import functools

import fastrnn
from fastrnn.backends.cupy_cuda import CupyBackend

from .device import EmulatedDevice

NAME = "cupy-emulated"


def make_backend(threads_per_block=None, reverse_threads=False, chunk_elements=None,
                 cuda_graphs=False, cuda_graph_cache=None):
    """A new emulated backend with its own device (and launch counters); ``cuda_graphs`` turns
    on the graph path (CupyBackend.cuda_graphs), with at most ``cuda_graph_cache`` entries."""
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
    """The shared emulated backend, with the default launch configuration. Do not modify it;
    ``make_backend`` gives one to change."""
    return make_backend()


def register_emulated_backend():
    """Make the shared emulated backend selectable by name, as ``backend="cupy-emulated"``."""
    backend = emulated_backend()
    fastrnn.register_backend(NAME, backend)
    return backend


__all__ = ["EmulatedDevice", "NAME", "emulated_backend", "make_backend",
           "register_emulated_backend"]

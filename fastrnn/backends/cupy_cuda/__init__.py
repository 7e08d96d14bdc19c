"""The CuPy CUDA backend: CuPy arrays in and out, cuBLAS GEMMs and the fused kernels of
``kernels/`` (see kernels/README.md). Importing this package does not import CuPy; constructing
``CupyBackend()`` does, and raises ImportError or BackendUnavailable where it cannot run.

    device.py       the only place that calls CuPy
    loader.py       the CUDA sources, their dtype instantiations, modules memoised per device
    recurrence.py   the per-step loop shared by every cell
    graphs.py       that loop captured as a CUDA Graph and replayed (opt-in, cuda_graphs)
    rnn.py, lstm.py, gru.py   what one step launches for each cell
    backend.py      CupyBackend
"""

from .backend import CupyBackend

__all__ = ["CupyBackend"]

"""Where a tensor's memory goes: CPU tensors to NumPy (the Numba backend), CUDA tensors to CuPy
(the CuPy backend), both without a copy, and the threads a CPU call runs on.

``Host`` and ``Cuda`` are the two adapters; ``adapter_for(device)`` picks one. Each turns a
tensor into an array of its library (``array``), an array back into a tensor (``tensor``) and
gives the context a kernel call runs in (``running``): on the CPU the thread count, on the GPU
torch's current stream, so the CuPy kernels are ordered with torch's own work.
"""

from __future__ import annotations

import torch

from .. import dispatch


class Host:
    """CPU tensors as NumPy views: ``t.detach().numpy()`` and ``torch.from_numpy`` share memory.

    Threads: a call runs on fastrnn's own count when the user set one with
    ``fastrnn.set_num_threads``, else on ``torch.get_num_threads()``, and never on more than
    Numba's pool (NUMBA_NUM_THREADS, the cores by default). torch's ops do not run while a
    fastrnn kernel runs (the call is synchronous), so the two pools never add up."""

    library = "numpy"

    def array(self, t):
        return t.detach().numpy() if t.requires_grad else t.numpy()

    def tensor(self, a):
        return torch.from_numpy(a)

    def running(self, backend, device):
        if backend.name != "numba":
            return _NOTHING
        return _NumbaThreads()


class Cuda:
    """CUDA tensors as CuPy arrays through DLPack, zero-copy both ways; ``xp`` is CuPy,
    imported on first use (a test may hand in another module with ``from_dlpack``)."""

    library = "cupy"

    def __init__(self, xp=None):
        self._xp = xp

    @property
    def xp(self):
        if self._xp is None:
            import cupy  # only reached with CUDA tensors in hand

            self._xp = cupy
        return self._xp

    def array(self, t):
        return self.xp.from_dlpack(t.detach())

    def tensor(self, a):
        return torch.from_dlpack(a)

    def running(self, backend, device):
        """CuPy on the tensors' device and torch's current stream there."""
        from ..backends.cupy_cuda.device import on_torch_stream

        index = device.index if device.index is not None else torch.cuda.current_device()
        return on_torch_stream(self.xp, index, torch.cuda.current_stream(device).cuda_stream)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NOTHING = _Nothing()


class _NumbaThreads:
    """Numba's thread count (thread-local) set for one call and restored after it."""

    def __enter__(self):
        from ..backends import numba_cpu
        import numba

        requested = numba_cpu.requested_num_threads()
        n = requested or min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        self._numba, self._old = numba, numba_cpu.get_num_threads()
        if n != self._old:
            numba.set_num_threads(n)
        return self

    def __exit__(self, *exc):
        if self._numba.get_num_threads() != self._old:
            self._numba.set_num_threads(self._old)
        return False


_ADAPTERS = {"cpu": Host(), "cuda": Cuda()}


def adapter_for(device):
    """The adapter of a torch device; other devices (mps, xla, meta) raise TypeError."""
    adapter = _ADAPTERS.get(device.type)
    if adapter is None:
        raise TypeError(f"fastrnn.torch runs on CPU and CUDA tensors, got a tensor on "
                        f"{device}; move the module and its input with .to('cpu') or .to('cuda')")
    return adapter


def backend_for(device, backend):
    """The backend a call on ``device`` runs on: ``backend`` (a name, or "" for the default rule)
    checked against the device's library, else dispatch's rule for that library (Numba for CPU
    tensors, CuPy for CUDA ones)."""
    return dispatch.select(backend or None, adapter_for(device).library)

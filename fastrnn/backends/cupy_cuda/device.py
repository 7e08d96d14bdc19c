"""Every call into CuPy that the backend makes lives here, and nowhere else.

A device supplies what the rest of the backend needs from the GPU:

    library               "cupy": the array library the backend serves
    xp                    the array module: empty, zeros, asarray, matmul (cuBLAS) and the
                          array methods FusedBackend uses
    key()                 identifies the current device, for memoising compiled modules
    compile(code, options, name_expressions) -> {name: f}
                          builds a module; f(grid, block, args) launches one kernel
    context(a)            a context manager that makes the device holding ``a`` current

The tests replace this object with a CPU stand-in (``tests/cuda_emulation``) that compiles the
same sources with the host C++ compiler, so everything above it runs unchanged without a GPU.
"""

from __future__ import annotations

from ..base import BackendUnavailable


class CudaDevice:
    """The GPU through CuPy: cuBLAS GEMMs via ``cupy.matmul``, kernels via ``cupy.RawModule``."""

    library = "cupy"

    def __init__(self):
        try:
            import cupy
        except (ImportError, OSError) as exc:  # missing, or installed without its CUDA libraries
            raise BackendUnavailable(f"CuPy cannot be imported ({exc})") from exc
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError as exc:
            raise BackendUnavailable(f"CuPy found no usable CUDA device ({exc})") from exc
        if count < 1:
            raise BackendUnavailable("CuPy found no CUDA device")
        self.xp = cupy

    def key(self):
        return ("cuda", self.xp.cuda.runtime.getDevice())

    def compile(self, code, options, name_expressions):
        module = self.xp.RawModule(code=code, options=options,
                                   name_expressions=list(name_expressions))
        return {name: module.get_function(name) for name in name_expressions}

    def context(self, a):
        return a.device

"""A CPU stand-in for the parts of CuPy that fastrnn's CudaDevice, ``device.describe`` and the
GPU test path (cuda_emulation/on_device.py) call, for proving that path without a GPU: put
tests/cuda_emulation/cupy_stand_in on PYTHONPATH (tests/test_gpu_check.py does, in a
subprocess). Nothing else imports it.

- ``RawModule`` compiles through the emulation (EmulatedDevice.compile: the host C++ compiler).
- ``asarray`` copies into a ``ndarray`` subclass whose ``device`` is a context, as a CuPy
  array's is; ``asnumpy`` copies back to a plain NumPy array. Every other array function is the
  emulation's NumPy (``empty`` filled with NaN).
- ``cuda.runtime`` reports one device with the attributes of a CUDA 13 runtime: no
  memoryClockRate in getDeviceProperties, so it is read with deviceGetAttribute. Its figures
  (runtime 12.8, driver 13.0, 2619 MHz memory clock, 5120-bit bus) are made up for the tests.
"""

import contextlib
import types

import numpy as np

from cuda_emulation.device import EmulatedDevice, _poisoned_empty

globals().update({k: v for k, v in vars(np).items() if not k.startswith("__")})
empty = _poisoned_empty


def empty_like(a, dtype=None):
    return _poisoned_empty(a.shape, dtype or a.dtype)


__version__ = "0.0+stand-in"


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A "device" array: a NumPy array whose ``device`` is a context, as CuPy's is."""

    @property
    def device(self):
        return contextlib.nullcontext()


def asarray(a, dtype=None):
    return np.array(a, dtype=dtype, copy=True).view(ndarray)


def asnumpy(a):
    return np.array(a, copy=True)


class RawModule:
    def __init__(self, code, options=(), name_expressions=()):
        self._kernels = EmulatedDevice().compile(code, tuple(options), list(name_expressions))

    def get_function(self, name):
        return self._kernels[name]


class CUDARuntimeError(RuntimeError):
    pass


_ATTRIBUTES = {36: 2_619_000, 37: 5120}  # memory clock (kHz), bus width (bits)
runtime = types.SimpleNamespace(
    CUDARuntimeError=CUDARuntimeError,
    getDeviceCount=lambda: 1,
    getDevice=lambda: 0,
    runtimeGetVersion=lambda: 12080,
    driverGetVersion=lambda: 13000,
    deviceSynchronize=lambda: None,
    deviceGetAttribute=lambda attribute, index: _ATTRIBUTES[attribute],
    getDeviceProperties=lambda index: {"name": b"Stand-in GPU", "major": 9, "minor": 0,
                                       "totalGlobalMem": 80 * 2 ** 30, "memoryBusWidth": 5120})
cuda = types.SimpleNamespace(runtime=runtime)

"""The CPU stand-in for fastrnn.backends.cupy_cuda.device.CudaDevice.

It offers the same four things (library, xp, key, compile, context) on NumPy arrays:

- ``xp`` is NumPy, except that ``empty`` fills float arrays with NaN, as uninitialised device
  memory may hold anything: an element a kernel should write and does not shows up as NaN.
- ``compile`` builds the code string with the host C++ compiler (build.py) and returns, for
  each name expression, a kernel called like a CuPy RawKernel: ``f(grid, block, args)``. The call
  checks every argument against the kernel's C++ parameter types (array dtype or scalar type and
  size, writability, a unit last stride), then runs the grid serially (launch.h).
- ``launches`` counts the launches of each instantiation and ``shapes`` keeps their (grid, block),
  so tests can see what a call ran.
- ``capture(work)`` stands in for a CUDA Graph: while ``work()`` runs, kernel launches,
  ``xp.matmul`` and ``xp.copyto`` are recorded, not run, each by the memory it addresses (as a
  device pointer: a replay reads what that memory holds then); ``graph.launch()`` replays them.
  Every other ``xp`` function (an allocation above all) raises during a capture, and so does a
  GEMM operand that cupy.matmul would copy into a temporary; a replay whose memory has been
  freed since the capture raises. ``captures`` and ``graph_launches`` count them.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import types
import weakref

import numpy as np

from .build import build


class ArgSpec(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_char), ("element", ctypes.c_char), ("size", ctypes.c_int),
                ("writable", ctypes.c_int)]


def _poisoned_empty(shape, dtype=float, order="C"):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.full(shape, np.nan, dtype, order=order)
    return np.empty(shape, dtype, order=order)


def _device_numpy(device):
    """NumPy in CuPy's place: ``empty`` poisoned; ``matmul`` and ``copyto`` the device's (they
    are recorded during a capture); every other function refused during a capture."""
    def outside_capture(name, f):
        @functools.wraps(f)
        def guarded(*args, **kwargs):
            if device.capturing is not None:
                raise RuntimeError(f"xp.{name} during a graph capture: a graph holds only "
                                   f"kernel launches, GEMMs and copies, and allocates nothing")
            return f(*args, **kwargs)
        return guarded

    xp = types.ModuleType("numpy_as_device")
    for name, value in vars(np).items():
        if name.startswith("__"):
            continue
        plain = isinstance(value, (type, np.ufunc, types.ModuleType)) or not callable(value)
        xp.__dict__[name] = value if plain else outside_capture(name, value)
    xp.empty = outside_capture("empty", _poisoned_empty)
    xp.empty_like = outside_capture(
        "empty_like", lambda a, dtype=None: _poisoned_empty(a.shape, dtype or a.dtype))
    xp.matmul, xp.copyto = device.matmul, device.copyto
    return xp


class _Memory:
    """An array as a graph records it: the memory it addresses, not the object. The array
    that owns that memory is held weakly (a device pointer keeps nothing alive), so a replay
    after it is freed raises instead of reading freed memory."""

    def __init__(self, a):
        owner = a
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        if owner.base is not None or not owner.flags.c_contiguous:
            raise RuntimeError("a graph can only record arrays of device memory (arrays the "
                               "device allocated, or views of them)")
        self.owner = weakref.ref(owner)
        self.offset = a.ctypes.data - owner.ctypes.data
        self.shape, self.strides, self.dtype = a.shape, a.strides, a.dtype

    def array(self):
        owner = self.owner()
        if owner is None:
            raise RuntimeError("a graph replays on memory that was freed after its capture")
        return np.ndarray(self.shape, self.dtype, buffer=owner, offset=self.offset,
                          strides=self.strides)


class EmulatedGraph:
    """What ``EmulatedDevice.capture`` returns: the recorded work, replayed by ``launch``."""

    def __init__(self, device):
        self.device, self.work = device, []

    def launch(self):
        if self.device.capturing is not None:
            raise RuntimeError("a graph launched during a capture")
        self.device.graph_launches += 1
        for replay in self.work:
            replay()


_SCALAR_CTYPES = {("i", 4): ctypes.c_int32, ("i", 8): ctypes.c_int64, ("u", 4): ctypes.c_uint32,
                  ("u", 8): ctypes.c_uint64, ("f", 4): ctypes.c_float, ("f", 8): ctypes.c_double}


class EmulatedKernel:
    """One instantiation in a built library, called as ``f(grid, block, args)``."""

    def __init__(self, device, library, index, name):
        self.device, self.library, self.index, self.name = device, library, index, name
        specs = (ArgSpec * 64)()
        count = library.fastrnn_describe(index, specs, 64)
        self.specs = [(s.kind.decode(), s.element.decode(), s.size, bool(s.writable))
                      for s in specs[:count]]

    def __call__(self, grid, block, args, shared_mem=0):
        dims = []
        for label, d in (("grid", grid), ("block", block)):
            if not isinstance(d, tuple) or not 1 <= len(d) <= 3 or not all(
                    isinstance(v, (int, np.integer)) and v >= 1 for v in d):
                raise TypeError(f"{self.name}: {label} must be a tuple of 1 to 3 positive ints, "
                                f"got {d!r}")
            dims.append((ctypes.c_uint * 3)(*(list(d) + [1] * (3 - len(d)))))
        limits = (("grid", grid, (2 ** 31 - 1, 65535, 65535)), ("block", block, (1024, 1024, 64)))
        for label, d, top in limits:
            if any(v > m for v, m in zip(d, top)):
                raise ValueError(f"{self.name}: {label} {d} exceeds CUDA's limits {top}")
        if int(np.prod(block)) > 1024:
            raise ValueError(f"{self.name}: at most 1024 threads per block, got {block}")
        if shared_mem != 0:
            raise ValueError(f"{self.name}: the kernels use no shared memory")
        if not isinstance(args, tuple) or len(args) != len(self.specs):
            raise TypeError(f"{self.name} takes {len(self.specs)} arguments as a tuple, got "
                            f"{len(args) if isinstance(args, tuple) else type(args).__name__}")
        values = [self._marshal(i, a, spec) for i, (a, spec) in enumerate(zip(args, self.specs))]
        pointers = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values])
        reverse = int(self.device.reverse_threads)
        graph = self.device.capturing
        if graph is not None:  # the pointers are baked in, as in a CUDA graph
            memory = [_Memory(a) for a in args if isinstance(a, np.ndarray)]

            def replay(kept=values):
                for m in memory:
                    m.array()  # raises if freed
                self.library.fastrnn_launch(self.index, dims[0], dims[1], pointers, reverse)
            graph.work.append(replay)
            return
        self.device.launches[self.name] += 1
        self.device.shapes[self.name].add((grid, block))
        self.library.fastrnn_launch(self.index, dims[0], dims[1], pointers, reverse)

    def _marshal(self, i, a, spec):
        kind, element, size, writable = spec
        where = f"{self.name} argument {i}"
        if kind == "p":
            if a is None:
                return ctypes.c_void_p(None)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{where} is a pointer: pass an array or None, got "
                                f"{type(a).__name__}")
            if (a.dtype.kind, a.dtype.itemsize) != (element, size):
                raise TypeError(f"{where} points to {element}{size * 8}, got a {a.dtype} array")
            if writable and not a.flags.writeable:
                raise ValueError(f"{where} is written by the kernel, got a read-only array")
            if a.ndim and a.shape[-1] > 1 and a.strides[-1] != a.itemsize:
                raise ValueError(f"{where} needs a unit last stride, got strides {a.strides}")
            return ctypes.c_void_p(a.ctypes.data)
        # CuPy passes a Python int as 8 bytes and a float as a double, whatever the kernel takes:
        # the backend must pass NumPy scalars of the parameter's exact type.
        if not isinstance(a, np.generic):
            raise TypeError(f"{where} must be a NumPy scalar of kind {element}{size * 8}, got "
                            f"{type(a).__name__} {a!r}")
        if (a.dtype.kind, a.dtype.itemsize) != (element, size):
            raise TypeError(f"{where} must be {element}{size * 8}, got {a.dtype}")
        return _SCALAR_CTYPES[(element, size)](a.item())


class EmulatedDevice:
    """The device interface of CudaDevice, on the CPU (see the module docstring)."""

    library = "numpy"

    def __init__(self, reverse_threads=False):
        self.capturing = None  # the EmulatedGraph being recorded
        self.xp = _device_numpy(self)
        self.reverse_threads = reverse_threads
        self.launches = collections.Counter()
        self.shapes = collections.defaultdict(set)  # name -> {(grid, block)} launched
        self.compiled = 0
        self.captures = self.graph_launches = 0

    def key(self):
        return ("emulated", id(self))

    def compile(self, code, options, name_expressions):
        if not isinstance(options, tuple) or not all(isinstance(o, str) for o in options):
            raise TypeError(f"options must be a tuple of str, got {options!r}")
        library = ctypes.CDLL(str(build(code, list(name_expressions))))
        library.fastrnn_describe.argtypes = [ctypes.c_int, ctypes.POINTER(ArgSpec), ctypes.c_int]
        library.fastrnn_name.restype = ctypes.c_char_p
        library.fastrnn_launch.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint),
                                           ctypes.POINTER(ctypes.c_uint),
                                           ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        library.fastrnn_launch.restype = None
        names = [library.fastrnn_name(i).decode() for i in range(library.fastrnn_count())]
        if names != list(name_expressions):
            raise RuntimeError(f"built {names}, asked for {list(name_expressions)}")
        self.compiled += 1
        return {n: EmulatedKernel(self, library, i, n) for i, n in enumerate(names)}

    def context(self, a):
        return contextlib.nullcontext()

    def synchronize(self):
        """Every launch has finished when it returns: nothing to wait for."""

    def capture_key(self):
        return self.key()

    def capture(self, work):
        if self.capturing is not None:
            raise RuntimeError("captures do not nest")
        self.capturing = graph = EmulatedGraph(self)
        try:
            work()
        finally:
            self.capturing = None
        self.captures += 1
        return graph

    def matmul(self, a, b, out=None):
        """np.matmul; recorded during a capture, where ``out`` must be given and every operand
        one that cupy.matmul uses in place: a and b C- or F-contiguous, out C-contiguous and
        apart from them (cupy copies any other into a temporary allocation)."""
        if self.capturing is None:
            return np.matmul(a, b, out=out)
        if out is None or not out.flags.c_contiguous or any(
                np.may_share_memory(out, v) for v in (a, b)):
            raise RuntimeError("matmul during a capture needs out, C-contiguous and apart from "
                               "the operands")
        for v in (a, b):
            if not (v.flags.c_contiguous or v.flags.f_contiguous):
                raise RuntimeError(f"matmul during a capture: an operand of strides {v.strides} "
                                   f"would be copied into a temporary")
        memory = [_Memory(v) for v in (a, b, out)]
        self.capturing.work.append(
            lambda: np.matmul(*(m.array() for m in memory[:2]), out=memory[2].array()))
        return out

    def copyto(self, dst, src):
        """np.copyto (src an array or a scalar); recorded during a capture."""
        if self.capturing is None:
            return np.copyto(dst, src)
        target = _Memory(dst)
        if isinstance(src, np.ndarray):
            source = _Memory(src)
            self.capturing.work.append(lambda: np.copyto(target.array(), source.array()))
        else:
            self.capturing.work.append(lambda: np.copyto(target.array(), src))
        return None

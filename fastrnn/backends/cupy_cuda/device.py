"""Every call into CuPy's device, stream and runtime API that fastrnn makes lives here, and
nowhere else (the rest of fastrnn uses CuPy only as an array module).

A device supplies what the rest of the backend needs from the GPU:

    library               "cupy": the array library the backend serves
    xp                    the array module: empty, zeros, asarray, matmul (cuBLAS) and the
                          array methods FusedBackend uses
    key()                 identifies the current device, for memoising compiled modules
    compile(code, options, name_expressions) -> {name: f}
                          builds a module; f(grid, block, args) launches one kernel
    context(a)            a context manager that makes the device holding ``a`` current
    capture(work) -> graph
                          records the kernels, GEMMs and copies that ``work()`` issues into a
                          graph rather than running them; ``graph.launch()`` replays them on
                          the current stream (the opt-in CUDA Graph path, graphs.py)
    capture_key()         what a captured graph is valid for: the device and the current stream
    synchronize()         waits for the device's work (the bench's timer)

Module functions: ``on_torch_stream`` (fastrnn.torch's calls on torch's stream) and
``describe`` (versions and devices, for ``fastrnn info`` and the bench).

The tests replace this object with a CPU stand-in (``tests/cuda_emulation``) that compiles the
same sources with the host C++ compiler, so everything above it runs unchanged without a GPU.
"""

from __future__ import annotations

import contextlib

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

    def synchronize(self):
        """Wait for all work on the current device (the bench's timer)."""
        self.xp.cuda.runtime.deviceSynchronize()

    def capture_key(self):
        return (self.key(), self.xp.cuda.get_current_stream().ptr)

    def capture(self, work):
        """A cupy.cuda.Graph of what ``work()`` issues, captured on a stream of its own (capture
        is impossible on the legacy default stream) in CuPy's default relaxed mode, which lets
        CuPy's memory pool grow during the capture; ``work`` allocates nothing itself, as a
        block freed during the capture could go to another array while the graph still writes
        it. Not yet run on a GPU: in particular, cuBLAS (cupy.matmul) inside a capture is
        reported to allocate a workspace per capture before CUDA 12.2."""
        stream = self.xp.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            try:
                work()
            except BaseException:
                stream.end_capture()  # leave the capture state before the error goes on
                raise
            return stream.end_capture()


def on_torch_stream(cupy, index, stream_ptr):
    """A context manager that makes CuPy run on device ``index`` and on the CUDA stream at
    ``stream_ptr`` (torch's current stream there), so that fastrnn.torch's calls on CUDA
    tensors are ordered with torch's own work."""
    stack = contextlib.ExitStack()
    stack.enter_context(cupy.cuda.Device(index))
    stack.enter_context(cupy.cuda.ExternalStream(stream_ptr))
    return stack


# ----------------------------------------------------------------------------------------------
# What the machine has: versions and each device's memory bandwidth (`fastrnn info`, the bench)

# cudaDeviceAttr numbers of the memory clock (kHz) and bus width (bits). CUDA 13 removed the
# memory clock from cudaDeviceProp, so where getDeviceProperties lacks it the attribute is read.
_ATTR_MEMORY_CLOCK_KHZ = 36
_ATTR_MEMORY_BUS_BITS = 37


def cuda_version_text(number: int) -> str:
    """CUDA's version number as text: 12080 -> "12.8", 13000 -> "13.0"."""
    return f"{number // 1000}.{number % 1000 // 10}"


def _memory_attribute(cupy, props, key, attribute, index):
    value = props.get(key)
    if not value:
        value = cupy.cuda.runtime.deviceGetAttribute(attribute, index)
    return int(value)


def peak_bandwidth(cupy, index: int) -> float:
    """Device ``index``'s peak memory bandwidth in bytes/s from its attributes: two transfers per
    memory clock (double data rate) of the bus width, as NVIDIA's bandwidthTest computes it."""
    props = cupy.cuda.runtime.getDeviceProperties(index)
    clock_khz = _memory_attribute(cupy, props, "memoryClockRate", _ATTR_MEMORY_CLOCK_KHZ, index)
    bus_bits = _memory_attribute(cupy, props, "memoryBusWidth", _ATTR_MEMORY_BUS_BITS, index)
    return 2.0 * clock_khz * 1e3 * bus_bits / 8


def describe(cupy=None) -> dict:
    """CuPy's version, the CUDA runtime it runs on, the driver's CUDA version and each device
    (name, compute capability, memory, peak bandwidth); ``error`` says what could not be read
    (no driver, no device), with what was read before it kept. Raises ImportError without CuPy;
    ``cupy`` may be given (the tests hand in a stand-in)."""
    if cupy is None:
        import cupy
    rt = cupy.cuda.runtime
    info = {"cupy": cupy.__version__, "cuda_runtime": None, "cuda_driver": None, "devices": [],
            "error": None}
    try:
        info["cuda_runtime"] = cuda_version_text(rt.runtimeGetVersion())
        info["cuda_driver"] = cuda_version_text(rt.driverGetVersion())
        for index in range(rt.getDeviceCount()):
            props = rt.getDeviceProperties(index)
            name = props["name"]
            info["devices"].append({
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "compute_capability": f"{props['major']}.{props['minor']}",
                "memory_bytes": int(props["totalGlobalMem"]),
                "peak_bandwidth_bytes_per_s": peak_bandwidth(cupy, index)})
    except Exception as exc:  # noqa: BLE001 - CuPy's CUDA errors: no driver, no device, ...
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def current_peak_bandwidth():
    """The current device's peak memory bandwidth in bytes/s, or None where CuPy cannot read it."""
    import cupy

    try:
        return peak_bandwidth(cupy, cupy.cuda.runtime.getDevice())
    except Exception:  # noqa: BLE001 - CuPy's CUDA errors: no driver, no device
        return None

"""The same tests on a real GPU: FASTRNN_TEST_DEVICE=cupy (see __init__.py).

``DeviceBackend`` is the "cupy" backend on the GPU through CuPy (``CountingDevice``, the real
``CudaDevice`` that also counts launches as the stand-in does), taking and returning NumPy
arrays like the emulated backend: its inputs go to the device, its outputs come back, what a
training forward keeps stays on the device. So every test written for the emulation runs
unchanged against the real kernels, cuBLAS and NVRTC.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from fastrnn.backends.base import Backend, DirectionGrads
from fastrnn.backends.fused import FusedBackend
from fastrnn.backends.cupy_cuda import CupyBackend
from fastrnn.backends.cupy_cuda.device import CudaDevice


class CountingDevice(CudaDevice):
    """CudaDevice counting launches (``launches``, ``shapes``) and compilations (``compiled``)
    like the stand-in. Each instance has its own key, so its modules compile (or load from
    CuPy's cache) once per instance and the counts are its own. The GPU orders its threads
    itself: ``reverse_threads`` is kept for the tests' sake and changes nothing."""

    def __init__(self, reverse_threads=False):
        super().__init__()
        self.reverse_threads = reverse_threads
        self.launches = collections.Counter()
        self.shapes = collections.defaultdict(set)
        self.compiled = 0
        self.capturing = False
        self.captures = self.graph_launches = 0

    def key(self):
        return ("cuda-counted", id(self), self.xp.cuda.runtime.getDevice())

    def compile(self, code, options, name_expressions):
        self.compiled += 1
        return {name: self._counted(name, f)
                for name, f in super().compile(code, options, name_expressions).items()}

    def _counted(self, name, f):
        def launch(grid, block, args, *rest, **options):
            if not self.capturing:  # as the stand-in: a launch into a graph runs nothing yet
                self.launches[name] += 1
                self.shapes[name].add((grid, block))
            return f(grid, block, args, *rest, **options)
        return launch

    def capture(self, work):
        """CudaDevice.capture, counted like the stand-in's: ``captures``, and each launch of
        the graph in ``graph_launches``."""
        self.capturing = True
        try:
            graph = super().capture(work)
        finally:
            self.capturing = False
        self.captures += 1
        return _CountedGraph(self, graph)


class _CountedGraph:
    def __init__(self, device, graph):
        self.device, self.graph = device, graph

    def launch(self):
        self.device.graph_launches += 1
        self.graph.launch()


# Attributes a test may set on the backend it was given; they go to the CupyBackend inside.
_PASSED_ON = ("threads_per_block", "chunk_elements", "recurrence_forward", "recurrence_backward",
              "cuda_graphs", "cuda_graph_cache")


class DeviceBackend(Backend):
    """The CUDA backend on ``device`` (a CountingDevice) behind NumPy arrays (see the module
    docstring); other attributes (device, threads_per_block, ...) are those of the CupyBackend
    inside."""

    library = "numpy"
    xp = np

    def __init__(self, name, device):
        inner = CupyBackend(device=device, name=name)
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "variant_switches", inner.variant_switches)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        if name not in _PASSED_ON:
            raise AttributeError(f"DeviceBackend passes on only {_PASSED_ON}, not {name!r}")
        setattr(self.inner, name, value)

    def __delattr__(self, name):
        if name not in _PASSED_ON:
            raise AttributeError(f"DeviceBackend passes on only {_PASSED_ON}, not {name!r}")
        delattr(self.inner, name)

    def _to_device(self, a):
        return None if a is None or not isinstance(a, np.ndarray) else self.inner.xp.asarray(a)

    def _to_host(self, a):
        return None if a is None else self.inner.xp.asnumpy(a)

    def forward(self, cell, x, dirs, lengths, training):
        on_device = [dataclasses.replace(d, **{f.name: self._to_device(getattr(d, f.name))
                                               for f in dataclasses.fields(d)
                                               if f.name != "reverse"}) for d in dirs]
        y, h_n, c_n, saved = self.inner.forward(cell, self._to_device(x), on_device, lengths,
                                                training)
        return self._to_host(y), self._to_host(h_n), self._to_host(c_n), saved

    def backward(self, cell, saved, dy, dh_n, dc_n):
        dx, grads = self.inner.backward(cell, saved, *map(self._to_device, (dy, dh_n, dc_n)))
        return self._to_host(dx), [DirectionGrads(**{f.name: self._to_host(getattr(g, f.name))
                                                     for f in dataclasses.fields(g)})
                                   for g in grads]


def is_fused(backend) -> bool:
    """Whether ``backend`` runs FusedBackend's composition (the one inside a DeviceBackend)."""
    return isinstance(getattr(backend, "inner", backend), FusedBackend)

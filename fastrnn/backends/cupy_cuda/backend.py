"""CupyBackend: FusedBackend's GEMMs plus the per-step loop of recurrence.py on one device."""

from __future__ import annotations

from .. import tuning
from ..fused import FusedBackend
from .graphs import GraphCache
from .gru import GruRecurrence, GruTextbookRecurrence
from .lstm import LstmRecurrence
from .recurrence import device_lengths
from .rnn import RnnRecurrence

RECURRENCES = {
    "rnn_tanh": RnnRecurrence,
    "rnn_relu": RnnRecurrence,
    "lstm": LstmRecurrence,
    "gru": GruRecurrence,
    "gru_textbook": GruTextbookRecurrence,
}


class CupyBackend(FusedBackend):
    """The CUDA backend: CuPy arrays in and out, cuBLAS GEMMs and the kernels of ``kernels/``.

    ``device`` defaults to the GPU through CuPy (``device.CudaDevice``), which raises
    ImportError or BackendUnavailable where CuPy or a CUDA device is missing. The tests pass a
    CPU stand-in instead, and ``name`` to register it under another name.

    ``cuda_graphs`` (default ``tuning.cuda_graphs``, False; set it on an instance): run each
    direction's time loop as a CUDA Graph captured once per shape and replayed (graphs.py),
    at most ``cuda_graph_cache`` of them kept, instead of launching every step's kernels and
    GEMMs. Validated on the CPU emulation only: its speed has not been measured on a GPU, which
    is why the per-step launches stay the default.
    """

    name = "cupy"
    library = "cupy"
    threads_per_block = 256
    variant_switches = frozenset({"clip", "peepholes", "zoneout", "proj_size", "layer_norm"})
    cuda_graphs = tuning.cuda_graphs
    cuda_graph_cache = tuning.cuda_graph_cache

    def __init__(self, device=None, name=None):
        if device is None:
            from .device import CudaDevice

            device = CudaDevice()
        self.device = device
        self.xp = device.xp
        self.library = device.library
        if name is not None:
            self.name = name
        self.graphs = None  # the GraphCache, made on the first call that uses it

    def forward(self, cell, x, dirs, lengths, training):
        with self.device.context(x):
            return super().forward(cell, x, dirs, lengths, training)

    def backward(self, cell, saved, dy, dh_n, dc_n):
        with self.device.context(dy):
            return super().backward(cell, saved, dy, dh_n, dc_n)

    def recurrence_forward(self, cell, x_proj, W_hh, b_hh, h0, c0, lengths, reverse, y, training,
                           **variant):
        B = x_proj.shape[1]
        if not self.cuda_graphs:
            run = RECURRENCES[cell.name](self, cell, W_hh, b_hh, B)
            return run.forward(x_proj, h0, c0, lengths, reverse, y, training, **variant)

        def start(staged, filled):
            run = RECURRENCES[cell.name](self, cell, staged["W_hh"], staged["b_hh"], B)
            run.bind_forward(staged["x_proj"], staged["h0"], staged["c0"], staged["lengths"],
                             reverse, filled["y"], training, staged["variant"])
            return run.forward_loop, run.forward_result

        inputs = dict(x_proj=x_proj, W_hh=W_hh, b_hh=b_hh, h0=h0, c0=c0,
                      lengths=device_lengths(self.xp, lengths), variant=variant)
        return self._graph_cache().run(("forward", cell, reverse, training,
                                        self.threads_per_block), inputs, dict(y=y), start)

    def recurrence_backward(self, cell, saved, W_hh, dy, dh_n, dc_n, d_gx):
        B = dy.shape[1]
        if not self.cuda_graphs:
            run = RECURRENCES[cell.name](self, cell, W_hh, None, B)
            return run.backward(saved, dy, dh_n, dc_n, d_gx)

        def start(staged, filled):
            run = RECURRENCES[cell.name](self, cell, staged["W_hh"], None, B)
            run.bind_backward(staged["saved"], staged["dy"], staged["dh_n"], staged["dc_n"],
                              filled["d_gx"])
            return run.backward_loop, run.backward_result

        inputs = dict(saved=saved, W_hh=W_hh, dy=dy, dh_n=dh_n, dc_n=dc_n)
        return self._graph_cache().run(("backward", cell, self.threads_per_block), inputs,
                                       dict(d_gx=d_gx), start)

    def _graph_cache(self):
        if self.graphs is None:
            self.graphs = GraphCache(self.device)
        self.graphs.size = self.cuda_graph_cache  # the knob, read per call
        return self.graphs

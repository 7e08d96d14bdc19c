"""CupyBackend: FusedBackend's GEMMs plus the per-step loop of recurrence.py on one device."""

from __future__ import annotations

from ..base import FusedBackend
from .gru import GruRecurrence, GruTextbookRecurrence
from .lstm import LstmRecurrence
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
    """

    name = "cupy"
    library = "cupy"
    threads_per_block = 256
    variant_switches = frozenset({"clip", "peepholes", "zoneout", "proj_size", "layer_norm"})

    def __init__(self, device=None, name=None):
        if device is None:
            from .device import CudaDevice

            device = CudaDevice()
        self.device = device
        self.xp = device.xp
        self.library = device.library
        if name is not None:
            self.name = name

    def forward(self, cell, x, dirs, lengths, training):
        with self.device.context(x):
            return super().forward(cell, x, dirs, lengths, training)

    def backward(self, cell, saved, dy, dh_n, dc_n):
        with self.device.context(dy):
            return super().backward(cell, saved, dy, dh_n, dc_n)

    def recurrence_forward(self, cell, x_proj, W_hh, b_hh, h0, c0, lengths, reverse, y, training,
                           **variant):
        run = RECURRENCES[cell.name](self, cell, W_hh, b_hh, x_proj.shape[1])
        return run.forward(x_proj, h0, c0, lengths, reverse, y, training, **variant)

    def recurrence_backward(self, cell, saved, W_hh, dy, dh_n, dc_n, d_gx):
        run = RECURRENCES[cell.name](self, cell, W_hh, None, dy.shape[1])
        return run.backward(saved, dy, dh_n, dc_n, d_gx)

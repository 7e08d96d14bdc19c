"""The CUDA sources in ``kernels/`` (installed as ``fastrnn.kernels``) and their instantiations.

Each source file is one module; its kernels are templates instantiated per dtype through NVRTC
name expressions (``"lstm_forward<float>"``), never copied per type. A *device* (``device.py``, or
the CPU emulation in the tests) turns a source into callables; ``kernel`` memoises them per
device, so each source compiles once per device and process. Nothing here imports CuPy.
"""

from __future__ import annotations

import re
from importlib import resources

import numpy as np

# NVRTC options: C++17 and IEEE math (no fast-math, so NaN and Inf keep their meaning).
OPTIONS = ("-std=c++17",)

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Every kernel template of each file with its template arguments after the dtype ("" for none).
# The last argument of every cell kernel is Clip (cells.Variant.clip), compiled both ways.
_CLIP = (", false", ", true")
TEMPLATES = {
    "rnn.cu": [(k, relu + clip) for k in ("rnn_forward", "rnn_backward")
               for relu in (", false", ", true") for clip in _CLIP],
    "lstm.cu": [(k, clip) for k in ("lstm_forward", "lstm_backward", "lstm_layer_norm_forward",
                                    "lstm_layer_norm_backward") for clip in _CLIP]
    + [("lstm_projection_forward", ""), ("lstm_projection_backward", "")],
    "gru.cu": [(k, clip) for k in ("gru_forward", "gru_backward", "gru_textbook_forward_gates",
                                   "gru_textbook_forward_state", "gru_textbook_backward_state",
                                   "gru_textbook_backward_reset", "gru_layer_norm_forward",
                                   "gru_layer_norm_backward") for clip in _CLIP],
}

_INCLUDE = re.compile(r'^#include "([\w.]+)"[ \t]*$', re.MULTILINE)


def name_expression(kernel: str, dtype, extra: str = "") -> str:
    """``lstm_forward<float>`` for float32: the string NVRTC instantiates and CuPy looks up."""
    return f"{kernel}<{CTYPES[np.dtype(dtype)]}{extra}>"


def name_expressions(file: str) -> list:
    """Every instantiation of ``file``: each template for float and double."""
    return [f"{k}<{c}{extra}>" for k, extra in TEMPLATES[file] for c in CTYPES.values()]


def _read(name: str) -> str:
    return resources.files("fastrnn.kernels").joinpath(name).read_text(encoding="utf-8")


def source(file: str) -> str:
    """The text of ``file`` with each ``#include "x.cuh"`` replaced by that header's text.

    One self-contained string, so CuPy's kernel cache (keyed on the code) sees header changes;
    ``#line`` directives keep compiler messages pointing at the real files and lines.
    """
    text = _read(file)

    def paste(match):
        line = text.count("\n", 0, match.start()) + 1
        return f'#line 1 "{match.group(1)}"\n{_read(match.group(1))}\n#line {line + 1} "{file}"'

    return _INCLUDE.sub(paste, text)


_kernels: dict = {}


def kernel(device, file: str, expression: str):
    """The callable ``f(grid, block, args)`` of one instantiation, compiled once per device."""
    key = (device.key(), file, expression)
    found = _kernels.get(key)
    if found is None:
        compiled = device.compile(source(file), OPTIONS, name_expressions(file))
        for name, function in compiled.items():
            _kernels[(device.key(), file, name)] = function
        found = _kernels[key]
    return found

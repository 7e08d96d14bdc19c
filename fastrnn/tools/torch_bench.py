"""`fastrnn bench --torch-frontend`: the PyTorch front end timed against torch.nn, and its
overhead over the stack call it wraps.

Per cell and shape, on the same CPU float32 tensors in this one process: an inference forward
(``torch.no_grad``) and a training step (forward, a sum loss, ``backward()`` through autograd)
of ``torch.nn.X`` and of ``fastrnn.torch.X`` holding the same weights. The overhead of the
module is measured on the same cell at T = 2, B = 1, H = I = 8, where the kernels take a few
microseconds: module forward minus ``stack.forward`` on the tensors' NumPy views (the call the
module wraps), and module training step minus ``stack.forward`` + ``stack.backward``. Every
figure is the median of ``rounds`` samples of interleaved calls (each sample lasts at least
``min_sample_s``).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .. import dispatch, stack
from ..cells import cell_by_name
from . import presets

_TORCH_CELLS = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
                "lstm": ("LSTM", {}), "gru": ("GRU", {})}


def _sample(fn, min_sample_s):
    """Seconds per call of ``fn``, averaged over enough calls to last ``min_sample_s``."""
    number, t0 = 0, time.perf_counter()
    while True:
        fn()
        number += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_sample_s:
            return elapsed / number


def _median_times(fns, rounds, min_sample_s):
    """name -> median seconds per call, the functions called interleaved round by round."""
    for fn in fns.values():
        fn()
        fn()
    samples = {name: [] for name in fns}
    for r in range(rounds):
        names = list(fns)
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_sample(fns[name], min_sample_s))
    return {name: statistics.median(s) for name, s in samples.items()}


def _pair(cell, I, H):
    import torch

    import fastrnn.torch as ft

    kind, extra = _TORCH_CELLS[cell]
    ref = getattr(torch.nn, kind)(I, H, **extra)
    ours = getattr(ft, kind)(I, H, **extra)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _calls(module, x):
    import torch

    def inference():
        with torch.no_grad():
            module(x)

    def training():
        module(x)[0].sum().backward()

    return inference, training


def time_cell(cell, shape, rounds, min_sample_s):
    """Rows of the table for one cell and shape: ms per call for torch.nn and fastrnn.torch."""
    import torch

    ref, ours = _pair(cell, shape.I, shape.H)
    x = torch.randn(shape.T, shape.B, shape.I, requires_grad=True)
    fns = {}
    for name, module in (("torch.nn", ref), ("fastrnn.torch", ours)):
        fns[f"{name} inference"], fns[f"{name} training"] = _calls(module, x)
    t = _median_times(fns, rounds, min_sample_s)
    return [{"cell": cell, "shape": f"{shape.name} ({shape.T}x{shape.B}x{shape.I}x{shape.H})",
             "mode": mode, "torch_ms": t[f"torch.nn {mode}"] * 1e3,
             "fastrnn_ms": t[f"fastrnn.torch {mode}"] * 1e3} for mode in presets.MODES]


def overhead(cell, rounds, min_sample_s):
    """Microseconds per call the module adds over the stack call, inference and training."""
    import torch

    _, ours = _pair(cell, 8, 8)
    x = torch.randn(2, 1, 8, requires_grad=True)
    params = {n: p.detach().numpy() for n, p in ours.named_parameters()}
    backend = dispatch.select(None, "numpy")
    stack_ = stack.Stack(cell_by_name(cell), 8, 8)
    states = tuple(None for _ in stack_.cell.state_names)
    xn, dy = x.detach().numpy(), np.ones((2, 1, 8), np.float32)

    def stack_inference():
        stack.forward(stack_, backend, params, xn, states, None, training=False)

    def stack_training():
        _, _, saved = stack.forward(stack_, backend, params, xn, states, None, training=True)
        stack.backward(saved, dy, states)

    inference, training = _calls(ours, x)
    t = _median_times({"module inference": inference, "stack inference": stack_inference,
                       "module training": training, "stack training": stack_training},
                      rounds, min_sample_s)
    return {mode: {"module_us": t[f"module {mode}"] * 1e6, "stack_us": t[f"stack {mode}"] * 1e6,
                   "overhead_us": (t[f"module {mode}"] - t[f"stack {mode}"]) * 1e6}
            for mode in presets.MODES}


def markdown(rows, over, threads) -> str:
    lines = [f"fastrnn.torch vs torch.nn, CPU float32, {threads} threads, ms per call "
             "(median); training = forward + sum + backward()", "",
             "| cell | shape (TxBxIxH) | mode | torch.nn | fastrnn.torch | speedup |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['shape']} | {r['mode']} | {r['torch_ms']:.3f} | "
                     f"{r['fastrnn_ms']:.3f} | {r['torch_ms'] / r['fastrnn_ms']:.2f}x |")
    lines += ["", "Module overhead over the stack call (T=2, B=1, I=H=8), microseconds:", "",
              "| cell | mode | module | stack call | overhead |", "|---|---|---:|---:|---:|"]
    for cell, modes in over.items():
        for mode, o in modes.items():
            lines.append(f"| {cell} | {mode} | {o['module_us']:.1f} | {o['stack_us']:.1f} | "
                         f"{o['overhead_us']:.1f} |")
    return "\n".join(lines) + "\n"


def run(cells, shapes, threads, rounds=7, min_sample_s=0.05):
    """The table as markdown; cells among rnn_tanh, rnn_relu, lstm, gru."""
    import torch

    bad = [c for c in cells if c not in _TORCH_CELLS]
    if bad:
        raise ValueError(f"the PyTorch front end times {list(_TORCH_CELLS)}, not {bad}")
    torch.set_num_threads(threads)
    rows = [row for cell in cells for shape in shapes
            for row in time_cell(cell, shape, rounds, min_sample_s)]
    over = {cell: overhead(cell, rounds, min_sample_s) for cell in cells}
    return markdown(rows, over, threads)

"""The decoding step and the cost of one call, side by side with torch in one process.

    python benchmarks/step.py                 # the step at B = 1, H = 64 ... 512, every cell
    python benchmarks/step.py --calls         # functional calls at T = 1, B = 1 (LSTM)
    python benchmarks/step.py --rows          # the step's two paths over batch rows

Step: ``layer.step`` of a NumPy layer (eval) and ``module.step`` of a fastrnn.torch module
(no_grad) against torch.nn.LSTMCell / GRUCell / RNNCell (no_grad), one layer, input size H.
Each step reads W_ih and W_hh once: the table gives those bytes, the GB/s each reaches, and
what one thread's streaming read reaches here from the L2 cache, the L3 cache and memory.
Timings: medians of interleaved rounds (fastrnn.tools.interleave), torch at 2 threads.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import fastrnn
import fastrnn.torch as ft
from fastrnn.tools.interleave import interleaved, read_bandwidth

CELLS = {"lstm": (fastrnn.LSTM, ft.LSTM, torch.nn.LSTMCell, 4),
         "gru": (fastrnn.GRU, ft.GRU, torch.nn.GRUCell, 3),
         "rnn_tanh": (fastrnn.RNN, ft.RNN, torch.nn.RNNCell, 1)}


def step_row(cell, H, B=1):
    layer_cls, module_cls, torch_cls, G = CELLS[cell]
    torch_cell = torch_cls(H, H)
    module = module_cls(H, H).eval()
    layer = layer_cls(H, H).eval()
    x = torch.randn(B, H)
    h = torch.zeros(B, H)
    hx = (h, h) if cell == "lstm" else h
    xn = x.numpy()
    zeros = np.zeros((1, B, H), np.float32)
    hn = (zeros, zeros) if cell == "lstm" else zeros
    module_hx = tuple(t.unsqueeze(0) for t in hx) if cell == "lstm" else h.unsqueeze(0)

    def in_no_grad(f):
        def call():
            with torch.no_grad():
                f()
        return call

    samples = interleaved({
        "torch cell": in_no_grad(lambda: torch_cell(x, hx)),
        "fastrnn.torch step": in_no_grad(lambda: module.step(x, module_hx)),
        "NumPy layer step": lambda: layer.step(xn, hn),
    })
    med = {k: float(np.median(v)) for k, v in samples.items()}
    nbytes = 4 * (2 * G * H * H + 2 * G * H)
    return {"cell": cell, "H": H, "bytes": nbytes, **{k: v * 1e6 for k, v in med.items()},
            "spread": max(float(v.max() / v.min()) for v in samples.values())}


def path_rows(cell, H, B):
    """The NumPy layer's eval step (I = H/2) through the one-call kernel and through a forward
    of one step (the numba backend's two paths; ``step_forward_min_state`` picks one), beside
    torch's cell: what tuning.step_forward_min_state was chosen from."""
    layer_cls, _, torch_cls, _ = CELLS[cell]
    layer, torch_cell = layer_cls(H // 2, H).eval(), torch_cls(H // 2, H)
    x = np.random.default_rng(0).standard_normal((B, H // 2)).astype(np.float32)
    xt = torch.from_numpy(x)
    backend = fastrnn.get_backend("numba")
    default = backend.step_forward_min_state

    def through(limit):
        def call():
            backend.step_forward_min_state = limit
            layer.step(x)
        return call

    def torch_step():
        with torch.no_grad():
            torch_cell(xt)

    try:
        samples = interleaved({"kernel": through(B * H + 1), "forward": through(0),
                               "torch": torch_step})
    finally:
        backend.step_forward_min_state = default
    return {k: float(np.median(v)) * 1e6 for k, v in samples.items()}


def call_rows():
    rows = []
    for H in (8, 64, 256, 512):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 1, H)).astype(np.float32)
        W = (rng.standard_normal((4 * H, H)) * 0.1).astype(np.float32)
        b = np.zeros(4 * H, np.float32)

        def training():
            r = fastrnn.lstm_forward(x, W, W, b, b)
            fastrnn.lstm_backward(r.ctx, np.ones_like(r.y))

        torch_cell = torch.nn.LSTMCell(H, H)
        xt = torch.from_numpy(x[0])

        def torch_inference():
            with torch.no_grad():
                torch_cell(xt)

        samples = interleaved({
            "inference": lambda: fastrnn.lstm_forward(x, W, W, b, b, training=False),
            "training": training,
            "torch LSTMCell inference": torch_inference,
        })
        rows.append({"H": H, **{k: float(np.median(v)) * 1e6 for k, v in samples.items()}})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", action="store_true",
                        help="time functional LSTM calls at T = 1, B = 1 instead")
    parser.add_argument("--rows", action="store_true",
                        help="time the step's two paths over batch rows instead")
    parser.add_argument("--sizes", default="64,128,256,512", help="hidden sizes of the step")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.rows:
        print("| cell | H | B | kernel µs | forward of one step µs | kernel / forward | "
              "torch cell µs |\n|---|--:|--:|--:|--:|--:|--:|")
        for cell in ("lstm", "gru"):
            for H in (64, 256):
                for B in (16, 32, 64, 128, 256, 1000):
                    r = path_rows(cell, H, B)
                    print(f"| {cell} | {H} | {B} | {r['kernel']:.0f} | {r['forward']:.0f} | "
                          f"{r['kernel'] / r['forward']:.2f} | {r['torch']:.0f} |", flush=True)
        return
    if args.calls:
        print("| H | inference µs | training (forward + backward) µs | torch LSTMCell "
              "inference µs |\n|--:|--:|--:|--:|")
        for r in call_rows():
            print(f"| {r['H']} | {r['inference']:.1f} | {r['training']:.1f} | "
                  f"{r['torch LSTMCell inference']:.1f} |")
        return
    bw = {name: read_bandwidth(n) for name, n in
          (("L2", 512 << 10), ("L3", 16 << 20), ("memory", 512 << 20))}
    print("One thread's streaming read here: " + ", ".join(
        f"{k} {v:.0f} GB/s" for k, v in bw.items()))
    print("\n| cell | H | weights read per step | torch cell µs | fastrnn.torch step µs (x torch) "
          "| NumPy layer step µs (x torch) | NumPy step GB/s | max/min |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for H in (int(s) for s in args.sizes.split(",")):
        for cell in CELLS:
            r = step_row(cell, H)
            t = r["torch cell"]
            print(f"| {cell} | {H} | {r['bytes'] / 1e6:.2f} MB | {t:.1f} | "
                  f"{r['fastrnn.torch step']:.1f} ({t / r['fastrnn.torch step']:.2f}x) | "
                  f"{r['NumPy layer step']:.1f} ({t / r['NumPy layer step']:.2f}x) | "
                  f"{r['bytes'] / r['NumPy layer step'] / 1e3:.1f} | {r['spread']:.2f} |")


if __name__ == "__main__":
    main()

"""The PyTorch modules on a device against torch.nn: `fastrnn gpu-check`'s PyTorch step.

    python -m fastrnn.tools.torch_device_check [--device cuda] [--backend NAME] [--out FILE]

Per cell (RNN tanh, LSTM, GRU), ``fastrnn.torch.X`` and ``torch.nn.X`` (cuDNN on CUDA) hold the
same weights on ``--device``; both run a forward and a backward of ``y.sum() + h_n.sum()`` on
the same input. Checked: the input reaches the backend without a copy (the array it sees shares
the tensor's memory: DLPack on CUDA), outputs and every gradient within the float32 tolerance of
torch.nn's (fastrnn/tolerances.py), and one training step of each timed (median of
``ROUNDS``). Writes a markdown table to ``--out`` (and stdout); exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from ..tolerances import tolerance

CELLS = {"rnn_tanh": ("RNN", {}), "lstm": ("LSTM", {}), "gru": ("GRU", {})}
T, B, I, H = 20, 8, 32, 64
ROUNDS = 5


def _address(a) -> int:
    """Where an array's data starts: a CuPy array's device pointer or a NumPy array's."""
    data = getattr(a, "data", None)
    return data.ptr if hasattr(data, "ptr") else a.__array_interface__["data"][0]


def _step(module, x, sync):
    """One training step: forward, y.sum() + h_n.sum(), backward; returns (y, h_n, seconds)."""
    for p in (x, *module.parameters()):
        p.grad = None
    start = time.perf_counter()
    y, state = module(x)
    h_n = state[0] if isinstance(state, tuple) else state
    (y.sum() + h_n.sum()).backward()
    sync()
    return y, h_n, time.perf_counter() - start


def check_cell(cell, device, backend) -> dict:
    import torch

    import fastrnn.torch as ft
    from fastrnn.torch import devices

    kind, extra = CELLS[cell]
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(I, H, **extra).to(device)
    ours = getattr(ft, kind)(I, H, backend=backend, **extra).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    zero_copy = _address(devices.adapter_for(x.device).array(x)) == x.data_ptr()
    results, times = {}, {"torch.nn": [], "fastrnn.torch": []}
    for name, module in (("torch.nn", ref), ("fastrnn.torch", ours)):
        y, h_n, _ = _step(module, x, sync)
        results[name] = {"y": y, "h_n": h_n, "dx": x.grad} | {
            f"d{n}": p.grad for n, p in module.named_parameters()}
        results[name] = {k: v.detach().cpu().numpy().astype(np.float64)
                         for k, v in results[name].items()}
    for _ in range(ROUNDS):  # interleaved, after the first calls above
        for name, module in (("torch.nn", ref), ("fastrnn.torch", ours)):
            times[name].append(_step(module, x, sync)[2])
    tol = tolerance(np.float32)
    worst, worst_name = 0.0, None
    for k, expected in results["torch.nn"].items():
        bound = tol["atol"] + tol["rtol"] * np.abs(expected)
        over = float(np.max(np.abs(results["fastrnn.torch"][k] - expected) / bound))
        if over >= worst:
            worst, worst_name = over, k
    return {"cell": cell, "zero_copy": zero_copy, "worst": worst, "worst_name": worst_name,
            "compared": sorted(results["torch.nn"]),
            "torch_ms": statistics.median(times["torch.nn"]) * 1e3,
            "fastrnn_ms": statistics.median(times["fastrnn.torch"]) * 1e3,
            "passed": zero_copy and worst <= 1.0}


def markdown(rows, device, backend) -> str:
    lines = [f"fastrnn.torch (backend {backend or 'default'}) vs torch.nn on {device}, float32, "
             f"T={T} B={B} I={I} H={H}; difference: largest |fastrnn - torch.nn| over the "
             f"tolerance {tolerance(np.float32)} (<= 1 passes), over y, h_n, dx and every "
             f"parameter's gradient; training step: forward + sum + backward, median of "
             f"{ROUNDS}", "",
             "| cell | zero-copy input | largest difference (where) | torch.nn step ms "
             "| fastrnn.torch step ms | result |", "|---|---|--:|--:|--:|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {'yes' if r['zero_copy'] else 'NO'} | {r['worst']:.2g} "
                     f"({r['worst_name']}) | {r['torch_ms']:.3g} | {r['fastrnn_ms']:.3g} "
                     f"| {'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn.tools.torch_device_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default %(default)s)")
    parser.add_argument("--backend", default="",
                        help="fastrnn backend (default: the rule for the device's arrays)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    import torch

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("torch_device_check: error: torch finds no CUDA device", file=sys.stderr)
        return 2
    rows = [check_cell(cell, args.device, args.backend) for cell in CELLS]
    text = markdown(rows, args.device, args.backend)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

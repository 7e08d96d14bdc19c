"""How much fastrnn and the other libraries of a training loop slow each other down in one
process: torch work, NumPy (OpenBLAS) products and ONNX Runtime runs, before and after a fastrnn
call, in both directions.

    python benchmarks/interference.py                  # every row below, about 3 minutes
    python benchmarks/interference.py --presets small --modes inference --budget 0.5

Each row times a *victim* call right after a *culprit* call ("beside") and right after another
call of the victim itself ("alone"); the slowdown is beside / alone, each the median of many
calls. The two alternate call by call, so a busy machine weighs on both alike. The work:

    fastrnn   one layer through the functional API on the Numba backend, float32, the preset's
              (T, B, I, H): GRU at tiny and small, LSTM at medium; inference is one forward,
              training a forward and a backward with dy = ones
    torch     a torch.nn.Linear(256, 256) forward on a (512, 256) batch, a mean-square loss and
              its backward
    NumPy     a float32 (512, 512) @ (512, 512) product
    ONNX Runtime   one run of a session of a (512, 512) MatMul with the default session options

Every run starts two fresh interpreters, one per import order: "torch first" imports torch before
fastrnn; "torch after" imports it only after fastrnn's first call, so the OpenMP runtime that
Numba starts is loaded first. Nothing here sets an environment variable: the process is what a
user's script gets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PRESET_CELLS = {"tiny": "gru", "small": "gru", "medium": "lstm"}
ORDERS = ("torch-first", "torch-after")
MODES = ("inference", "training")
# (victim, culprit): the victim is timed right after the culprit.
PAIRS = (("torch", "fastrnn"), ("numpy", "fastrnn"), ("fastrnn", "numpy"),
         ("fastrnn", "onnxruntime"), ("fastrnn", "torch"))
LABELS = {"fastrnn": "fastrnn call", "torch": "torch Linear fwd+bwd",
          "numpy": "NumPy 512x512 matmul", "onnxruntime": "ONNX Runtime run"}


# ----------------------------------------------------------------------------------------------
# The worker: one interpreter, one import order.


def _fastrnn_call(preset, mode):
    import numpy as np

    from fastrnn.cells import cell_by_name
    from fastrnn.tools import presets, runners

    s = presets.PRESETS[preset]
    cell = cell_by_name(PRESET_CELLS[preset])
    p = runners.make_params(cell, s.T, s.B, s.I, s.H, np.float32)
    call, _, _ = runners.fastrnn_runner("numba", cell, p, mode)
    return call


def _torch_call():
    import torch

    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(256, 256)
    x = torch.randn(512, 256, generator=gen)
    target = torch.randn(512, 256, generator=gen)

    def call():
        head.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(head(x), target)
        loss.backward()
    return call


def _numpy_call():
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512), dtype=np.float32)
    b = rng.standard_normal((512, 512), dtype=np.float32)
    return lambda: a @ b


def _onnxruntime_call():
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((512, 512), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [512, 512])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [512, 512])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"X": rng.standard_normal((512, 512), dtype=np.float32)}
    return lambda: session.run(None, feeds)


def slowdown(victim, culprit, budget_s, min_pairs=9):
    """(alone, beside): median seconds of one victim call right after another victim call and
    right after a culprit call. The two alternate call by call, so that the other processes of
    a busy machine weigh on both alike, for about ``budget_s`` seconds."""
    for _ in range(3):
        culprit()
        victim()
    start = time.perf_counter()
    victim()
    victim()
    culprit()
    pair_s = time.perf_counter() - start
    alone, beside = [], []
    for _ in range(max(min_pairs, int(budget_s / max(pair_s, 1e-6)))):
        for before, sample in ((victim, alone), (culprit, beside)):
            before()
            t0 = time.perf_counter()
            victim()
            sample.append(time.perf_counter() - t0)
    return statistics.median(alone), statistics.median(beside)


def worker(order, presets_, modes, budget_s):
    """Print one JSON line per (preset, mode, victim, culprit)."""
    if order == "torch-first":
        import torch  # noqa: F401

    import fastrnn  # noqa: F401

    fastrnn_calls = {(p, m): _fastrnn_call(p, m) for p in presets_ for m in modes}
    for call in fastrnn_calls.values():  # compiles, and starts Numba's threads
        call()
    others = {"torch": _torch_call(), "numpy": _numpy_call(),
              "onnxruntime": _onnxruntime_call()}
    for (preset, mode), call in fastrnn_calls.items():
        work = dict(others, fastrnn=call)
        for victim, culprit in PAIRS:
            alone, beside = slowdown(work[victim], work[culprit], budget_s)
            print(json.dumps({"order": order, "preset": preset, "mode": mode, "victim": victim,
                              "culprit": culprit, "alone_ms": alone * 1e3,
                              "beside_ms": beside * 1e3}), flush=True)


# ----------------------------------------------------------------------------------------------
# The driver: one worker per import order, one table.


def run(presets_, modes, orders, budget_s):
    rows = []
    for order in orders:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", order,
             "--presets", ",".join(presets_), "--modes", ",".join(modes),
             "--budget", str(budget_s)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"the {order} worker failed:\n{out.stderr}")
        rows += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return rows


def table(rows):
    lines = ["| what runs | after what | preset | mode | import order | alone ms | beside ms "
             "| slowdown |", "|---|---|---|---|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (PAIRS.index((r["victim"], r["culprit"])),
                                         list(PRESET_CELLS).index(r["preset"]),
                                         MODES.index(r["mode"]), ORDERS.index(r["order"]))):
        cell = PRESET_CELLS[r["preset"]].upper()
        lines.append(
            f"| {LABELS[r['victim']]} | {LABELS[r['culprit']]} | {r['preset']} ({cell}) "
            f"| {r['mode']} | {r['order']} | {r['alone_ms']:.3f} | {r['beside_ms']:.3f} "
            f"| {r['beside_ms'] / r['alone_ms']:.2f}x |")
    worst = max(rows, key=lambda r: r["beside_ms"] / r["alone_ms"])
    lines.append("")
    lines.append(f"worst: {LABELS[worst['victim']]} after {LABELS[worst['culprit']]}, "
                 f"{worst['preset']} {worst['mode']} {worst['order']}: "
                 f"{worst['beside_ms'] / worst['alone_ms']:.2f}x")
    return "\n".join(lines)


def _names(text, allowed, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(f"--{what}: expected a comma-separated subset of {','.join(allowed)}, "
                         f"got {text!r}")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESET_CELLS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--orders", default=",".join(ORDERS))
    parser.add_argument("--budget", type=float, default=0.8,
                        help="seconds per row and import order (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    parser.add_argument("--worker", choices=ORDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    presets_ = _names(args.presets, PRESET_CELLS, "presets")
    modes = _names(args.modes, MODES, "modes")
    if args.worker:
        worker(args.worker, presets_, modes, args.budget)
        return 0
    started = time.perf_counter()
    rows = run(presets_, modes, _names(args.orders, ORDERS, "orders"), args.budget)
    print(table(rows))
    print(f"({time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

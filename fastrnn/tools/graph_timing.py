"""The CUDA backend's CUDA Graph path (CupyBackend.cuda_graphs: each direction's time loop
captured once per shape and replayed) against its per-step launches, on one backend: for each
cell, shape and mode, both paths' results must agree, and their times are compared in
interleaved rounds. `fastrnn gpu-check` runs it: the graph path stays off by default until
these figures, measured on a GPU, say it pays.

    python -m fastrnn.tools.graph_timing [--backend cupy] [--shapes 100x1x128x128,...]
                                         [--rounds 7] [--out graphs.md]

Writes a Markdown table (stdout, and --out): per cell, shape and mode the median time of a call
with per-step launches and with the graph, and the median of the per-round ratios graph /
launches (below 1: the graph is faster). Exits 1 if the paths' results differ beyond the
float32 tolerance (fastrnn/tolerances.py), 2 if the backend cannot run here or has no graph
path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from ..cells import cell_by_name
from . import runners
from .device_smoke import named_backend, worst_difference

CELLS = ("rnn_tanh", "lstm", "gru")
# One-step-at-a-time decoding sizes and a small training batch: where launches cost most.
SHAPES = "100x1x128x128,100x16x128x128,100x64x256x256"
MODES = ("inference", "training")


def _call(cell, backend, p, cot, mode):
    """One call: y (inference) or y and every gradient (training), as device arrays."""
    out = runners.fastrnn_forward(cell, p, training=mode == "training", backend=backend)
    named = runners.outputs(cell, out[:-1])
    if mode == "training":
        named |= runners.gradients(runners.fastrnn_backward(cell, out[-1], cot))
    return named


def measure(cell, backend, shape, mode, rounds):
    """(ms with launches, ms with the graph, median ratio graph / launches, the paths'
    largest difference in units of the float32 tolerance)."""
    T, B, I, H = shape
    p = runners.make_params(cell, T, B, I, H, np.float32, seed=0)
    cot = runners.make_cotangents(cell, T, B, H, np.float32, seed=1)
    if backend.library != "numpy":
        p = {k: None if v is None else backend.xp.asarray(v) for k, v in p.items()}
        cot = {k: backend.xp.asarray(v) for k, v in cot.items()}
    sync = backend.device.synchronize

    def timed(graphs):
        backend.cuda_graphs = graphs
        sync()
        start = time.perf_counter()
        result = _call(cell, backend, p, cot, mode)
        sync()
        return time.perf_counter() - start, result

    # The first call of each path compiles, captures or loads: not timed.
    _, launched = timed(False)
    _, graphed = timed(True)
    _, replayed = timed(True)
    worst = max(worst_difference(graphed, launched), worst_difference(replayed, launched))
    times = {False: [], True: []}
    for r in range(rounds):
        for graphs in ((False, True) if r % 2 == 0 else (True, False)):
            times[graphs].append(timed(graphs)[0])
    ratio = statistics.median(g / s for g, s in zip(times[True], times[False]))
    return (1e3 * statistics.median(times[False]), 1e3 * statistics.median(times[True]),
            ratio, worst)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn.tools.graph_timing",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cupy")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--shapes", default=SHAPES, help="TxBxIxH, comma-separated")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    backend = named_backend(args.backend, "graph_timing")
    if backend is None:
        return 2
    if not hasattr(backend, "cuda_graphs"):
        print(f"graph_timing: error: backend {args.backend!r} has no CUDA Graph path",
              file=sys.stderr)
        return 2
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    was = backend.cuda_graphs
    lines = [f"CUDA Graphs against per-step launches on backend {args.backend!r}, float32, "
             f"{args.rounds} interleaved rounds (ratio below 1: the graph is faster)", "",
             "| cell | T x B x I x H | mode | launches ms | graph ms | graph / launches | "
             "largest difference (of the tolerance) |", "|---|---|---|--:|--:|--:|--:|"]
    failed = 0
    try:
        for name in args.cells.split(","):
            for shape in shapes:
                for mode in MODES:
                    launched, graphed, ratio, worst = measure(cell_by_name(name), backend,
                                                              shape, mode, args.rounds)
                    failed += worst > 1.0
                    lines.append(f"| {name} | {'x'.join(map(str, shape))} | {mode} | "
                                 f"{launched:.3g} | {graphed:.3g} | {ratio:.2f} | "
                                 f"{worst:.2g}{'' if worst <= 1.0 else ' FAIL'} |")
                    print(lines[-1], flush=True)
    finally:
        backend.cuda_graphs = was
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if failed:
        print(f"graph_timing: {failed} case(s) where the graph's results differ", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

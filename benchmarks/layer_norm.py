"""What layer norm costs on the Numba backend: a layer-normalised LSTM / GRU forward against the
plain cell, as time ratios measured in one process.

    python benchmarks/layer_norm.py [--rounds N] [--presets medium,large] [--cells lstm,gru]

Shapes are fastrnn bench's presets (tools/presets.py), float32, one direction, no lengths. Per
cell, preset and mode (inference; training = the training forward alone, which also keeps what
backward needs) it times one layer forward through the engine (so the layer-normalised cell
includes the input-side layer norm above the backend), the plain and the normalised call
interleaved round by round, and prints the median of the per-round ratios normalised/plain
(issue 16's target: at most 1.3).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np

import fastrnn
from fastrnn import engine
from fastrnn.backends import numba_cpu
from fastrnn.backends.base import Direction
from fastrnn.cells import Variant, cell_by_name
from fastrnn.tools.presets import PRESETS


def directions(cell, shape, rng):
    """(plain Direction, layer-normalised Direction) with the same weights; gains near 1."""
    G, H, I, B = cell.gates, shape.H, shape.I, shape.B

    def rand(*s):
        return (rng.standard_normal(s) * 0.1).astype(np.float32)
    plain = Direction(rand(G * H, I), rand(G * H, H), rand(G * H), rand(G * H), rand(B, H),
                      rand(B, H) if cell.has_cell_state else None, False)
    gains = {"g_ih": 1 + rand(G * H), "g_hh": 1 + rand(G * H)}
    if cell.has_cell_state:
        gains.update(g_c=1 + rand(H), b_c=rand(H))
    return plain, replace(plain, **gains)


def timed(call):
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def measure(name, shape, training, rounds, rng):
    """Median over interleaved rounds of time(layer-normalised) / time(plain), and the medians."""
    backend = fastrnn.get_backend("numba")
    plain_cell = cell_by_name(name)
    normed_cell = replace(plain_cell, variant=Variant(layer_norm=True))
    d_plain, d_normed = directions(plain_cell, shape, rng)
    x = rng.standard_normal((shape.T, shape.B, shape.I)).astype(np.float32)
    calls = [lambda c=c, d=d: engine.run_forward(c, backend, x, [d], None, training)
             for c, d in ((plain_cell, d_plain), (normed_cell, d_normed))]
    for call in calls:  # compile and warm
        call()
    times = [[], []]
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for k in order:
            times[k].append(timed(calls[k]))
    ratios = [b / a for a, b in zip(*times)]
    return statistics.median(ratios), statistics.median(times[0]), statistics.median(times[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--presets", default="medium,large")
    parser.add_argument("--cells", default="lstm,gru")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"numba threads {numba_cpu.get_num_threads()}, float32, "
          f"{args.rounds} interleaved rounds, medians")
    print(f"{'cell':5} {'preset':7} {'mode':9} {'plain ms':>9} {'LN ms':>9} {'LN/plain':>9}")
    for preset in args.presets.split(","):
        shape = PRESETS[preset]
        for name in args.cells.split(","):
            for training in (False, True):
                ratio, plain, normed = measure(name, shape, training, args.rounds, rng)
                mode = "training" if training else "inference"
                print(f"{name:5} {preset:7} {mode:9} {plain * 1e3:9.2f} {normed * 1e3:9.2f} "
                      f"{ratio:9.3f}", flush=True)


if __name__ == "__main__":
    main()

"""One training forward and one backward per cell on a backend (default "cupy"), checked against
the NumPy reference: the small workload `fastrnn gpu-check` runs under compute-sanitizer
(racecheck, memcheck), so the sanitizer sees every kernel launch once.

    python -m fastrnn.tools.device_smoke [--backend cupy]

Prints one line per cell; exits 1 if any result differs from the reference beyond the float32
tolerance (fastrnn/tolerances.py), 2 if the backend cannot run here.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .. import dispatch
from ..cells import ALL_CELLS
from ..tolerances import tolerance
from . import runners

# B*H = 99 is not a multiple of a warp, so the last block is partly idle; lengths differ.
T, B, I, H = 5, 3, 4, 33
LENGTHS = np.array([5, 2, 4])


def run_cell(cell, backend) -> float:
    """The largest |difference| of y and every gradient from the reference's, over the
    float32 tolerance's bound (<= 1 passes)."""
    p = runners.make_params(cell, T, B, I, H, np.float32, seed=0)
    cot = runners.make_cotangents(cell, T, B, H, np.float32, seed=1)
    results = []
    for on in (backend, dispatch.get_backend("numpy")):
        args, grads_in = p, cot
        if on.library != "numpy":
            args = {k: None if v is None else on.xp.asarray(v) for k, v in p.items()}
            grads_in = {k: on.xp.asarray(v) for k, v in cot.items()}
        out = runners.fastrnn_forward(cell, args, training=True, backend=on, lengths=LENGTHS)
        grads = runners.fastrnn_backward(cell, out[-1], grads_in)
        named = runners.outputs(cell, out[:-1]) | runners.gradients(grads)
        results.append(named)
    return worst_difference(*results)


def worst_difference(got: dict, expected: dict) -> float:
    """The largest |got - expected| over every named result (arrays of any library), in units
    of the float32 tolerance's bound (<= 1 passes)."""
    tol = tolerance(np.float32)
    worst = 0.0
    for name, want in expected.items():
        want = runners.to_numpy(want).astype(np.float64)
        diff = np.abs(runners.to_numpy(got[name]).astype(np.float64) - want)
        worst = max(worst, float(np.max(diff / (tol["atol"] + tol["rtol"] * np.abs(want)))))
    return worst


def named_backend(name, prog):
    """The backend ``name``, or None after saying on stderr why it cannot run here."""
    try:
        return dispatch.get_backend(name)
    except (ValueError, dispatch.BackendUnavailable) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn.tools.device_smoke",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cupy")
    args = parser.parse_args(argv)
    backend = named_backend(args.backend, "device_smoke")
    if backend is None:
        return 2
    failed = 0
    for cell in ALL_CELLS:
        worst = run_cell(cell, backend)
        ok = worst <= 1.0
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {cell.name}: forward + backward on {args.backend}, "
              f"largest difference {worst:.2g} of the float32 tolerance", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

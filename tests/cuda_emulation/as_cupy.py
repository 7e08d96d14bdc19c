"""``python -m cuda_emulation.as_cupy MODULE [ARGS...]``: run MODULE as ``python -m`` would,
with the emulated CUDA backend registered under the name "cupy".

`fastrnn gpu-check --emulate` runs its Python steps through this, so the very commands the GPU
check runs (``fastrnn validate --backends cupy``, ``fastrnn bench --backends cupy``, the
sanitizer's workload, the PyTorch check) run here on the CPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import runpy
import sys

import fastrnn

from . import emulated_backend


def main():
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m cuda_emulation.as_cupy MODULE [ARGS...]")
    module = sys.argv[1]
    fastrnn.register_backend("cupy", emulated_backend())
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

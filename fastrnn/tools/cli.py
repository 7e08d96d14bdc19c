"""The `fastrnn` command: `fastrnn bench`, `fastrnn validate`, `fastrnn info`, `fastrnn gpu-check`.

Exit codes: 0 success, 1 a validation check failed, 2 a usage error (bad option, unknown cell
or shape, a backend that cannot run here); `fastrnn gpu-check` adds 3 and 4 (gpu_check.py).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys

from .. import __version__, dispatch
from . import bench, machine, presets, quality, report, runners, variants
from . import validate as validation


def _names(text):
    return [n.strip() for n in text.split(",") if n.strip()]


class NameList(argparse.Action):
    """A comma-separated option whose names come from a fixed list: stores them as a tuple, or
    stops with a usage error that names the option, lists what it accepts and suggests the
    closest name. ``valid`` is the list, or a function giving it (a registry that can grow);
    ``other`` accepts a name not on the list (returns True) or says why it is wrong (raises
    ValueError); ``describe`` is how the message lists what is accepted; ``alone``: names that
    cannot be combined with others."""

    def __init__(self, option_strings, dest, valid=(), other=None, describe=None, alone=(),
                 **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.valid, self.other, self.describe, self.alone = valid, other, describe, alone

    def __call__(self, parser, namespace, values, option_string=None):
        flag = option_string or self.dest
        valid = list(self.valid() if callable(self.valid) else self.valid)
        accepted = self.describe or ", ".join(valid)
        names = _names(values)
        if not names:
            parser.error(f"{flag} must name at least one of {accepted}")
        for name in names:
            if name in valid:
                continue
            try:
                if self.other is not None and self.other(name):
                    continue
            except ValueError as exc:
                parser.error(f"{flag} {name}: {exc}")
            close = difflib.get_close_matches(name, valid, n=1)
            parser.error(f"{flag} must be among {accepted}; got {name!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
        for name in self.alone:
            if name in names and len(names) > 1:
                parser.error(f"{flag} {name} cannot be combined with other names")
        setattr(namespace, self.dest, tuple(names))


def _parser():
    parser = argparse.ArgumentParser(
        prog="fastrnn", description="fastrnn: fused RNN, LSTM and GRU kernels. Benchmark them, "
        "validate them against the NumPy reference, or show what this machine has.")
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{bench,validate,info,gpu-check}")

    b = sub.add_parser(
        "bench", help="time fastrnn against the NumPy reference, PyTorch and ONNX Runtime",
        description="Time fastrnn's backends against the NumPy reference, PyTorch (torch.nn) "
        "and ONNX Runtime side by side in one process, float32. With no options it runs the "
        "default set (rnn_tanh, lstm, gru at tiny, small, medium; inference and training). "
        "Writes bench.json, bench.md and bench.png to --out.")
    cells_help = ("comma-separated: the plain cells " + ", ".join(
        c.name for c in variants.PLAIN_CELLS) + "; the variants " + ", ".join(
        c.name for c in variants.VARIANT_CELLS) + "; or plain, variants, all")
    b.add_argument("--cells", default=None, action=NameList, valid=variants.NAMES,
                   help=f"{cells_help} (default {','.join(bench.DEFAULT_CELLS)}; a DeepBench set "
                   "uses its own cells, filtered by --cells when given). A variant row shows "
                   "its time against the plain cell's when both run")
    b.add_argument("--shapes", default=bench.DEFAULT_SHAPES, action=NameList,
                   valid=presets.SHAPE_NAMES, other=presets.custom_shape,
                   describe=", ".join(presets.SHAPE_NAMES) + " or TxBxIxH",
                   help="comma-separated presets (tiny, small, medium, large, xlarge, all), "
                   "DeepBench sets (deepbench-train, deepbench-server, deepbench-device) or "
                   f"TxBxIxH (default {','.join(bench.DEFAULT_SHAPES)})")
    b.add_argument("--modes", default=None, action=NameList, valid=presets.MODES,
                   help="inference, training or both (default: both; a DeepBench set uses its "
                   "own mode)")
    b.add_argument("--backends", default=None, action=NameList, valid=dispatch.known_backends,
                   help="fastrnn backends to time (default: every available one; the NumPy "
                   "reference always runs as a peer)")
    b.add_argument("--peers", default=bench.PEERS, action=NameList,
                   valid=(*bench.PEERS, "none"), alone=("none",),
                   help=f"peers among torch, onnxruntime, or none (default: "
                   f"{','.join(bench.PEERS)}, those installed)")
    b.add_argument("--threads", type=int, default=machine.default_threads(),
                   help="threads for every implementation (default: the cores, %(default)s; "
                   "more than the cores is warned about)")
    b.add_argument("--rounds", type=int, default=7, help="timed rounds (default %(default)s)")
    b.add_argument("--warmup", type=int, default=1,
                   help="untimed calls after the first call (default %(default)s)")
    for option, default, text in (
            ("--min-sample-ms", 2.0, "a sample repeats the call until it lasts this long"),
            ("--reference-max-gflop", 2.0,
             "skip the slow NumPy reference above this many GFLOP per call"),
            ("--reference-budget", 2.0,
             "seconds of rounds for the NumPy reference per case, at least 3 rounds"),
            ("--retry-budget", 30.0,
             "seconds the run may spend timing again cases whose max/min exceeds "
             f"{quality.NOISY_SPREAD:g}x (0: no retries)"),
            ("--t-scale", 1.0, "multiply every shape's T by this, e.g. 0.1 to run DeepBench's "
             "long sequences on a CPU")):
        b.add_argument(option, type=float, default=default, help=f"{text} (default %(default)s)")
    b.add_argument("--sgemm-size", type=int, default=2048,
                   help="size of the square matmul that measures the sgemm peak "
                   "(default %(default)s)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default="fastrnn-bench",
                   help="directory for bench.json, bench.md, bench.png (default %(default)s)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--torch-device", default="cpu", choices=("cpu", "cuda"),
                   help="where the PyTorch peer runs: cpu, or cuda (cuDNN; beside the cupy "
                   "backend). Default %(default)s")
    b.add_argument("--torch-frontend", action="store_true",
                   help="time the PyTorch front end instead: fastrnn.torch.X against torch.nn.X "
                   "(inference, and a training step through autograd) and the modules' "
                   "overhead over the stack call; writes torch_bench.md to --out")

    v = sub.add_parser(
        "validate", help="check every backend against the NumPy reference",
        description="Compare every available backend's forward outputs and gradients with the "
        "NumPy reference for every cell, variant and dtype over a grid of shapes. A backend "
        "runs a variant only if it declares the variant's switches; the others are listed as "
        "not run. Exits 1 if any check fails.")
    v.add_argument("--backends", default=None, action=NameList, valid=dispatch.known_backends,
                   help="comma-separated backends (default: every available one)")
    v.add_argument("--cells", default=("all",), action=NameList, valid=variants.NAMES,
                   help=f"{cells_help} (default all: every plain cell and variant)")
    v.add_argument("--dtypes", default=validation.DTYPES, action=NameList,
                   valid=validation.DTYPES,
                   help=f"default {','.join(validation.DTYPES)}")
    v.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the results as JSON to FILE, or to stdout without FILE")
    v.add_argument("--verbose", action="store_true", help="one row per grid case")
    v.add_argument("--seed", type=int, default=0)

    i = sub.add_parser("info", help="versions, backends, threads, BLAS, GPU")
    i.add_argument("--json", action="store_true", help="print JSON")

    from . import gpu_check

    gpu_check.add_parser(sub, NameList)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "bench":
            return _bench(args, argv)
        if args.command == "validate":
            return _validate(args)
        if args.command == "gpu-check":
            from . import gpu_check

            return gpu_check.run(args.out, args.emulate, args.budget, args.steps)
        return _info(args)
    except (ValueError, dispatch.BackendUnavailable) as exc:
        print(f"fastrnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _bench_torch(args) -> int:
    from . import torch_bench

    cells = args.cells or ("rnn_tanh", "lstm", "gru")
    table = torch_bench.run(cells, presets.select_shapes(args.shapes, args.t_scale),
                            args.threads, args.rounds, args.min_sample_ms / 1e3)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "torch_bench.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


# ----------------------------------------------------------------------------------------------


def _bench(args, argv) -> int:
    for name in ("threads", "rounds", "sgemm_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("warmup", "retry_budget", "min_sample_ms", "reference_max_gflop",
                 "reference_budget"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
    if not args.t_scale > 0:
        raise ValueError("--t-scale must be > 0")
    too_many = quality.threads_warning(args.threads, machine.default_threads())
    if too_many:
        print(f"fastrnn bench: warning: {too_many}", file=sys.stderr)
    if args.torch_frontend:
        return _bench_torch(args)
    cells = None if args.cells is None else variants.named_cells(args.cells)
    shapes = presets.select_shapes(args.shapes, args.t_scale)
    peers = [] if args.peers == ("none",) else list(args.peers)
    impls, notes = bench.implementations(args.backends, peers, args.torch_device)
    notes += bench.inapplicable(cells, shapes)
    cases = bench.plan_cases(cells, shapes, args.modes)
    if not cases:
        raise ValueError("no cases: the chosen shapes fix cells that are not among --cells")
    result = bench.run(
        cases, impls, threads=args.threads, rounds=args.rounds, warmup=args.warmup,
        min_sample_s=args.min_sample_ms / 1e3,
        reference_max_flops=args.reference_max_gflop * 1e9,
        reference_budget_s=args.reference_budget, sgemm_size=args.sgemm_size,
        progress=not args.no_progress, seed=args.seed, retry_budget_s=args.retry_budget,
        notes=notes, command=shlex.join(["fastrnn", *argv]))
    paths = report.write_report(result, args.out)
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _validate(args) -> int:
    cells = variants.named_cells(args.cells)
    backends = dispatch.available_backends() if args.backends is None else list(args.backends)
    dtypes = args.dtypes
    records = validation.validate(backends, cells, dtypes, seed=args.seed)
    grid = validation.GRID
    if args.json is not None:
        text = validation.to_json(records, backends, cells, dtypes, grid)
        if args.json == "-":
            sys.stdout.write(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    if args.json != "-":
        sys.stdout.write(validation.format_text(records, backends, cells, dtypes, grid,
                                                args.verbose))
    return 0 if validation.passed(records) else 1


# ----------------------------------------------------------------------------------------------
# info


# CuPy's wheels, one per CUDA generation (the extras cuda12 and cuda13), and its source package.
CUPY_DISTRIBUTIONS = ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy")


def _distribution_version(*names):
    for name in names:
        v = machine.version(name)
        if v is not None:
            return v
    return None


def gpu_info() -> dict:
    """GPUs through CuPy when it is installed (its version, the CUDA runtime and driver versions
    it finds, backends/cupy_cuda/device.py), else through nvidia-smi; never imports CuPy when it
    is not installed."""
    nvcc = shutil.which("nvcc")
    if runners.installed("cupy"):
        from ..backends.cupy_cuda import device

        try:
            found = device.describe()
        except (ImportError, OSError) as exc:  # installed without its CUDA libraries
            return {"gpus": [], "source": "cupy", "nvcc": nvcc,
                    "note": f"CuPy is installed but cannot be imported: {exc}"}
        note = None
        if found["error"] or not found["devices"]:
            note = f"CuPy is installed but finds no usable GPU: {found['error'] or 'no device'}"
        return {"gpus": [d["name"] for d in found["devices"]], "source": "cupy", "nvcc": nvcc,
                "cuda": found, "note": note}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            note = None if out.returncode == 0 else out.stderr.strip() or "nvidia-smi failed"
            return {"gpus": gpus if out.returncode == 0 else [], "source": "nvidia-smi",
                    "nvcc": nvcc, "note": note}
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"gpus": [], "source": "nvidia-smi", "nvcc": nvcc, "note": str(exc)}
    return {"gpus": [], "source": None, "nvcc": nvcc,
            "note": "no GPU found: CuPy is not installed and there is no nvidia-smi"}


def info_data() -> dict:
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401 - loads SciPy's BLAS, which Numba's np.dot calls
    from threadpoolctl import threadpool_info

    import fastrnn

    available = dispatch.available_backends()
    unavailable = dispatch.unavailable_reasons()
    try:
        default = dispatch.select(None, "numpy").name
    except (dispatch.BackendUnavailable, ValueError, TypeError) as exc:
        default = f"none: {exc}"
    threads = {"cores": machine.default_threads(), "cpu_count": os.cpu_count()}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        if os.environ.get(var):
            threads[var] = os.environ[var]
    if "numba" in sys.modules or runners.installed("numba"):
        import numba

        threads["numba"] = numba.get_num_threads()
        threads["numba_threading_layer"] = numba.config.THREADING_LAYER
        if "fastrnn.backends.numba_cpu.threads" in sys.modules:  # the backend has started
            from ..backends.numba_cpu import threads as idle

            threads["numba_threading_layer"] = idle.start_numba_threads()
            threads["openblas_idle_timeout_log2_cycles"] = idle.openblas_timeouts()
    if hasattr(fastrnn, "get_num_threads"):
        threads["fastrnn"] = fastrnn.get_num_threads()
    keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer",
            "architecture", "filepath")
    blas = [{k: lib.get(k) for k in keys} for lib in threadpool_info()]
    versions = {"python": platform.python_version(), "fastrnn": __version__}
    for dist in ("numpy", "scipy", "numba", "llvmlite", "threadpoolctl", "torch", "onnx",
                 "onnxruntime", "tqdm", "matplotlib", "pytest-benchmark"):
        versions[dist] = machine.version(dist)
    versions["cupy"] = _distribution_version(*CUPY_DISTRIBUTIONS)
    versions["cupy_package"] = next((d for d in CUPY_DISTRIBUTIONS if machine.version(d)), None)
    host = machine.machine_info(machine.default_threads())
    return {
        "versions": versions,
        "platform": host["platform"], "cpu": host["cpu"],
        "backends": {"available": available, "unavailable": unavailable,
                     "default_for_numpy_arrays": default,
                     "process_default": dispatch.default_backend_name()},
        "threads": threads, "blas": blas, "gpu": gpu_info(),
    }


def _info(args) -> int:
    data = info_data()
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    v = data["versions"]
    lines = [f"fastrnn {v['fastrnn']} on Python {v['python']}, {data['platform']}",
             f"CPU: {data['cpu']}", "", "versions:"]
    lines += [f"  {name:<17} {ver or 'not installed'}" for name, ver in v.items()
              if name not in ("fastrnn", "python")]
    b = data["backends"]
    lines += ["", f"backends available: {', '.join(b['available'])}"]
    lines += [f"  unavailable {name}: {why}" for name, why in b["unavailable"].items()]
    lines.append(f"  default for NumPy arrays: {b['default_for_numpy_arrays']}"
                 + (f" (set by use_backend or {dispatch.ENV_VAR}: {b['process_default']})"
                    if b["process_default"] else ""))
    lines += ["", "threads: " + ", ".join(f"{k} {val}" for k, val in data["threads"].items())]
    lines += ["", "BLAS and OpenMP libraries loaded (threadpoolctl):"]
    lines += [f"  {lib['internal_api']} {lib['version']} ({lib['user_api']}, "
              f"{lib['num_threads']} threads"
              + (f", {lib['architecture']}" if lib.get("architecture") else "")
              + f"): {lib['filepath']}" for lib in data["blas"]]
    g = data["gpu"]
    lines += ["", "GPU: " + (", ".join(g["gpus"]) if g["gpus"] else "none")
              + (f" ({g['note']})" if g.get("note") else "")]
    cuda = g.get("cuda")
    if cuda:
        package = f" ({v['cupy_package']})" if v["cupy_package"] else ""
        lines.append(f"CuPy {cuda['cupy']}{package}: CUDA runtime "
                     f"{cuda['cuda_runtime'] or 'unknown'}, driver supports CUDA "
                     f"{cuda['cuda_driver'] or 'unknown'}")
        lines += [f"  {d['name']}: compute capability {d['compute_capability']}, "
                  f"{d['memory_bytes'] / 2 ** 30:.0f} GiB, peak memory bandwidth "
                  f"{d['peak_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s" for d in cuda["devices"]]
    lines.append(f"nvcc: {g['nvcc'] or 'not found'}")
    print("\n".join(lines))
    return 0

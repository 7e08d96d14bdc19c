"""`fastrnn bench`: time fastrnn and its peers side by side and write the report.

How it times. Every implementation runs in this one process on the same float32 arrays. For each
case (cell, shape, mode) each implementation is built (setup time: an ONNX Runtime session, a
torch module), called once (the first call, which includes any compilation) and warmed up;
neither is part of the timings, both are reported. Then the rounds run interleaved: round r
calls every implementation once, starting from a different one each round, so a burst of load
from elsewhere on the machine hits all of them alike. A sample is the mean of ``number`` calls,
with ``number`` chosen so a sample lasts at least ``min_sample_s``. The report gives the median
sample and the min-max range.

What it reports. GFLOP/s counts forward FLOPs as 2*T*B*G*H*(I+H) and a training call (forward
and backward with dy = ones) as three forwards (``presets.flops``). Speedups are the peer's
median time divided by this implementation's. The sgemm peak is a NumPy float32 matmul of a
large square, measured in the same run with the same threads.

The NumPy reference runs step by step in Python; it is skipped above ``reference_max_flops`` per
call and gets at most ``reference_budget_s`` of rounds per case (at least 3 rounds).
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import __version__, dispatch
from ..cells import ALL_CELLS, Cell, cell_by_name
from ..tolerances import describe, tolerance
from . import presets, runners
from .presets import Shape

DEFAULT_CELLS = ("rnn_tanh", "lstm", "gru")
DEFAULT_SHAPES = ("tiny", "small", "medium")
PEERS = ("torch", "onnxruntime")
MIN_REFERENCE_ROUNDS = 3


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# What runs


@dataclass(frozen=True)
class Case:
    cell: Cell
    shape: Shape
    mode: str

    @property
    def flops(self) -> int:
        return presets.flops(self.cell, self.shape, self.mode)

    @property
    def label(self) -> str:
        return f"{self.mode} {self.cell.name} {self.shape.name}"


def plan_cases(cells, shapes, modes=None) -> list:
    """The cases for ``cells`` x ``shapes`` x ``modes``, ordered by mode, cell, then shape.

    ``cells=None`` means the default cells. A shape that fixes its cell (DeepBench) runs with
    that cell, if it is among ``cells`` when they are given; one that fixes its mode runs in
    that mode unless ``modes`` is given. ``modes=None`` means both modes for the other shapes.
    """
    cases = []
    for shape in shapes:
        if shape.cell is not None:
            shape_cells = [cell_by_name(shape.cell)]
            if cells is not None and shape.cell not in {c.name for c in cells}:
                shape_cells = []
        else:
            shape_cells = [cell_by_name(n) for n in DEFAULT_CELLS] if cells is None else cells
        shape_modes = modes or ((shape.mode,) if shape.mode else presets.MODES)
        cases += [Case(c, shape, m) for c in shape_cells for m in shape_modes]
    cell_rank = {c.name: k for k, c in enumerate(ALL_CELLS)}
    return sorted(cases, key=lambda c: (presets.MODES.index(c.mode), cell_rank[c.cell.name]))


@dataclass
class Impl:
    """One implementation under test."""

    key: str  # the fastrnn backend name, or "torch" / "onnxruntime"
    label: str
    role: str  # "fastrnn", "reference" or "peer"
    make: Callable  # (cell, params, mode, threads) -> (call, sync, setup seconds)
    host: bool = True  # computes on the CPU, so the CPU's sgemm peak applies


# OpenBLAS keeps its idle worker threads spinning for about 2^28 cycles after a call; the
# NumPy reference's and the sgemm peak's products would leave them spinning over the next
# implementation's samples (measured here: 2.7x slower). A timeout of 2^4 cycles puts them to
# sleep at once. OpenBLAS reads it when it loads, so `fastrnn bench` sets it in its environment
# and starts again (cli.py); benchmarks/conftest.py sets it before NumPy is imported.
QUIET_BLAS = {"OPENBLAS_THREAD_TIMEOUT": "4"}


def blas_quiet() -> bool:
    """Whether this process started with OpenBLAS's idle threads told to sleep at once."""
    return all(os.environ.get(k) == v for k, v in QUIET_BLAS.items())


def _version(module: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def implementations(backends=None, peers=PEERS):
    """(implementations, notes): the fastrnn backends (default: every available one except the
    reference), the NumPy reference, and the peers that are installed. Notes say what is left
    out and why."""
    notes = []
    available = dispatch.available_backends()
    if backends is None:
        backends = [b for b in available if b != "numpy"]
        for name, reason in dispatch.unavailable_reasons().items():
            notes.append(f"fastrnn backend {name!r} not benchmarked: {reason}")
    else:
        for name in backends:
            if name not in available:
                dispatch.get_backend(name)  # raises, saying why
    impls = []
    for name in [b for b in backends if b != "numpy"] + ["numpy"]:
        role = "reference" if name == "numpy" else "fastrnn"
        impls.append(Impl(name, "NumPy reference" if role == "reference" else f"fastrnn {name}",
                          role, _fastrnn_maker(name),
                          host=dispatch.get_backend(name).library == "numpy"))
    for peer in peers:
        if peer not in PEERS:
            raise ValueError(f"peers must be among {PEERS}, got {peer!r}")
        if peer == "torch":
            if runners.installed("torch"):
                impls.append(Impl("torch", f"PyTorch {_version('torch')}", "peer",
                                  runners.torch_runner))
            else:
                notes.append("PyTorch not benchmarked: torch is not installed "
                             "(pip install 'fastrnn[bench]')")
        elif peer == "onnxruntime":
            if runners.installed("onnxruntime") and runners.installed("onnx"):
                impls.append(Impl("onnxruntime", f"ONNX Runtime {_version('onnxruntime')}",
                                  "peer", runners.ort_runner))
            else:
                notes.append("ONNX Runtime not benchmarked: onnx/onnxruntime are not installed "
                             "(pip install 'fastrnn[bench]')")
    return impls, notes


def _fastrnn_maker(backend_name):
    def make(cell, p, mode, threads):
        return runners.fastrnn_runner(backend_name, cell, p, mode)
    return make


def preload(impls):
    """Import every library the implementations use, so that import time is not setup time and
    the thread settings reach every BLAS and OpenMP runtime they load."""
    import scipy.linalg  # noqa: F401 - loads SciPy's BLAS, the one Numba's np.dot calls

    for impl in impls:
        if impl.key == "torch":
            import torch  # noqa: F401
        elif impl.key == "onnxruntime":
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401


@contextmanager
def thread_settings(threads: int):
    """Use ``threads`` threads in every runtime loaded so far (BLAS and OpenMP through
    threadpoolctl, Numba, torch); ONNX Runtime gets them per session. Restores them after."""
    from threadpoolctl import threadpool_limits

    import fastrnn

    restore = []
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        restore.append(lambda: torch.set_num_threads(before))
    with threadpool_limits(limits=threads):
        if "numba" in sys.modules:
            numba = sys.modules["numba"]
            set_threads = getattr(fastrnn, "set_num_threads", numba.set_num_threads)
            before_numba = numba.get_num_threads()
            set_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            restore.append(lambda: set_threads(before_numba))
        try:
            yield
        finally:
            for undo in reversed(restore):
                undo()


def sgemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` NumPy float32 (n, n) @ (n, n) products."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


# ----------------------------------------------------------------------------------------------
# Timing


@dataclass
class _Run:
    impl: Impl
    call: Callable
    sync: Optional[Callable]
    setup_s: float
    first_s: float
    number: int
    rounds: int
    y_diff: Optional[float]
    y_close: Optional[bool]
    samples: list
    baseline: Optional[str]


def _timed(call, sync, number=1):
    start = time.perf_counter()
    for _ in range(number):
        out = call()
        if sync is not None:
            sync()
    return (time.perf_counter() - start) / number, out


def _y_compare(y, baseline):
    """max |y - baseline| and whether they agree within the float32 tolerance."""
    if baseline is None:
        return None, None
    diff = float(np.max(np.abs(y.astype(np.float64) - baseline))) if y.size else 0.0
    return diff, bool(np.allclose(y, baseline, **tolerance(np.float32)))


def time_case(case: Case, impls, *, threads, rounds, warmup, min_sample_s, reference_max_flops,
              reference_budget_s, seed=0):
    """Time every implementation on ``case``; returns (records, skipped)."""
    s = case.shape
    p = runners.make_params(case.cell, s.T, s.B, s.I, s.H, np.float32, seed)
    skipped = []
    runs = []
    baseline, baseline_key = None, None
    # The reference goes first so that every other output can be compared with it.
    for impl in sorted(impls, key=lambda i: i.role != "reference"):
        if impl.role == "reference" and case.flops > reference_max_flops:
            skipped.append((impl.key, case, f"above --reference-max-gflop "
                            f"{reference_max_flops / 1e9:g} per call"))
            continue
        try:
            call, sync, setup_s = impl.make(case.cell, p, case.mode, threads)
        except runners.Unsupported as exc:
            skipped.append((impl.key, case, str(exc)))
            continue
        first_s, y = _timed(call, sync)
        y = runners.to_numpy(y)
        if baseline is None:
            baseline, baseline_key = y.astype(np.float64), impl.key
            y_diff, y_close = None, None
        else:
            y_diff, y_close = _y_compare(y, baseline)
        del y
        steady = first_s
        for _ in range(warmup):
            steady = min(steady, _timed(call, sync)[0])
        number = max(1, math.ceil(min_sample_s / max(steady, 1e-9)))
        n_rounds = rounds
        if impl.role == "reference":
            n_rounds = min(rounds, max(MIN_REFERENCE_ROUNDS,
                                       int(reference_budget_s / (steady * number))))
        runs.append(_Run(impl, call, sync, setup_s, first_s, number, n_rounds, y_diff, y_close,
                         [], None if impl.key == baseline_key else baseline_key))
    del baseline
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for k in range(len(runs)):
                run = runs[(r + k) % len(runs)]
                if len(run.samples) < run.rounds:
                    run.samples.append(_timed(run.call, run.sync, run.number)[0])
    finally:
        if gc_was_enabled:
            gc.enable()
    records = []
    for run in sorted(runs, key=lambda run: impls.index(run.impl)):
        t = np.array(run.samples)
        records.append({
            "cell": case.cell.name, "shape": s.name, "T": s.T, "B": s.B, "I": s.I, "H": s.H,
            "mode": case.mode, "impl": run.impl.key, "label": run.impl.label,
            "role": run.impl.role, "host": run.impl.host, "flops": case.flops,
            "rounds": len(run.samples), "number": run.number,
            "median_ms": float(np.median(t)) * 1e3, "min_ms": float(t.min()) * 1e3,
            "max_ms": float(t.max()) * 1e3, "setup_ms": run.setup_s * 1e3,
            "first_call_ms": run.first_s * 1e3, "y_compared_with": run.baseline,
            "y_max_abs_diff": run.y_diff, "y_allclose": run.y_close,
        })
    _derive(records)
    return records, skipped


def _derive(records):
    """GFLOP/s and the speedups against the reference and torch, within one case."""
    by_impl = {r["impl"]: r for r in records}
    for r in records:
        r["gflops"] = r["flops"] / (r["median_ms"] * 1e-3) / 1e9
        for peer, key in (("numpy", "speedup_vs_reference"), ("torch", "speedup_vs_torch")):
            other = by_impl.get(peer)
            r[key] = other["median_ms"] / r["median_ms"] if other is not None else None


# ----------------------------------------------------------------------------------------------
# The run


def _progress(total: int, enabled: bool):
    """A tqdm bar, or plain lines on stderr when tqdm is missing, or nothing."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        class _Lines:
            n = 0

            def set_description_str(self, text):
                print(f"[{self.n + 1}/{total}] {text}", file=sys.stderr, flush=True)

            def update(self, k):
                self.n += k

            def close(self):
                pass

        print("(install tqdm for a progress bar)", file=sys.stderr)
        return _Lines()
    return tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True, disable=None)


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": default_threads(), "threads": threads,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": _load_average()}


def _load_average():
    """The 1-minute load average, or None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run(cases, impls, *, threads=None, rounds=7, warmup=1, min_sample_s=0.002,
        reference_max_flops=2e9, reference_budget_s=2.0, sgemm_size=2048, progress=True,
        seed=0, notes=(), command=None) -> dict:
    """Time ``impls`` on ``cases`` and return the report (a JSON-ready dict)."""
    threads = threads or default_threads()
    started = time.perf_counter()
    machine = machine_info(threads)  # before the run: the load average says what else ran
    preload(impls)
    records, skipped = [], []
    with thread_settings(threads):
        peak = sgemm_peak(sgemm_size)
        bar = _progress(len(cases), progress and len(cases) > 1)
        try:
            for case in cases:
                if bar is not None:
                    bar.set_description_str(case.label)
                recs, skips = time_case(
                    case, impls, threads=threads, rounds=rounds, warmup=warmup,
                    min_sample_s=min_sample_s, reference_max_flops=reference_max_flops,
                    reference_budget_s=reference_budget_s, seed=seed)
                records += recs
                skipped += skips
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    for r in records:
        r["peak_fraction"] = r["gflops"] / peak if r["host"] else None
    return {
        "fastrnn": __version__,
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "versions": {m: _version(m) for m in ("numpy", "scipy", "numba", "torch", "onnxruntime")},
        "dtype": "float32",
        "sgemm_peak_gflops": peak,
        "sgemm_size": sgemm_size,
        "settings": {"rounds": rounds, "warmup": warmup, "min_sample_ms": min_sample_s * 1e3,
                     "reference_max_gflop": reference_max_flops / 1e9,
                     "reference_budget_s": reference_budget_s, "seed": seed},
        "implementations": [{"impl": i.key, "label": i.label, "role": i.role} for i in impls],
        "results": records,
        "skipped": [{"impl": k, "cell": c.cell.name, "shape": c.shape.name, "mode": c.mode,
                     "reason": why} for k, c, why in skipped],
        "notes": list(notes) + ([] if blas_quiet() else [
            "OPENBLAS_THREAD_TIMEOUT was not 4 when NumPy loaded: idle OpenBLAS threads may have "
            "spun over the samples that followed a multithreaded NumPy product."]),
        "load_average_after": _load_average(),
        "elapsed_s": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------------------------
# The report


def _fmt(v, spec=".3g", none="-"):
    return none if v is None else format(v, spec)


def _ms(v):
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _skip_notes(report) -> list:
    """One line per (implementation, reason), naming the cases it covers."""
    grouped = {}
    for s in report["skipped"]:
        grouped.setdefault((s["impl"], s["reason"]), []).append(
            f"{s['mode']} {s['cell']} {s['shape']}")
    return [f"{impl} not run for {', '.join(cases)}: {why}"
            for (impl, why), cases in grouped.items()]


def markdown(report) -> str:
    m = report["machine"]
    v = report["versions"]
    st = report["settings"]
    lines = [
        "# fastrnn bench",
        "",
        f"`{report['command'] or 'fastrnn bench'}`",
        "",
        f"fastrnn {report['fastrnn']} · {m['cpu']} · {m['threads']} threads of {m['cores']} "
        f"cores · {report['dtype']} · Python {m['python']} · NumPy {v['numpy']}"
        + "".join(f" · {name} {v[k]}" for k, name in (
            ("numba", "Numba"), ("torch", "PyTorch"), ("onnxruntime", "ONNX Runtime"))
            if v.get(k)) + f" · {report['date']}",
        "",
        f"sgemm peak, NumPy float32 matmul {report['sgemm_size']}x{report['sgemm_size']} "
        f"in this run: **{report['sgemm_peak_gflops']:.1f} GFLOP/s**",
        "",
        "ms per call: median over the rounds, then min-max. Rounds interleave the "
        "implementations; the first call and the warm-up are not timed. GFLOP/s counts a "
        "forward as 2·T·B·G·H·(I+H) and training (forward + backward, dy = ones) as 3x. "
        "x ref / x torch: the NumPy reference's / PyTorch's time divided by this one's "
        "(above 1 is faster). rounds: samples x calls per sample.",
        "",
        "| mode | cell | shape (T, B, I, H) | implementation | ms | min-max | GFLOP/s "
        "| % sgemm peak | x ref | x torch | rounds |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["results"]:
        shape = f"{r['shape']} ({r['T']}, {r['B']}, {r['I']}, {r['H']})"
        pf = r["peak_fraction"]
        lines.append(
            f"| {r['mode']} | {r['cell']} | {shape} | {r['label']} | {_ms(r['median_ms'])} "
            f"| {_ms(r['min_ms'])}-{_ms(r['max_ms'])} | {r['gflops']:.3g} "
            f"| {_fmt(None if pf is None else 100 * pf, '.1f')} "
            f"| {_fmt(None if r['impl'] == 'numpy' else r['speedup_vs_reference'], '.2f')} "
            f"| {_fmt(None if r['impl'] == 'torch' else r['speedup_vs_torch'], '.2f')} "
            f"| {r['rounds']}x{r['number']} |")
    lines += ["", "## First calls (not in the times above)", "",
              "Setup builds the peer's model (torch module, ONNX model and session); the first "
              "call includes any compilation (Numba JIT or its cache load). Shown for the first "
              "case of each implementation, cell and mode.", "",
              "| implementation | cell | mode | shape | setup ms | first call ms | steady ms |",
              "|---|---|---|---|--:|--:|--:|"]
    seen = set()
    for r in report["results"]:
        key = (r["impl"], r["cell"], r["mode"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"| {r['label']} | {r['cell']} | {r['mode']} | {r['shape']} "
                     f"| {r['setup_ms']:.1f} | {r['first_call_ms']:.1f} "
                     f"| {_ms(r['median_ms'])} |")
    mismatches = [r for r in report["results"] if r["y_allclose"] is False]
    notes = list(report["notes"]) + _skip_notes(report)
    notes.append(f"NumPy reference: at most {st['reference_budget_s']:g} s of rounds per case "
                 f"(at least {MIN_REFERENCE_ROUNDS} rounds), skipped above "
                 f"{st['reference_max_gflop']:g} GFLOP per call (--reference-max-gflop).")
    compared = [r for r in report["results"] if r["y_allclose"] is not None]
    if compared and not mismatches:
        notes.append("Same results: every implementation's y agrees with the reference's (else "
                     f"the first implementation's) within {describe(report['dtype'], ', ')}; largest "
                     f"difference {max(r['y_max_abs_diff'] for r in compared):.2g}.")
    for r in mismatches:
        notes.append(f"WARNING: {r['label']} y differs from {r['y_compared_with']}'s by up to "
                     f"{r['y_max_abs_diff']:.3g} ({r['mode']} {r['cell']} {r['shape']}), "
                     f"beyond {describe(report['dtype'], ' / ')}.")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    load = (report["machine"]["load_average"], report["load_average_after"])
    lines += ["", f"Total time {report['elapsed_s']:.0f} s"
              + (f"; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after"
                 + (" (above the thread count: other processes competed for the cores)"
                    if max(load) > m["threads"] else "") + "."
                 if None not in load else "."), ""]
    return "\n".join(lines)


def chart(report, path) -> Optional[str]:
    """A PNG of GFLOP/s per case and implementation, one panel per mode; returns None if it
    was written, else why not."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install 'fastrnn[bench]'): no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    modes = [m for m in presets.MODES if any(r["mode"] == m for r in results)]
    labels = list(dict.fromkeys(r["label"] for r in results))
    if not modes:
        return "no results: no chart"
    width = max(6.0, 1.2 + 0.35 * len(labels) * max(
        len({(r["cell"], r["shape"]) for r in results if r["mode"] == m}) for m in modes))
    fig, axes = plt.subplots(len(modes), 1, figsize=(min(width, 40), 3.6 * len(modes)),
                             squeeze=False)
    bar = 0.8 / len(labels)
    for ax, mode in zip(axes[:, 0], modes):
        groups = list(dict.fromkeys((r["cell"], r["shape"]) for r in results
                                    if r["mode"] == mode))
        for k, label in enumerate(labels):
            xs, ys = [], []
            for g, (cell, shape) in enumerate(groups):
                for r in results:
                    if (r["mode"], r["cell"], r["shape"], r["label"]) == (mode, cell, shape,
                                                                          label):
                        xs.append(g + (k - (len(labels) - 1) / 2) * bar)
                        ys.append(r["gflops"])
            ax.bar(xs, ys, bar, label=label)
        ax.axhline(report["sgemm_peak_gflops"], color="black", linestyle="--", linewidth=1,
                   label="sgemm peak")
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{c}\n{s}" for c, s in groups], fontsize=8)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{mode}, float32, {report['machine']['threads']} threads")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_report(report, out_dir) -> dict:
    """Write bench.json, bench.md and (with matplotlib) bench.png into ``out_dir``; returns
    {kind: path} for the files written; a missing chart is noted in the report first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    why_not = chart(report, out / "bench.png")
    if why_not is None:
        paths["png"] = out / "bench.png"
    else:
        report["notes"].append(why_not)
    paths["json"] = out / "bench.json"
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    paths["md"] = out / "bench.md"
    paths["md"].write_text(markdown(report))
    return paths

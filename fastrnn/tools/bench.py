"""`fastrnn bench`: time fastrnn and its peers side by side (report.py writes the report).

How it times. Every implementation runs in this one process on the same float32 arrays. For each
case (cell, shape, mode) each implementation is built (setup time: an ONNX Runtime session, a
torch module), called once (the first call, which includes any compilation) and warmed up;
neither is part of the timings, both are reported. Then the rounds run interleaved: round r
calls every implementation once, starting from a different one each round, so a burst of load
from elsewhere on the machine hits all of them alike. A sample is the mean of ``number`` calls,
with ``number`` chosen so a sample lasts at least ``min_sample_s``. The report gives the median
sample and the min-max range. A case whose samples spread over 1.5x is timed again while the
retry budget lasts (``time_case``); ``quality`` says which rows stay doubtful and why.

What it reports. GFLOP/s counts forward FLOPs as 2*T*B*G*H*(I+H) and a training call (forward
and backward with dy = ones) as three forwards (``presets.flops``). Speedups are the peer's
median time divided by this implementation's. A named variant (``variants``: lstm_proj,
layernorm_lstm, ...) runs on the fastrnn backends that declare its switches and on the peers
that have it (torch.nn.LSTM's proj_size; ONNX Runtime's clip and LSTM peepholes); its row's
``vs_plain`` is its median time divided by the plain cell's, same implementation, shape and
mode, where the plain cell ran in the same run. The sgemm peak is a NumPy float32 matmul of a
large square, measured before and after the cases with the same threads; the higher counts.

The NumPy reference runs step by step in Python; it is skipped above ``reference_max_flops`` per
call and gets at most ``reference_budget_s`` of rounds per case (at least 3 rounds).
"""

from __future__ import annotations

import datetime
import functools
import gc
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np

from .. import __version__, dispatch
from ..cells import Cell
from ..tolerances import tolerance
from . import presets, quality, runners
from .machine import (default_threads, device_bandwidth, load_average, machine_info,
                      preload, sgemm_peak, thread_settings, version)
from .presets import Shape
from .variants import NAMED_CELLS, as_named, named_cells

DEFAULT_CELLS = ("rnn_tanh", "lstm", "gru")
DEFAULT_SHAPES = ("tiny", "small", "medium")
PEERS = ("torch", "onnxruntime")
MIN_REFERENCE_ROUNDS = 3


# ----------------------------------------------------------------------------------------------
# What runs


@dataclass(frozen=True)
class Case:
    cell: Cell  # the cell at this shape, variant included
    shape: Shape
    mode: str
    cell_name: str = ""  # the tools' name of the cell (``variants``); by default cell.name

    def __post_init__(self):
        if not self.cell_name:
            object.__setattr__(self, "cell_name", self.cell.name)

    @property
    def flops(self) -> int:
        return presets.flops(self.cell, self.shape, self.mode)

    @property
    def label(self) -> str:
        return f"{self.mode} {self.cell_name} {self.shape.name}"


def plan_cases(cells, shapes, modes=None) -> list:
    """The cases for ``cells`` x ``shapes`` x ``modes``, ordered by mode, cell, then shape.

    ``cells``: named cells (``variants``) or ``Cell``s; None means the default cells. A shape
    that fixes its cell (DeepBench) runs with that cell, if it is among ``cells`` when they are
    given; one that fixes its mode runs in that mode unless ``modes`` is given. ``modes=None``
    means both modes for the other shapes. A variant that cannot be made at a shape's H
    (``inapplicable`` says which) has no case there.
    """
    given = cells is not None
    cells = tuple(map(as_named, cells)) if given else named_cells(DEFAULT_CELLS)
    cases = []
    for shape in shapes:
        if shape.cell is not None:
            shape_cells = named_cells([shape.cell])
            if given and shape.cell not in {c.name for c in cells}:
                shape_cells = []
        else:
            shape_cells = [c for c in cells if c.why_not(shape.H) is None]
        shape_modes = modes or ((shape.mode,) if shape.mode else presets.MODES)
        cases += [Case(c.at(shape.H), shape, m, c.name) for c in shape_cells
                  for m in shape_modes]
    cell_rank = {c.name: k for k, c in enumerate(NAMED_CELLS)}
    return sorted(cases, key=lambda c: (presets.MODES.index(c.mode),
                                        cell_rank.get(c.cell_name, len(cell_rank))))


def inapplicable(cells, shapes) -> list:
    """One note per named cell and shape that ``plan_cases`` leaves out, saying why."""
    return [f"{c.name} not run at {shape.name}: {c.why_not(shape.H)}"
            for c in map(as_named, cells or ()) for shape in shapes
            if shape.cell is None and c.why_not(shape.H)]


@dataclass
class Impl:
    """One implementation under test."""

    key: str  # the fastrnn backend name, or "torch" / "onnxruntime"
    label: str
    role: str  # "fastrnn", "reference" or "peer"
    make: Callable  # (cell, params, mode, threads) -> (call, sync, setup seconds)
    host: bool = True  # computes on the CPU, so the CPU's sgemm peak applies


def implementations(backends=None, peers=PEERS, torch_device="cpu"):
    """(implementations, notes): the fastrnn backends (default: every available one except the
    reference), the NumPy reference, and the peers that are installed, PyTorch on
    ``torch_device`` ("cpu" or "cuda"). Notes say what is left out and why."""
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
                on_gpu = torch_device != "cpu"
                impls.append(Impl("torch", f"PyTorch {version('torch')}"
                                  + (f" ({torch_device}, cuDNN)" if on_gpu else ""), "peer",
                                  functools.partial(runners.torch_runner, device=torch_device),
                                  host=not on_gpu))
            else:
                notes.append("PyTorch not benchmarked: torch is not installed "
                             "(pip install 'fastrnn[bench]')")
        elif peer == "onnxruntime":
            if runners.installed("onnxruntime") and runners.installed("onnx"):
                impls.append(Impl("onnxruntime", f"ONNX Runtime {version('onnxruntime')}",
                                  "peer", runners.ort_runner))
            else:
                notes.append("ONNX Runtime not benchmarked: onnx/onnxruntime are not installed "
                             "(pip install 'fastrnn[bench]')")
    return impls, notes


def _fastrnn_maker(backend_name):
    def make(cell, p, mode, threads):
        return runners.fastrnn_runner(backend_name, cell, p, mode)
    return make


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
    baseline: Optional[str]


class _Attempt(NamedTuple):
    samples: list  # per run, seconds per call of each sample
    seconds: float  # how long the rounds took

    @property
    def worst_spread(self) -> float:
        return max((quality.spread(s) for s in self.samples), default=1.0)


def _timed(call, sync, number=1, clock=time.perf_counter):
    start = clock()
    for _ in range(number):
        out = call()
        if sync is not None:
            sync()
    return (clock() - start) / number, out


def _y_compare(y, baseline):
    """max |y - baseline| and whether they agree within the float32 tolerance."""
    if baseline is None:
        return None, None
    diff = float(np.max(np.abs(y.astype(np.float64) - baseline))) if y.size else 0.0
    return diff, bool(np.allclose(y, baseline, **tolerance(np.float32)))


def _prepare(case, impls, threads, rounds, warmup, min_sample_s, reference_max_flops,
             reference_budget_s, seed, clock):
    """Build, first-call and warm up every implementation; returns (runs, skipped)."""
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
        first_s, y = _timed(call, sync, clock=clock)
        y = runners.to_numpy(y)
        if baseline is None:
            baseline, baseline_key = y.astype(np.float64), impl.key
            y_diff, y_close = None, None
        else:
            y_diff, y_close = _y_compare(y, baseline)
        del y
        steady = first_s
        for _ in range(warmup):
            steady = min(steady, _timed(call, sync, clock=clock)[0])
        number = max(1, math.ceil(min_sample_s / max(steady, 1e-9)))
        n_rounds = rounds
        if impl.role == "reference":
            n_rounds = min(rounds, max(MIN_REFERENCE_ROUNDS,
                                       int(reference_budget_s / (steady * number))))
        runs.append(_Run(impl, call, sync, setup_s, first_s, number, n_rounds, y_diff, y_close,
                         None if impl.key == baseline_key else baseline_key))
    return runs, skipped


def _time_rounds(runs, rounds, clock) -> _Attempt:
    """The interleaved rounds: round r calls every run once, starting from run r."""
    samples = [[] for _ in runs]
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    start = clock()
    try:
        for r in range(rounds):
            for k in range(len(runs)):
                i = (r + k) % len(runs)
                if len(samples[i]) < runs[i].rounds:
                    samples[i].append(_timed(runs[i].call, runs[i].sync, runs[i].number,
                                             clock)[0])
    finally:
        if gc_was_enabled:
            gc.enable()
    return _Attempt(samples, clock() - start)


def time_case(case: Case, impls, *, threads, rounds, warmup, min_sample_s, reference_max_flops,
              reference_budget_s, seed=0, retry: Optional[quality.RetryBudget] = None,
              clock=time.perf_counter):
    """Time every implementation on ``case``; returns (records, skipped).

    While the quietest attempt so far has a row whose max/min exceeds ``quality.NOISY_SPREAD``
    and ``retry`` has time for one more (as long as the last took), the rounds run again, every
    implementation, so that a case's rows still come from the same interleaved rounds; the
    attempt whose noisiest row is the quietest is kept. ``clock`` is the timer (seconds).
    """
    runs, skipped = _prepare(case, impls, threads, rounds, warmup, min_sample_s,
                             reference_max_flops, reference_budget_s, seed, clock)
    attempts = [_time_rounds(runs, rounds, clock)]
    kept = attempts[0]
    while (retry is not None and kept.worst_spread > quality.NOISY_SPREAD
           and len(attempts) < quality.MAX_ATTEMPTS and retry.allows(attempts[-1].seconds)):
        attempts.append(_time_rounds(runs, rounds, clock))
        retry.spend(attempts[-1].seconds)
        kept = min(attempts, key=lambda a: a.worst_spread)
    s = case.shape
    records = []
    for run, samples in sorted(zip(runs, kept.samples), key=lambda rs: impls.index(rs[0].impl)):
        t = np.array(samples)
        records.append({
            "cell": case.cell_name, "variant": case.cell.variant.described(),
            "plain_cell": case.cell.name if case.cell.variant.switches else None,
            "shape": s.name, "T": s.T, "B": s.B, "I": s.I, "H": s.H,
            "mode": case.mode, "impl": run.impl.key, "label": run.impl.label,
            "role": run.impl.role, "host": run.impl.host, "flops": case.flops,
            "rounds": len(samples), "number": run.number,
            "median_ms": float(np.median(t)) * 1e3, "min_ms": float(t.min()) * 1e3,
            "weight_bytes": presets.weight_bytes(case.cell, s, case.mode),
            "max_ms": float(t.max()) * 1e3, "setup_ms": run.setup_s * 1e3,
            "first_call_ms": run.first_s * 1e3, "y_compared_with": run.baseline,
            "y_max_abs_diff": run.y_diff, "y_allclose": run.y_close,
            "attempts": len(attempts), "kept_attempt": attempts.index(kept) + 1,
        })
    _derive(records)
    return records, skipped


def _derive(records):
    """GFLOP/s and the speedups against the reference and torch, within one case."""
    by_impl = {r["impl"]: r for r in records}
    for r in records:
        r["gflops"] = r["flops"] / (r["median_ms"] * 1e-3) / 1e9
        r["tflops"] = r["gflops"] / 1e3
        r["us_per_step"] = r["median_ms"] * 1e3 / r["T"]
        for peer, (key, _) in quality.SPEEDUP_COLUMNS.items():
            other = by_impl.get(peer)
            r[key] = other["median_ms"] / r["median_ms"] if other is not None else None


def compare_with_plain(records):
    """Set ``vs_plain`` on every variant row: its median time divided by that of the plain cell
    (``plain_cell``) with the same implementation, shape and mode; None where the plain cell
    did not run, and on the plain cells' own rows."""
    median = {(r["impl"], r["shape"], r["mode"], r["cell"]): r["median_ms"] for r in records}
    for r in records:
        plain = median.get((r["impl"], r["shape"], r["mode"], r["plain_cell"]))
        r["vs_plain"] = r["median_ms"] / plain if plain else None


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


def run(cases, impls, *, threads=None, rounds=7, warmup=1, min_sample_s=0.002,
        reference_max_flops=2e9, reference_budget_s=2.0, sgemm_size=2048, progress=True,
        seed=0, retry_budget_s=30.0, notes=(), command=None, read_load=load_average,
        clock=time.perf_counter) -> dict:
    """Time ``impls`` on ``cases`` and return the report (a JSON-ready dict).

    The sgemm peak is measured before and after the cases and the higher one is the peak: a
    busy machine lowers a measurement, never raises it. ``read_load`` gives the 1-minute load
    average (``quality.LoadWatch``); ``clock`` the time in seconds (``time_case``).
    """
    threads = threads or default_threads()
    started = time.perf_counter()
    machine = machine_info(threads)
    preload(impls)
    records, skipped = [], []
    retry = quality.RetryBudget(retry_budget_s)
    with quality.LoadWatch(read_load) as load, thread_settings(threads):
        peaks = [sgemm_peak(sgemm_size)]
        bar = _progress(len(cases), progress and len(cases) > 1)
        try:
            for case in cases:
                if bar is not None:
                    bar.set_description_str(case.label)
                recs, skips = time_case(
                    case, impls, threads=threads, rounds=rounds, warmup=warmup,
                    min_sample_s=min_sample_s, reference_max_flops=reference_max_flops,
                    reference_budget_s=reference_budget_s, seed=seed, retry=retry,
                    clock=clock)
                records += recs
                skipped += skips
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        peaks.append(sgemm_peak(sgemm_size))
    peak = max(peaks)
    bandwidth = device_bandwidth(impls)
    for r in records:
        r["peak_fraction"] = r["gflops"] / peak if r["host"] else None
        r["bandwidth_fraction"] = (None if r["host"] or not bandwidth else
                                   r["weight_bytes"] / (r["median_ms"] * 1e-3) / bandwidth)
    compare_with_plain(records)
    quality.flag_rows(records, peak)
    report = {
        "warnings": [],  # first, so that a reader of bench.json meets them first too
        "fastrnn": __version__,
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "versions": {m: version(m) for m in ("numpy", "scipy", "numba", "torch", "onnxruntime")},
        "dtype": "float32",
        "sgemm_peak_gflops": peak,
        "sgemm_peaks_gflops": peaks,
        "sgemm_size": sgemm_size,
        "device_bandwidth_bytes_per_s": bandwidth,
        "settings": {"rounds": rounds, "warmup": warmup, "min_sample_ms": min_sample_s * 1e3,
                     "reference_max_gflop": reference_max_flops / 1e9,
                     "reference_budget_s": reference_budget_s, "seed": seed,
                     "noisy_spread": quality.NOISY_SPREAD,
                     "retry_budget_s": retry_budget_s, "max_attempts": quality.MAX_ATTEMPTS},
        "retry_used_s": retry.used,
        "implementations": [{"impl": i.key, "label": i.label, "role": i.role} for i in impls],
        "results": records,
        "skipped": [{"impl": k, "cell": c.cell_name, "shape": c.shape.name, "mode": c.mode,
                     "reason": why} for k, c, why in skipped],
        "notes": list(notes),
        "load_average": load.summary(),
        "elapsed_s": time.perf_counter() - started,
    }
    report["warnings"] = quality.report_warnings(report)
    return report

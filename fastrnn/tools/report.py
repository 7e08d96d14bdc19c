"""`fastrnn bench`'s report: bench.md (``markdown``), bench.png (``chart``) and bench.json, from
the dict that ``bench.run`` returns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..tolerances import describe
from . import presets
from .bench import MIN_REFERENCE_ROUNDS


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
                     f"the first implementation's) within {describe(report['dtype'], ', ')}; "
                     f"largest difference {max(r['y_max_abs_diff'] for r in compared):.2g}.")
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

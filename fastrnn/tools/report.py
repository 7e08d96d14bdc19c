"""`fastrnn bench`'s report: bench.md (``markdown``), bench.png (``chart``) and bench.json, from
the dict that ``bench.run`` returns."""

from __future__ import annotations

import json
import textwrap
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
    lines = ["# fastrnn bench", ""]
    for w in report["warnings"]:
        lines += [f"> **WARNING**: {w}", ""]
    lines += [
        f"`{report['command'] or 'fastrnn bench'}`",
        "",
        f"fastrnn {report['fastrnn']} · {m['cpu']} · {m['threads']} threads of {m['cores']} "
        f"cores · {report['dtype']} · Python {m['python']} · NumPy {v['numpy']}"
        + "".join(f" · {name} {v[k]}" for k, name in (
            ("numba", "Numba"), ("torch", "PyTorch"), ("onnxruntime", "ONNX Runtime"))
            if v.get(k)) + f" · {report['date']}",
        "",
        f"sgemm peak, NumPy float32 matmul {report['sgemm_size']}x{report['sgemm_size']} "
        f"in this run: **{report['sgemm_peak_gflops']:.1f} GFLOP/s** (the higher of "
        + " and ".join(f"{p:.1f}" for p in report["sgemm_peaks_gflops"])
        + ", before and after the cases)",
        "",
        "ms per call: median over the rounds, then min-max. Rounds interleave the "
        "implementations; the first call and the warm-up are not timed. GFLOP/s counts a "
        "forward as 2·T·B·G·H·(I+H) and training (forward + backward, dy = ones) as 3x. "
        "x ref / x torch: the NumPy reference's / PyTorch's time divided by this one's "
        "(above 1 is faster). rounds: samples x calls per sample. flags: "
        f"noisy when max/min exceeds {st['noisy_spread']:g}x, GFLOP/s above the sgemm peak, "
        "a speedup over a noisy row; a flagged row's figures are not reliable.",
        "",
        "| mode | cell | shape (T, B, I, H) | implementation | ms | min-max | GFLOP/s "
        "| % sgemm peak | x ref | x torch | rounds | flags |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
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
            f"| {r['rounds']}x{r['number']} | {'; '.join(r['flags'])} |")
    lines += _variant_lines(report)
    lines += _device_lines(report)
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
    notes = list(report["notes"]) + _skip_notes(report) + _retry_notes(report)
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
    lines += ["", f"Total time {report['elapsed_s']:.0f} s; {_load_text(report)}.", ""]
    return "\n".join(lines)


def _variant_lines(report) -> list:
    """The section that sets each variant row beside its plain cell's (``bench.compare_with_plain``)."""
    rows = [r for r in report["results"] if r["plain_cell"]]
    if not rows:
        return []
    plain = {(r["impl"], r["shape"], r["mode"], r["cell"]): r for r in report["results"]}
    lines = ["", "## Variants against the plain cell", "",
             "vs plain: the variant's median time divided by the plain cell's, same "
             "implementation, shape and mode, in this run (above 1 is slower). '-' where the "
             "plain cell did not run: add it to --cells. Not reliable where either row is "
             "flagged.", "",
             "| mode | variant | shape | implementation | ms | plain cell | plain ms | vs plain "
             "| flags |", "|---|---|---|---|--:|---|--:|--:|---|"]
    for r in rows:
        p = plain.get((r["impl"], r["shape"], r["mode"], r["plain_cell"]))
        flagged = [f"{which} row flagged" for which, row in (("variant", r), ("plain", p))
                   if row is not None and row["flags"]]
        lines.append(
            f"| {r['mode']} | {r['cell']} | {r['shape']} | {r['label']} | {_ms(r['median_ms'])} "
            f"| {r['plain_cell']} | {'-' if p is None else _ms(p['median_ms'])} "
            f"| {_fmt(r['vs_plain'], '.2f')} | {'; '.join(flagged)} |")
    return lines


def _device_lines(report) -> list:
    """The rows computed on a GPU, per step: microseconds per time step, TFLOP/s, and the
    recurrent weights read per call (presets.weight_bytes) as a fraction of the device's peak
    memory bandwidth."""
    rows = [r for r in report["results"] if not r["host"]]
    if not rows:
        return []
    peak = report.get("device_bandwidth_bytes_per_s")
    lines = ["", "## On the GPU", "",
             "µs/step: ms per call / T. % bandwidth: the recurrent weights one call reads (W_hh, "
             "and W_hr with a projection, every step; twice per step in training) per second, "
             "over the device's peak memory bandwidth "
             + (f"({peak / 1e9:.0f} GB/s from its memory clock and bus width)" if peak else
                "(unknown: CuPy could not read it)")
             + "; weights held in cache or registers across steps can exceed 100 %.", "",
             "| mode | cell | shape (T, B, I, H) | implementation | ms | µs/step | TFLOP/s "
             "| weight MB/call | % bandwidth | flags |",
             "|---|---|---|---|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        bw = r.get("bandwidth_fraction")
        lines.append(
            f"| {r['mode']} | {r['cell']} | {r['shape']} ({r['T']}, {r['B']}, {r['I']}, "
            f"{r['H']}) | {r['label']} | {_ms(r['median_ms'])} | {r['us_per_step']:.3g} "
            f"| {r['tflops']:.3g} | {r['weight_bytes'] / 1e6:.3g} "
            f"| {_fmt(None if bw is None else 100 * bw, '.1f')} | {'; '.join(r['flags'])} |")
    return lines


def _retry_notes(report) -> list:
    """What the retries did, per case, and what the budget left noisy."""
    st = report["settings"]
    cases = {}
    for r in report["results"]:
        cases.setdefault((r["mode"], r["cell"], r["shape"]), r)
    retried = [f"{' '.join(k)} ({r['attempts']} attempts, kept {r['kept_attempt']})"
               for k, r in cases.items() if r["attempts"] > 1]
    noisy = list(dict.fromkeys((r["mode"], r["cell"], r["shape"]) for r in report["results"]
                               if r["attempts"] == 1
                               and any(f.startswith("noisy") for f in r["flags"])))
    notes = []
    if retried:
        notes.append(f"Retried: {', '.join(retried)}. A retry times every implementation of "
                     "the case again; the attempt whose noisiest row is the quietest is kept. "
                     f"{report['retry_used_s']:.1f} s of the {st['retry_budget_s']:g} s budget "
                     "(--retry-budget).")
    if noisy:
        notes.append(f"Not retried, the retry budget ({st['retry_budget_s']:g} s, "
                     f"--retry-budget) being spent: {', '.join(' '.join(k) for k in noisy)}.")
    return notes


def _load_text(report) -> str:
    load = report["load_average"]
    seen = [f"{load[k]:.2f} {when}" for k, when in (
        ("before", "before"), ("max_during", "at most during"), ("after", "after"))
        if load[k] is not None]
    return (f"1-minute load average {', '.join(seen)} the run, on {load['cpus']} CPUs"
            if seen else "load average unknown")


def chart(report, path) -> Optional[str]:
    """A PNG of GFLOP/s per case and implementation, one panel per mode, flagged rows hatched
    and the report's warnings on top; returns None if it was written, else why not."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install 'fastrnn[bench]'): no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(report)
    if fig is None:
        return "no results: no chart"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return None


FLAGGED_HATCH = "///"


def figure(report):
    """The chart's matplotlib figure, or None without results. A flagged row's bar is hatched
    and edged in red; the legend says what that means."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    results = report["results"]
    modes = [m for m in presets.MODES if any(r["mode"] == m for r in results)]
    labels = list(dict.fromkeys(r["label"] for r in results))
    if not modes:
        return None
    width = max(6.0, 1.2 + 0.35 * len(labels) * max(
        len({(r["cell"], r["shape"]) for r in results if r["mode"] == m}) for m in modes))
    fig, axes = plt.subplots(len(modes), 1, figsize=(min(width, 40), 3.6 * len(modes)),
                             squeeze=False)
    bar = 0.8 / len(labels)
    for ax, mode in zip(axes[:, 0], modes):
        groups = list(dict.fromkeys((r["cell"], r["shape"]) for r in results
                                    if r["mode"] == mode))
        for k, label in enumerate(labels):
            rows = [(g, r) for g, (cell, shape) in enumerate(groups) for r in results
                    if (r["mode"], r["cell"], r["shape"], r["label"]) == (mode, cell, shape,
                                                                          label)]
            bars = ax.bar([g + (k - (len(labels) - 1) / 2) * bar for g, _ in rows],
                          [r["gflops"] for _, r in rows], bar, color=f"C{k}")
            for patch, (_, r) in zip(bars.patches, rows):
                if r["flags"]:
                    patch.set_hatch(FLAGGED_HATCH)
                    patch.set_edgecolor("red")
        ax.axhline(report["sgemm_peak_gflops"], color="black", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{c}\n{s}" for c, s in groups], fontsize=8)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{mode}, float32, {report['machine']['threads']} threads")
        ax.grid(axis="y", which="both", alpha=0.3)
    # Legend entries drawn apart from the bars, so that a hatched first bar does not make an
    # implementation look flagged everywhere.
    handles = [Line2D([], [], color="black", linestyle="--", linewidth=1, label="sgemm peak")]
    handles += [Patch(facecolor=f"C{k}", label=label) for k, label in enumerate(labels)]
    if any(r["flags"] for r in results):
        handles.append(Patch(facecolor="white", edgecolor="red", hatch=FLAGGED_HATCH,
                             label="flagged: not reliable\n(bench.md says why)"))
    axes[0, 0].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if report["warnings"]:
        text = textwrap.wrap("WARNING: " + " ".join(report["warnings"]),
                             width=int(14 * fig.get_figwidth()))
        fig.suptitle("\n".join(text), color="red", fontsize=8, ha="left", x=0.01)
    fig.tight_layout()
    return fig


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

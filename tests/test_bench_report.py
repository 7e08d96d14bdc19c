"""`fastrnn bench` flags what it cannot vouch for: noisy rows, rows above the sgemm peak, a
loaded machine, more threads than cores; it retries noisy cases within a budget, and a bad
option names itself. Timings here come from scripted implementations on a fake clock, so every
figure is known in advance."""

from __future__ import annotations

import itertools
import json
import os
import time

import numpy as np
import pytest

from fastrnn.cells import Cell
from fastrnn.tools import bench, machine, presets, quality, report, runners, variants
from fastrnn.tools.cli import main

CORES = machine.default_threads()
CASE = bench.Case(Cell("lstm"), presets.Shape("2x1x2x2", 2, 1, 2, 2), "inference")


def _row(min_ms, max_ms, gflops=1.0, host=True):
    return {"min_ms": min_ms, "max_ms": max_ms, "gflops": gflops, "host": host}


def test_row_flags_spread_and_peak():
    assert quality.row_flags(_row(1.0, 2.0), peak_gflops=100.0) == ["noisy: max/min 2.00x"]
    assert quality.row_flags(_row(1.0, 1.2), peak_gflops=100.0) == []
    assert quality.row_flags(_row(1.0, 1.5), peak_gflops=100.0) == []  # 1.5 is not over 1.5
    assert quality.row_flags(_row(4.7, 1600.0, gflops=142.0), peak_gflops=100.0) == [
        "noisy: max/min 340.43x", "above the sgemm peak: 142 %"]
    assert quality.row_flags(_row(1.0, 1.1, gflops=100.0), peak_gflops=100.0) == []
    assert quality.row_flags(_row(0.0, 0.001), peak_gflops=100.0) == ["noisy: max/min infx"]
    # A GPU row is not measured against the CPU's sgemm peak.
    assert quality.row_flags(_row(1.0, 1.1, gflops=5000.0, host=False), 100.0) == []


def test_a_speedup_over_a_noisy_row_is_flagged_too():
    def row(impl, shape, min_ms, max_ms, x_ref, x_torch):
        return {"mode": "inference", "cell": "lstm", "shape": shape, "impl": impl,
                "min_ms": min_ms, "max_ms": max_ms, "gflops": 1.0, "host": True,
                "speedup_vs_reference": x_ref, "speedup_vs_torch": x_torch}

    # PyTorch at 1600 ms (min 4.7 ms) makes fastrnn's x torch of 117 mean nothing.
    records = [row("numba", "tiny", 10.0, 12.0, 9.0, 117.0),
               row("numpy", "tiny", 90.0, 100.0, 1.0, 13.0),
               row("torch", "tiny", 4.7, 1600.0, 0.08, 1.0),
               row("numba", "small", 10.0, 12.0, None, 2.0),
               row("torch", "small", 20.0, 22.0, None, 1.0)]
    quality.flag_rows(records, peak_gflops=100.0)
    assert [r["flags"] for r in records] == [
        ["x torch: the torch row is noisy"], ["x torch: the torch row is noisy"],
        ["noisy: max/min 340.43x"], [], []]


def test_load_warning_only_above_the_cpus():
    assert quality.load_warning({"before": 1.9, "max_during": 2.0, "cpus": 2}) is None
    assert quality.load_warning({"before": None, "max_during": None, "cpus": 2}) is None
    assert quality.load_warning({"before": 3.25, "max_during": 1.5, "cpus": 2}) == (
        "The machine was busy: the 1-minute load average was 3.25 before the run and up to "
        "1.50 during it, above its 2 CPUs. Other processes competed for the cores, so the "
        "times are slower and noisier than on an idle machine and the ratios less certain; "
        "run again when it is quiet.")
    assert quality.load_warning({"before": 0.5, "max_during": 4.0, "cpus": 2}).startswith(
        "The machine was busy: the 1-minute load average was 0.50 before the run and up to "
        "4.00 during it, above its 2 CPUs.")
    assert quality.load_warning({"before": None, "max_during": 4.0, "cpus": 2}).startswith(
        "The machine was busy: the 1-minute load average was up to 4.00 during it, above its "
        "2 CPUs.")


def test_report_warnings_in_order():
    report = {"machine": {"threads": 3, "cores": 2},
              "load_average": {"before": 2.5, "max_during": 1.0, "cpus": 2},
              "sgemm_peaks_gflops": [86.0, 172.0],
              "results": [{"flags": []}, {"flags": ["noisy: max/min 2.00x"]}, {"flags": []}]}
    warnings = quality.report_warnings(report)
    assert warnings == [
        quality.threads_warning(3, 2), quality.load_warning(report["load_average"]),
        "The sgemm peak changed during the run (86.0 GFLOP/s before the cases, 172.0 after): "
        "the machine's load changed. GFLOP/s are compared with the higher.",
        "1 of 3 rows are flagged (the flags column): their figures are not reliable."]
    assert warnings[0].startswith("--threads 3 is above the 2 cores")
    quiet = {"machine": {"threads": 2, "cores": 2},
             "load_average": {"before": 2.0, "max_during": 1.9, "cpus": 2},
             "sgemm_peaks_gflops": [100.0, 149.0], "results": [{"flags": []}]}
    assert quality.report_warnings(quiet) == []


def test_load_watch_reads_before_during_and_after():
    values = itertools.count(1.0)
    with quality.LoadWatch(lambda: next(values), interval_s=0.01) as watch:
        deadline = time.monotonic() + 10
        while len(watch.during) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    summary = watch.summary()
    assert summary["before"] == 1.0
    assert summary["samples"] >= 3  # two from the thread at least, one at the end
    assert summary["max_during"] == summary["after"] == 1.0 + summary["samples"]
    assert summary["cpus"] == os.cpu_count()


# ----------------------------------------------------------------------------------------------
# Scripted implementations on a fake clock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _scripted(clock, key, seconds):
    """An implementation whose calls take ``seconds`` (an iterable, one per call: the first
    call, then the samples) on ``clock``."""
    seconds = iter(seconds)
    y = np.zeros((CASE.shape.T, CASE.shape.B, CASE.shape.H), np.float32)

    def make(cell, p, mode, threads):
        def call():
            clock.now += next(seconds)
            return y
        return call, None, 0.0
    return bench.Impl(key, f"scripted {key}", "fastrnn", make)


def _time(impls, clock, budget_s):
    return bench.time_case(CASE, impls, threads=1, rounds=3, warmup=0, min_sample_s=0.0,
                           reference_max_flops=1e9, reference_budget_s=1.0,
                           retry=quality.RetryBudget(budget_s), clock=clock)[0]


def test_a_noisy_case_is_timed_again_and_the_quieter_attempt_kept():
    clock = FakeClock()
    ms = 1e-3
    impls = [_scripted(clock, "steady", itertools.repeat(ms)),
             # first call; attempt 1: max/min 2.0; attempt 2: max/min 1.1
             _scripted(clock, "noisy", [ms, ms, 2 * ms, ms, ms, 1.1 * ms, ms])]
    budget = quality.RetryBudget(1.0)
    records = bench.time_case(CASE, impls, threads=1, rounds=3, warmup=0, min_sample_s=0.0,
                              reference_max_flops=1e9, reference_budget_s=1.0, retry=budget,
                              clock=clock)[0]
    noisy = records[1]
    assert (noisy["attempts"], noisy["kept_attempt"]) == (2, 2)
    assert (noisy["min_ms"], noisy["median_ms"], noisy["max_ms"]) == pytest.approx(
        (1.0, 1.0, 1.1))
    assert records[0]["attempts"] == 2  # the whole case was timed again, side by side
    assert budget.used == pytest.approx(3 * ms + 3.1 * ms)  # the second attempt's rounds


def test_retries_stop_at_the_budget_and_at_max_attempts():
    ms = 1e-3
    clock = FakeClock()
    # The first attempt took 4 ms: a budget of 3 ms cannot pay for another.
    records = _time([_scripted(clock, "noisy", [ms, ms, 2 * ms, ms])], clock, budget_s=0.003)
    assert (records[0]["attempts"], records[0]["max_ms"]) == (1, pytest.approx(2.0))
    # Always noisy: three attempts, the least noisy (max/min 1.6) kept.
    clock = FakeClock()
    spreads = [3.0, 1.6, 2.5]
    script = [ms] + [s for k in spreads for s in (ms, k * ms, ms)]
    records = _time([_scripted(clock, "noisy", script)], clock, budget_s=1.0)
    assert quality.MAX_ATTEMPTS == 3
    assert (records[0]["attempts"], records[0]["kept_attempt"]) == (3, 2)
    assert records[0]["max_ms"] / records[0]["min_ms"] == pytest.approx(1.6)


def _report(tmp_path, impls, clock, load, budget_s=1.0):
    result = bench.run([CASE], impls, threads=1, rounds=3, warmup=0, min_sample_s=0.0,
                       sgemm_size=64, progress=False, retry_budget_s=budget_s,
                       read_load=load, clock=clock)
    paths = report.write_report(result, tmp_path)
    return result, paths["md"].read_text(), json.loads(paths["json"].read_text())


def test_flags_and_load_warning_in_markdown_json_and_chart(tmp_path):
    ms, ps = 2.0 ** -10, 2.0 ** -40  # powers of 2: the fake clock adds them up exactly
    clock = FakeClock()
    impls = [_scripted(clock, "quiet", itertools.repeat(ms)),
             # 1 ps a call is far above any sgemm peak; then max/min 2.0 on every attempt
             _scripted(clock, "fast", itertools.chain([ps], itertools.cycle([ps, 2 * ps, ps])))]
    cpus = os.cpu_count()
    loads = [cpus + 1.5, 0.25]  # before the run, then during it
    result, md, data = _report(tmp_path, impls, clock, lambda: loads.pop(0) if len(loads) > 1
                               else loads[0], budget_s=1.0)
    quiet, fast = data["results"]
    assert quiet["flags"] == []
    assert fast["flags"][0] == "noisy: max/min 2.00x"
    assert fast["flags"][1].startswith("above the sgemm peak: ")
    assert fast["gflops"] > data["sgemm_peak_gflops"] == max(data["sgemm_peaks_gflops"])
    assert fast["attempts"] == quality.MAX_ATTEMPTS
    busy = quality.load_warning({"before": cpus + 1.5, "max_during": 0.25, "cpus": cpus})
    assert busy.startswith(f"The machine was busy: the 1-minute load average was "
                           f"{cpus + 1.5:.2f} before the run and up to 0.25 during it")
    assert {k: data["load_average"][k] for k in ("before", "max_during", "after", "cpus")} == {
        "before": cpus + 1.5, "max_during": 0.25, "after": 0.25, "cpus": cpus}
    # bench.json: the warnings come first, the load warning first among them.
    assert list(data)[0] == "warnings"
    assert data["warnings"][0] == busy
    assert data["warnings"][-1] == ("1 of 2 rows are flagged (the flags column): their figures "
                                    "are not reliable.")
    # bench.md: the same warnings right under the title, the flags in the row's last column.
    lines = md.splitlines()
    assert lines[:3] == ["# fastrnn bench", "", f"> **WARNING**: {busy}"]
    row = next(line for line in lines if "| scripted fast |" in line)
    assert row.endswith(f"| {'; '.join(fast['flags'])} |")
    assert next(line for line in lines if "| scripted quiet |" in line).endswith("|  |")
    assert "Retried: inference lstm 2x1x2x2 (3 attempts, kept 1)" in md
    # The chart: the flagged bar hatched, the other not, the warnings on top.
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    fig = report.figure(result)
    bars = [p for p in fig.axes[0].patches if p.get_height() > 0]
    hatches = {round(p.get_height(), 6): p.get_hatch() for p in bars}
    assert hatches == {round(quiet["gflops"], 6): None,
                       round(fast["gflops"], 6): report.FLAGGED_HATCH}
    assert fig.get_suptitle().replace("\n", " ").startswith(f"WARNING: {busy[:60]}")
    plt.close(fig)


def test_a_variant_row_shows_its_time_against_the_plain_cell(tmp_path):
    """Scripted times in units u = 2**-8 s: the plain LSTM takes 4u, lstm_proj 5u, lstm_clip 6u
    with one implementation and 2u with another that has no plain row: vs plain 1.25 and 1.5, and
    None where the plain cell did not run; bench.md's variant section says the same."""
    ms = 2.0 ** -8  # a power of 2: the fake clock adds it up exactly
    clock = FakeClock()
    shape = CASE.shape

    def impl(key, seconds_by_cell):
        y = {name: np.zeros((shape.T, shape.B, H_out), np.float32)
             for name, H_out in (("lstm", 2), ("lstm;proj_size=1", 1), ("lstm;clip=1.0", 2))}

        def make(cell, p, mode, threads):
            if cell.spec not in seconds_by_cell:
                raise runners.Unsupported("not this one")

            def call():
                clock.now += seconds_by_cell[cell.spec]
                return y[cell.spec]
            return call, None, 0.0
        return bench.Impl(key, f"scripted {key}", "fastrnn", make)

    impls = [impl("a", {"lstm": 4 * ms, "lstm;proj_size=1": 5 * ms, "lstm;clip=1.0": 6 * ms}),
             impl("b", {"lstm;clip=1.0": 2 * ms})]
    cells = variants.named_cells("lstm,lstm_proj,lstm_clip")
    cases = bench.plan_cases(cells, [shape], ("inference",))
    assert [(c.cell_name, c.cell.spec) for c in cases] == [
        ("lstm", "lstm"), ("lstm_proj", "lstm;proj_size=1"), ("lstm_clip", "lstm;clip=1.0")]
    result = bench.run(cases, impls, threads=1, rounds=3, warmup=0, min_sample_s=0.0,
                       sgemm_size=64, progress=False, retry_budget_s=0.0,
                       read_load=lambda: 0.1, clock=clock)
    rows = {(r["impl"], r["cell"]): r for r in result["results"]}
    assert rows[("a", "lstm")]["vs_plain"] is None and rows[("a", "lstm")]["plain_cell"] is None
    assert rows[("a", "lstm_proj")]["vs_plain"] == 1.25
    assert rows[("a", "lstm_proj")]["variant"] == {"proj_size": 1}
    assert rows[("a", "lstm_clip")]["vs_plain"] == 1.5
    assert rows[("a", "lstm_clip")]["plain_cell"] == "lstm"
    assert rows[("b", "lstm_clip")]["vs_plain"] is None
    # the projection's GEMMs: 2*T*B*(4H*(I + P) + P*H) with T = 2, B = 1, I = H = 2, P = 1
    assert rows[("a", "lstm_proj")]["flops"] == 2 * 2 * 1 * (8 * (2 + 1) + 1 * 2) == 104
    paths = report.write_report(result, tmp_path)
    md = paths["md"].read_text()
    section = md.split("## Variants against the plain cell")[1].split("## First calls")[0]
    table = [line for line in section.splitlines() if line.startswith("| inference")]
    assert table == [
        "| inference | lstm_proj | 2x1x2x2 | scripted a | 19.5 | lstm | 15.6 | 1.25 |  |",
        "| inference | lstm_clip | 2x1x2x2 | scripted a | 23.4 | lstm | 15.6 | 1.50 |  |",
        "| inference | lstm_clip | 2x1x2x2 | scripted b | 7.81 | lstm | - | - |  |"]
    saved = json.loads(paths["json"].read_text())
    assert [r["vs_plain"] for r in saved["results"]] == [None, 1.25, 1.5, None]


def test_a_quiet_run_has_no_warnings_and_a_spent_budget_says_so(tmp_path):
    ms = 1e-3
    clock = FakeClock()
    impls = [_scripted(clock, "noisy", itertools.chain([ms], itertools.cycle([ms, 2 * ms, ms])))]
    result, md, data = _report(tmp_path, impls, clock, lambda: 0.1, budget_s=0.0)
    assert data["results"][0]["flags"] == ["noisy: max/min 2.00x"]
    assert data["results"][0]["attempts"] == 1
    # (The real sgemm peak, measured twice, may differ on a busy machine: that warning may come.)
    assert [w for w in data["warnings"] if not w.startswith("The sgemm peak changed")] == [
        "1 of 1 rows are flagged (the flags column): their figures are not reliable."]
    assert ("Not retried, the retry budget (0 s, --retry-budget) being spent: "
            "inference lstm 2x1x2x2.") in md
    assert (f"1-minute load average 0.10 before, 0.10 at most during, 0.10 after the run, on "
            f"{os.cpu_count()} CPUs.") in md


# ----------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize("args, message", [
    (["bench", "--peers", "pytorch"],
     "fastrnn bench: error: --peers must be among torch, onnxruntime, none; got 'pytorch' "
     "(did you mean 'torch'?)"),
    (["bench", "--modes", "train"],
     "fastrnn bench: error: --modes must be among inference, training; got 'train' "
     "(did you mean 'training'?)"),
    (["bench", "--cells", "lstm,peephole"],
     "fastrnn bench: error: --cells must be among rnn_tanh, rnn_relu, lstm, gru, gru_textbook, "
     "lstm_proj, layernorm_lstm, layernorm_gru, lstm_peepholes, lstm_clip, gru_clip, "
     "rnn_zoneout, lstm_zoneout, gru_zoneout, all, plain, variants; got 'peephole' "
     "(did you mean 'lstm_peepholes'?)"),
    (["validate", "--cells", "layernorm_rnn"],
     "fastrnn validate: error: --cells must be among rnn_tanh, rnn_relu, lstm, gru, "
     "gru_textbook, lstm_proj, layernorm_lstm, layernorm_gru, lstm_peepholes, lstm_clip, "
     "gru_clip, rnn_zoneout, lstm_zoneout, gru_zoneout, all, plain, variants; got "
     "'layernorm_rnn' (did you mean 'layernorm_gru'?)"),
    (["bench", "--shapes", "smal"],
     "fastrnn bench: error: --shapes must be among tiny, small, medium, large, xlarge, all, "
     "deepbench-train, deepbench-server, deepbench-device or TxBxIxH; got 'smal' "
     "(did you mean 'small'?)"),
    (["bench", "--shapes", "tiny,0x1x1x1"],
     "fastrnn bench: error: --shapes 0x1x1x1: T, B, I and H must all be >= 1"),
    (["bench", "--backends", "numbaa"],
     "fastrnn bench: error: --backends must be among numpy, numba, cupy; got 'numbaa' "
     "(did you mean 'numba'?)"),
    (["bench", "--peers", "none,torch"],
     "fastrnn bench: error: --peers none cannot be combined with other names"),
    (["bench", "--modes", ","],
     "fastrnn bench: error: --modes must name at least one of inference, training"),
    (["validate", "--dtypes", "float16"],
     "fastrnn validate: error: --dtypes must be among float32, float64; got 'float16' "
     "(did you mean 'float64'?)"),
])
def test_a_bad_name_stops_with_the_option_and_the_closest_name(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == message


def test_threads_above_the_cores_warns_and_says_so_in_the_report(tmp_path, capsys):
    threads = CORES + 1
    assert main(["bench", "--cells", "rnn_tanh", "--shapes", "3x1x2x2", "--modes", "inference",
                 "--backends", "numpy", "--peers", "none", "--rounds", "2", "--warmup", "0",
                 "--sgemm-size", "64", "--min-sample-ms", "0.2", "--no-progress",
                 "--threads", str(threads), "--out", str(tmp_path)]) == 0
    warning = (f"--threads {threads} is above the {CORES} cores this process may run on: the "
               "threads take turns on the cores, so the times measure that rather than the "
               "implementations.")
    assert capsys.readouterr().err.splitlines()[0] == f"fastrnn bench: warning: {warning}"
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["warnings"][0] == warning
    assert (tmp_path / "bench.md").read_text().splitlines()[2] == f"> **WARNING**: {warning}"

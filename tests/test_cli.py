"""The `fastrnn` command: exit codes, report files, validation catching a wrong backend, and the
peers (ONNX Runtime, PyTorch) computing what fastrnn computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import dispatch
from fastrnn.cells import ALL_CELLS, Cell, Variant, cell_by_name
from fastrnn.reference import NumpyBackend
from fastrnn.tools import bench, presets, runners, variants
from fastrnn.tools import validate as validation
from fastrnn.backends.numba_cpu.threads import OPENBLAS_IDLE_TIMEOUT
from fastrnn.tools.cli import _parser, main

TINY_BENCH = ["--rounds", "2", "--warmup", "0", "--threads", "1", "--sgemm-size", "128",
              "--min-sample-ms", "0.2", "--no-progress"]


# ----------------------------------------------------------------------------------------------
# Exit codes and info


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["bench", "--rounds", "0"], "fastrnn bench: error: --rounds must be >= 1"),
    (["bench", "--retry-budget", "-1"], "fastrnn bench: error: --retry-budget must be >= 0"),
    (["bench", "--t-scale", "0"], "fastrnn bench: error: --t-scale must be > 0"),
    (["bench", "--cells", "gru", "--shapes", "deepbench-device"],
     "fastrnn bench: error: no cases: the chosen shapes fix cells that are not among --cells"),
])
def test_usage_errors_exit_2_and_say_why(args, message, tmp_path, capsys):
    """Errors found after parsing; a name that is not among an option's choices stops argparse
    itself (test_bench_report.py)."""
    assert main(args + ["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == message


def test_unknown_names_stop_the_parser_with_exit_2(capsys):
    for args in (["bench", "--peers", "tensorflow"], ["validate", "--backends", "nosuch"],
                 ["bench", "--shapes", "huge"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        assert " must be among " in capsys.readouterr().err


def test_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--no-such-option"])
    assert exc.value.code == 2


def test_python_m_fastrnn_info():
    out = subprocess.run([sys.executable, "-m", "fastrnn", "info"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backends available: " in out.stdout
    assert "numpy" in out.stdout.split("backends available: ")[1].splitlines()[0]
    assert "BLAS and OpenMP libraries loaded" in out.stdout
    assert f"fastrnn {fastrnn.__version__}" in out.stdout


def test_command_line_bench_runs_as_a_users_process(tmp_path):
    """`fastrnn bench` from the command line runs in the environment it is given (no restart
    with settings of its own): the idle OpenBLAS threads sleep because the Numba backend puts
    them to sleep, as in any user's process, and `fastrnn info` says so."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")}
    out = subprocess.run(
        [sys.executable, "-m", "fastrnn", "bench", "--cells", "rnn_tanh", "--shapes", "3x2x3x4",
         "--modes", "inference", "--peers", "none", "--out", str(tmp_path), *TINY_BENCH],
        capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert not any("OPENBLAS_THREAD_TIMEOUT" in n for n in report["notes"])
    assert {r["impl"] for r in report["results"]} >= {"numpy", "numba"}
    info = subprocess.run([sys.executable, "-m", "fastrnn", "info", "--json"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert info.returncode == 0, info.stderr
    threads = json.loads(info.stdout)["threads"]
    assert threads["numba_threading_layer"] == "omp"
    timeouts = threads["openblas_idle_timeout_log2_cycles"]
    assert timeouts and set(timeouts.values()) == {OPENBLAS_IDLE_TIMEOUT}


def test_info_json_lists_backends_reasons_threads_and_blas(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backends"]["available"] == fastrnn.available_backends()
    assert data["backends"]["unavailable"] == dispatch.unavailable_reasons()
    assert set(data["backends"]["available"]).isdisjoint(data["backends"]["unavailable"])
    assert data["versions"]["numpy"] == np.__version__
    assert data["threads"]["cores"] >= 1
    assert any(lib["user_api"] == "blas" and lib["filepath"] for lib in data["blas"])
    assert isinstance(data["gpu"]["gpus"], list)


# ----------------------------------------------------------------------------------------------
# bench


def test_tiny_bench_writes_json_markdown_and_png(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["bench", "--cells", "rnn_tanh,lstm,gru_textbook", "--shapes", "5x2x3x4",
                 "--out", str(out), *TINY_BENCH])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())
    results = report["results"]
    impls = {r["impl"] for r in results}
    assert "numpy" in impls
    assert {b for b in fastrnn.available_backends() if b != "numpy"} <= impls
    assert report["sgemm_peak_gflops"] > 0
    shape = presets.Shape("5x2x3x4", 5, 2, 3, 4)
    for r in results:
        assert r["rounds"] == 2
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        cell = cell_by_name(r["cell"])
        assert r["flops"] == presets.flops(cell, shape, r["mode"])
        assert r["flops"] == 2 * 5 * 2 * cell.gates * 4 * (3 + 4) * (
            3 if r["mode"] == "training" else 1)
        assert r["gflops"] == pytest.approx(r["flops"] / (r["median_ms"] * 1e-3) / 1e9)
        assert r["y_allclose"] in (True, None)  # every peer computes what the first one did
        if r["impl"] != "numpy":
            assert r["speedup_vs_reference"] == pytest.approx(
                next(q["median_ms"] for q in results if q["impl"] == "numpy"
                     and (q["cell"], q["mode"]) == (r["cell"], r["mode"])) / r["median_ms"])
    modes_per_impl = {i: {r["mode"] for r in results if r["impl"] == i} for i in impls}
    assert modes_per_impl["numpy"] == {"inference", "training"}
    if runners.installed("onnxruntime"):
        assert modes_per_impl["onnxruntime"] == {"inference"}
        assert {r["cell"] for r in results if r["impl"] == "onnxruntime"} == {
            "rnn_tanh", "lstm", "gru_textbook"}
    if runners.installed("torch"):
        assert "gru_textbook" not in {r["cell"] for r in results if r["impl"] == "torch"}
        assert any(s["impl"] == "torch" and s["cell"] == "gru_textbook"
                   and "linear_before_reset" in s["reason"] for s in report["skipped"])
    md = (out / "bench.md").read_text()
    assert md == printed.split("wrote ")[0].rstrip("\n") + "\n"
    table = [line for line in md.splitlines() if line.startswith("| inference |")
             or line.startswith("| training |")]
    assert len(table) == len(results)
    png = out / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if runners.installed("matplotlib"):
        import matplotlib.image

        assert matplotlib.image.imread(str(png)).ndim == 3


def test_bench_without_peers_caps_reference_and_skips_it_above_the_flop_limit(tmp_path):
    out = tmp_path / "r"
    # 5x2x3x4 LSTM training is 3*2*5*2*16*7 = 6720 FLOPs; inference 2240.
    code = main(["bench", "--cells", "lstm", "--shapes", "5x2x3x4", "--peers", "none",
                 "--backends", "numpy", "--reference-max-gflop", "5e-6", "--out", str(out),
                 *TINY_BENCH])
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    assert [(r["impl"], r["mode"]) for r in report["results"]] == [("numpy", "inference")]
    assert report["skipped"] == [{"impl": "numpy", "cell": "lstm", "shape": "5x2x3x4",
                                  "mode": "training",
                                  "reason": "above --reference-max-gflop 5e-06 per call"}]


def test_bench_falls_back_without_matplotlib_tqdm_torch_onnxruntime(tmp_path, monkeypatch,
                                                                    capsys):
    for module in ("matplotlib", "tqdm"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    real_installed = runners.installed
    monkeypatch.setattr(runners, "installed", lambda m: m not in (
        "torch", "onnx", "onnxruntime") and real_installed(m))
    out = tmp_path / "r"
    args = ["bench", "--cells", "rnn_relu", "--shapes", "3x1x2x2,4x1x2x2", "--modes",
            "inference", "--backends", "numpy", "--out", str(out), *TINY_BENCH]
    args.remove("--no-progress")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[1/2] inference rnn_relu 3x1x2x2" in captured.err
    assert "install tqdm for a progress bar" in captured.err
    assert not (out / "bench.png").exists()
    md = (out / "bench.md").read_text()
    for text in ("matplotlib is not installed", "PyTorch not benchmarked: torch is not installed",
                 "ONNX Runtime not benchmarked"):
        assert text in md
    report = json.loads((out / "bench.json").read_text())
    assert {r["impl"] for r in report["results"]} == {"numpy"}
    assert all(r["speedup_vs_torch"] is None for r in report["results"])


def test_reference_rounds_are_capped_by_its_budget():
    case = bench.Case(Cell("rnn"), presets.Shape("s", 3, 1, 2, 2), "inference")
    impls, _ = bench.implementations(backends=[], peers=())
    records, _ = bench.time_case(case, impls, threads=1, rounds=20, warmup=0,
                                 min_sample_s=0.0, reference_max_flops=1e9,
                                 reference_budget_s=0.0)
    assert records[0]["rounds"] == bench.MIN_REFERENCE_ROUNDS


# ----------------------------------------------------------------------------------------------
# validate


@pytest.fixture
def wrong_backend():
    class PerturbedGradient(NumpyBackend):
        """The reference with dW_hh off by 1e-3: every other quantity stays right."""

        name = "wrong"

        def backward(self, cell, saved, dy, dh_n, dc_n):
            dx, grads = super().backward(cell, saved, dy, dh_n, dc_n)
            for g in grads:
                g.dW_hh = g.dW_hh + 1e-3
            return dx, grads

    fastrnn.register_backend("wrong", PerturbedGradient())
    yield "wrong"
    dispatch.unregister_backend("wrong")


def test_validate_fails_on_a_wrong_gradient_and_names_it(wrong_backend, tmp_path, capsys):
    path = tmp_path / "v.json"
    code = main(["validate", "--backends", wrong_backend, "--cells", "lstm,gru",
                 "--json", str(path)])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL wrong lstm float32" in out and "FAIL wrong gru float64" in out
    fail_lines = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert fail_lines and all(line.split("] ")[1].startswith("dW_hh:") for line in fail_lines)
    data = json.loads(path.read_text())
    assert data["passed"] is False
    failed = {(r["cell"], r["dtype"], r["quantity"]) for r in data["records"] if not r["passed"]}
    assert failed == {(c, d, "dW_hh") for c in ("lstm", "gru") for d in ("float32", "float64")}
    summary = {(r["cell"], r["dtype"], r["quantity"]): r for r in data["summary"]}
    assert summary[("lstm", "float32", "dW_hh")]["max_abs"] == pytest.approx(1e-3, rel=1e-2)
    assert summary[("lstm", "float32", "dx")]["passed"] is True


def test_validate_passes_on_every_available_backend(tmp_path, capsys):
    """The plain cells; the variants, which `fastrnn validate` also runs by default, have tests
    of their own below."""
    assert variants.named_cells(_parser().parse_args(["validate"]).cells) == (
        variants.PLAIN_CELLS + variants.VARIANT_CELLS)
    path = tmp_path / "v.json"
    assert main(["validate", "--cells", "plain", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and "FAIL" not in out
    data = json.loads(path.read_text())
    assert data["passed"] is True and data["failed"] == 0
    records = data["records"]
    assert {r["backend"] for r in records} == set(fastrnn.available_backends())
    for backend in fastrnn.available_backends():
        for cell in ALL_CELLS:
            for dtype in ("float32", "float64"):
                got = {r["quantity"] for r in records
                       if (r["backend"], r["cell"], r["dtype"]) == (backend, cell.name, dtype)}
                grads = {"dx", "dW_ih", "dW_hh", "db_ih", "db_hh", "dh0"} | (
                    {"dc0"} if cell.has_cell_state else set())
                assert grads <= got, (backend, cell.name, dtype, got)
    # The reference's float64 gradients are checked with finite differences, and they are close.
    fd = [r for r in records if r["check"] == "finite differences"]
    assert fd and max(r["max_rel"] for r in fd) <= 1e-6


def test_validate_json_to_stdout(capsys):
    assert main(["validate", "--backends", "numpy", "--cells", "rnn_relu", "--dtypes",
                 "float32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True
    assert {r["case"] for r in data["records"]} == {g.name for g in validation.GRID}


# ----------------------------------------------------------------------------------------------
# validate: the variants

# Every variant but the layer-normalised LSTM (test_validate_layernorm_lstm below: its dx at
# T1 B1 I1 H1 is a derivative below the finite differences' rounding).
CHECKED_VARIANTS = [c for c in variants.VARIANT_CELLS if c.name != "layernorm_lstm"]


def test_validate_runs_each_variant_where_the_backend_declares_it(tmp_path, capsys):
    """numpy runs every variant and passes (its float64 gradients against finite differences,
    the variant parameters' included); numba is compared with the reference for the variants
    whose switches it declares and reported "not run", neither passed nor failed, for the
    others; lstm_proj's grid case at H = 1 is skipped, and the output says so."""
    path = tmp_path / "v.json"
    code = main(["validate", "--backends", "numpy,numba", "--json", str(path),
                 "--cells", ",".join(c.name for c in CHECKED_VARIANTS)])
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    assert code == 0, [r for r in data["records"] if r["passed"] is False][:3]
    assert data["passed"] is True and data["failed"] == 0 and "FAIL" not in out
    records = data["records"]
    numba_runs = fastrnn.dispatch.get_backend("numba").variant_switches
    cases = {g.name for g in validation.GRID}
    for named in CHECKED_VARIANTS:
        for backend in ("numpy", "numba"):
            for dtype in ("float32", "float64"):
                mine = [r for r in records
                        if (r["backend"], r["cell"], r["dtype"]) == (backend, named.name, dtype)]
                skipped = {r["case"] for r in mine if r["check"] == "skipped"}
                assert skipped == ({"T1 B1 I1 H1"} if named.projected else set())
                assert all(r["problem"] == "skipped: proj_size = H // 2 is 0 at H = 1: no "
                           "projection to make" and r["passed"] is None for r in mine
                           if r["check"] == "skipped")
                ran = [r for r in mine if r["check"] != "skipped"]
                missing = [s for s in named.switches if s not in numba_runs]
                if backend == "numba" and missing:
                    assert {r["problem"] for r in ran} == {
                        f"not run: the backend does not run {', '.join(missing)}"}
                    assert {r["passed"] for r in ran} == {None}
                    assert {r["case"] for r in ran} == cases - skipped
                    assert (f"numba {named.name} float32, float64: not run: the backend does "
                            f"not run {', '.join(missing)}") in out
                    continue
                assert ran and all(r["passed"] is True for r in ran)
                assert {r["case"] for r in ran} == cases - skipped
                quantities = {r["quantity"] for r in ran}
                params = variants.named_cells([named.name])[0].at(5).variant.param_shapes(
                    named.plain, 3, 5)
                wanted = {"dx", "dW_ih", "dW_hh", "dh0"} | {"d" + p for p in params}
                assert wanted <= quantities, (named.name, backend, dtype, quantities)
                check = ("finite differences" if (backend, dtype) == ("numpy", "float64")
                         else "reference")
                assert {r["check"] for r in ran} == {check}
    fd = [r for r in records if r["check"] == "finite differences"]
    assert {"dP", "dW_hr", "dg_ih", "dg_hh"} <= {r["quantity"] for r in fd}
    assert all(r["passed"] for r in fd)
    # Relative error <= 1e-6 everywhere but where the derivative is below the quotient's
    # rounding (none of these variants: only layernorm_lstm at T1 B1 I1 H1, tested below).
    assert max(r["max_rel"] for r in fd) <= 1e-6
    assert "lstm_proj float32, float64 [T1 B1 I1 H1]: skipped: proj_size = H // 2" in out
    # A "not run" check is counted apart from the checks that ran.
    assert data["not_run"] == sum(r["passed"] is None for r in records) > 0


def test_validate_layernorm_lstm():
    """The layer-normalised LSTM's reference passes at the grid's edges: its finite differences
    at T1 B1 I1 H1 (dx ~4e-6: layer norm over one input is nearly scale-invariant; within the
    quotient's rounding, not to 1e-6) and with zero states (layer norm of a zero row: the
    extrapolated differences), and float32 within the problem's own float32 sensitivity."""
    records = validation.validate(["numpy"], variants.named_cells("layernorm_lstm"))
    assert len(records) > 100
    assert [(r["dtype"], r["case"], r["quantity"]) for r in records if not r["passed"]] == []
    fd = [r for r in records if r["check"] == "finite differences"]
    noisy = [(r["case"], r["quantity"]) for r in fd if r["max_rel"] > 1e-6]
    assert noisy == [("T1 B1 I1 H1", "dx")]
    assert [r["max_abs"] for r in fd if (r["case"], r["quantity"]) == noisy[0]][0] < 1e-9
    sensitive = [r for r in records if r["dtype"] == "float32"]
    assert sensitive and all(r["worst"] <= 1 for r in sensitive)


@pytest.fixture
def clip_only_backend():
    class ClipOnly(NumpyBackend):
        """The reference declaring only the clip among the variant switches."""

        name = "cliponly"
        variant_switches = frozenset({"clip"})

    fastrnn.register_backend("cliponly", ClipOnly())
    yield "cliponly"
    dispatch.unregister_backend("cliponly")


def test_validate_says_not_run_for_a_switch_the_backend_does_not_declare(clip_only_backend,
                                                                        tmp_path, capsys):
    path = tmp_path / "v.json"
    assert main(["validate", "--backends", clip_only_backend, "--cells",
                 "gru_clip,layernorm_gru", "--dtypes", "float32", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["passed"] is True and data["failed"] == 0
    assert data["not_run"] == len(validation.GRID)
    clip = [r for r in data["records"] if r["cell"] == "gru_clip"]
    assert clip and all(r["passed"] is True and r["check"] == "reference" for r in clip)
    ln = [r for r in data["records"] if r["cell"] == "layernorm_gru"]
    assert [(r["case"], r["quantity"], r["passed"], r["problem"]) for r in ln] == [
        (g.name, "(run)", None, "not run: the backend does not run layer_norm")
        for g in validation.GRID]
    assert "cliponly layernorm_gru float32: not run: the backend does not run layer_norm" in out
    row = next(line for line in out.splitlines()
               if line.startswith("cliponly") and "layernorm_gru" in line)
    assert row.split()[-2:] == ["NOT", "RUN"]


# ----------------------------------------------------------------------------------------------
# The named variant cells and their problems


def test_named_cells_parse_and_make_their_cells():
    assert [c.name for c in variants.named_cells("lstm_proj,gru,variants")] == [
        "gru", "lstm_proj", "layernorm_lstm", "layernorm_gru", "lstm_peepholes", "lstm_clip",
        "gru_clip", "rnn_zoneout", "lstm_zoneout", "gru_zoneout"]
    assert variants.named_cells("all") == variants.NAMED_CELLS
    assert variants.named_cells(["plain"]) == tuple(variants.as_named(c) for c in ALL_CELLS)
    by_name = {c.name: c for c in variants.NAMED_CELLS}
    assert by_name["lstm_proj"].at(64) == Cell("lstm", variant=Variant(proj_size=32))
    assert by_name["lstm_proj"].at(3).variant.proj_size == 1
    assert by_name["lstm_proj"].why_not(1) == "proj_size = H // 2 is 0 at H = 1: no projection " \
        "to make"
    with pytest.raises(ValueError, match="lstm_proj: proj_size = H // 2 is 0 at H = 1"):
        by_name["lstm_proj"].at(1)
    assert by_name["layernorm_gru"].at(1) == Cell("gru", variant=Variant(layer_norm=True))
    assert by_name["lstm_clip"].at(8).variant == Variant(clip=1.0)
    assert by_name["gru_clip"].at(8).variant == Variant(clip=1.0)
    assert by_name["rnn_zoneout"].at(8) == Cell("rnn", variant=Variant(zoneout=0.25))
    assert by_name["lstm_peepholes"].switches == ("peepholes",)
    assert by_name["lstm_proj"].switches == ("proj_size",)
    assert variants.as_named(Cell("lstm", variant=Variant(clip=0.5))).name == "lstm;clip=0.5"
    with pytest.raises(ValueError, match="unknown cell 'lstm_projection'"):
        variants.named_cells("lstm_projection")
    for command in ("bench", "validate"):
        assert _parser().parse_args([command, "--cells", "lstm_proj,layernorm_lstm,gru"]).cells \
            == ("lstm_proj", "layernorm_lstm", "gru")


@pytest.mark.parametrize("name", [c.name for c in variants.VARIANT_CELLS])
def test_make_params_and_cotangents_of_each_variant(name):
    named = variants.named_cells([name])[0]
    cell = named.at(6)
    T, B, I, H = 5, 3, 4, 6
    H_out = 3 if named.projected else H
    p = runners.make_params(cell, T, B, I, H, np.float64, seed=2)
    shapes = {k: v.shape for k, v in p.items() if v is not None}
    G = cell.gates
    expected = {"x": (T, B, I), "W_ih": (G * H, I), "W_hh": (G * H, H_out), "b_ih": (G * H,),
                "b_hh": (G * H,), "h0": (B, H_out)}
    if cell.has_cell_state:
        expected["c0"] = (B, H)
    if named.projected:
        expected["W_hr"] = (H_out, H)
    if cell.variant.peepholes:
        expected["peepholes"] = (3, H)
    if cell.variant.layer_norm:
        expected.update(g_ih=(G * H,), g_hh=(G * H,))
        if cell.has_cell_state:
            expected.update(g_c=(H,), b_c=(H,))
    if cell.variant.zoneout:
        expected["zoneout_mask"] = (T, B, H_out)
    assert shapes == expected
    for gain in ("g_ih", "g_hh", "g_c"):
        if gain in p:  # around 1, not 1: the gains matter
            assert 0.5 <= p[gain].min() and p[gain].max() <= 1.5 and p[gain].std() > 0.1
    if "zoneout_mask" in p:
        mask = p["zoneout_mask"]
        assert set(np.unique(mask)) == {0.0, 1.0}
        assert 0.1 < 1 - mask.mean() < 0.4  # p = 0.25 of the units keep their value
    # The plain parameters are those of the plain cell (a variant row is timed on the same
    # data), but for the projection, which narrows W_hh and h0 and so draws the rest anew,
    # and layer norm's W_ih and W_hh, the same draws at unit scale (not 1/sqrt(H)).
    plain = runners.make_params(named.plain, T, B, I, H, np.float64, seed=2)
    for k in ("x", "W_ih") if named.projected else plain:
        if cell.variant.layer_norm and k in ("W_ih", "W_hh"):
            np.testing.assert_allclose(p[k], plain[k] * np.sqrt(H), rtol=1e-12)
        else:
            np.testing.assert_array_equal(p[k], plain[k])
    cot = runners.make_cotangents(cell, T, B, H)
    assert {k: v.shape for k, v in cot.items()} == {"dy": (T, B, H_out), "dh_n": (B, H_out),
                                                   **({"dc_n": (B, H)} if "c0" in p else {})}
    out = runners.fastrnn_forward(cell, p, training=True, backend="numpy")
    grads = runners.gradients(runners.fastrnn_backward(cell, out[-1], cot))
    assert {k: v.shape for k, v in grads.items()} == {
        g: expected[runners.PARAM_OF_GRAD[g]] for g in runners.GRAD_NAMES
        if runners.PARAM_OF_GRAD[g] in expected}


def test_the_clip_binds_on_some_gate_inputs():
    """lstm_clip and gru_clip change the output, so the clip binds; and the output moves with
    the bound, so it does not bind everywhere."""
    for name in ("lstm_clip", "gru_clip"):
        named = variants.named_cells([name])[0]
        cell = named.at(8)
        p = runners.make_params(cell, 6, 4, 8, 8, np.float64, seed=0)
        ys = [runners.fastrnn_forward(c, p, training=False, backend="numpy")[0] for c in (
            cell, named.plain, Cell(cell.kind, variant=Variant(clip=0.5)))]
        assert np.abs(ys[0] - ys[1]).max() > 1e-2
        assert np.abs(ys[0] - ys[2]).max() > 1e-2


def test_zoneout_uses_its_mask_in_training_and_1_minus_p_in_inference():
    cell = variants.named_cells(["gru_zoneout"])[0].at(5)
    p = runners.make_params(cell, 4, 2, 3, 5, np.float64, seed=1)
    trained = runners.fastrnn_forward(cell, p, training=True, backend="numpy")[0]
    inferred = runners.fastrnn_forward(cell, p, training=False, backend="numpy")[0]
    evaluation = np.full_like(p["zoneout_mask"], 0.75)
    for mask, y in ((p["zoneout_mask"], trained), (evaluation, inferred)):
        q = dict(p, zoneout_mask=mask)
        np.testing.assert_allclose(fastrnn.gru_forward(**q, zoneout=0.25, backend="numpy")[0], y,
                                   rtol=1e-12, atol=1e-12)
    assert np.abs(trained - inferred).max() > 1e-2


# ----------------------------------------------------------------------------------------------
# bench: the variants


def test_bench_times_variants_beside_the_plain_cell(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["bench", "--cells", "lstm,lstm_proj,lstm_clip", "--shapes", "5x2x3x4",
                 "--backends", "numpy,numba", "--out", str(out), *TINY_BENCH]) == 0
    report = json.loads((out / "bench.json").read_text())
    results = report["results"]
    rows = {(r["impl"], r["mode"], r["cell"]): r for r in results}
    numba_runs = fastrnn.dispatch.get_backend("numba").variant_switches
    expected_impls = {"numpy"} | ({"numba"} if "proj_size" in numba_runs else set())
    if runners.installed("torch"):
        expected_impls.add("torch")
    assert {i for i, m, c in rows if c == "lstm_proj"} == expected_impls
    assert {(i, m) for i, m, c in rows if c == "lstm_clip"} >= {
        ("numpy", "inference"), ("numpy", "training"), ("numba", "inference"),
        ("numba", "training")} | ({("onnxruntime", "inference")}
                                  if runners.installed("onnxruntime") else set())
    for r in results:
        assert r["y_allclose"] in (True, None)  # torch's proj_size, ORT's clip: the same y
        if r["cell"] == "lstm":
            assert r["vs_plain"] is None and r["variant"] == {}
            continue
        plain = rows[(r["impl"], r["mode"], "lstm")]
        assert r["plain_cell"] == "lstm"
        assert r["vs_plain"] == pytest.approx(r["median_ms"] / plain["median_ms"])
    assert rows[("numpy", "training", "lstm_proj")]["variant"] == {"proj_size": 2}
    assert rows[("numpy", "inference", "lstm_proj")]["flops"] == 2 * 5 * 2 * (16 * (3 + 2) + 8)
    skipped = {(s["impl"], s["cell"]): s["reason"] for s in report["skipped"]}
    if "proj_size" not in numba_runs:
        assert skipped[("numba", "lstm_proj")] == "the backend does not run proj_size"
    md = (out / "bench.md").read_text()
    section = md.split("## Variants against the plain cell")[1].split("## First calls")[0]
    variant_rows = [line for line in section.splitlines() if line.startswith("| inference")
                    or line.startswith("| training")]
    assert len(variant_rows) == sum(r["cell"] != "lstm" for r in results)
    for line in variant_rows:
        cells = [c.strip() for c in line.split("|")]
        r = next(q for q in results if (q["mode"], q["cell"], q["label"]) == tuple(
            cells[k] for k in (1, 2, 4)))
        assert cells[8] == f"{r['vs_plain']:.2f}"


def test_bench_notes_a_variant_that_cannot_be_made_at_a_shape(tmp_path):
    out = tmp_path / "r"
    assert main(["bench", "--cells", "lstm_proj", "--shapes", "3x1x2x1,3x1x2x4", "--modes",
                 "inference", "--backends", "numpy", "--peers", "none", "--out", str(out),
                 *TINY_BENCH]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert [(r["cell"], r["shape"]) for r in report["results"]] == [("lstm_proj", "3x1x2x4")]
    assert ("lstm_proj not run at 3x1x2x1: proj_size = H // 2 is 0 at H = 1: no projection to "
            "make") in report["notes"]


# ----------------------------------------------------------------------------------------------
# The peers compute what fastrnn computes


@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_onnxruntime_model_matches_fastrnn(cell, reverse):
    pytest.importorskip("onnxruntime")
    p = runners.make_params(cell, 7, 3, 5, 6, np.float32, seed=3)
    session = runners.ort_session(runners.onnx_model(cell, p, reverse=reverse), threads=1)
    theirs = runners.ort_forward(cell, session, p)
    ours = runners.fastrnn_forward(cell, p, training=False, backend="numpy", reverse=reverse)
    for name, a in runners.outputs(cell, ours).items():
        np.testing.assert_allclose(theirs[name], a, rtol=1e-4, atol=1e-5, err_msg=name)


def test_onnxruntime_model_without_bias_matches_fastrnn():
    pytest.importorskip("onnxruntime")
    cell = Cell("lstm")
    p = runners.make_params(cell, 4, 2, 3, 5, np.float32, seed=4, bias=False)
    session = runners.ort_session(runners.onnx_model(cell, p), threads=1)
    ours = runners.fastrnn_forward(cell, p, training=False, backend="numpy")
    np.testing.assert_allclose(runners.ort_forward(cell, session, p)["y"], ours[0],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm_peepholes", "lstm_clip", "gru_clip"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_onnxruntime_model_of_a_variant_matches_fastrnn(name, reverse):
    pytest.importorskip("onnxruntime")
    cell = variants.named_cells([name])[0].at(6)
    p = runners.make_params(cell, 7, 3, 5, 6, np.float32, seed=3)
    session = runners.ort_session(runners.onnx_model(cell, p, reverse=reverse), threads=1)
    theirs = runners.ort_forward(cell, session, p)
    ours = runners.fastrnn_forward(cell, p, training=False, backend="numpy", reverse=reverse)
    for key, a in runners.outputs(cell, ours).items():
        np.testing.assert_allclose(theirs[key], a, rtol=1e-4, atol=1e-5, err_msg=key)
    with pytest.raises(runners.Unsupported, match="ONNX's LSTM operator has no layer_norm"):
        runners.onnx_model(variants.named_cells(["layernorm_lstm"])[0].at(6), p)


@pytest.mark.parametrize("cell", [c for c in ALL_CELLS if c.name != "gru_textbook"]
                         + [variants.named_cells(["lstm_proj"])[0].at(5)],
                         ids=lambda c: c.spec)
def test_torch_peer_matches_fastrnn_output_and_gradients(cell):
    torch = pytest.importorskip("torch")
    p = runners.make_params(cell, 6, 3, 4, 5, np.float32, seed=5)
    call, _, _ = runners.torch_runner(cell, p, "inference")
    ours = runners.fastrnn_forward(cell, p, training=True, backend="numpy")
    np.testing.assert_allclose(runners.to_numpy(call()), ours[0], rtol=1e-4, atol=1e-5)
    grads = runners.fastrnn_backward(cell, ours[-1], {"dy": np.ones_like(ours[0])})
    # What the training call of the torch peer differentiates: output.sum()
    module = runners.torch_module(cell, p)
    x = torch.from_numpy(p["x"]).requires_grad_()
    states = [torch.from_numpy(p[n][None]).requires_grad_() for n in cell.named("{}0")]
    module(x, cell.as_hx(states))[0].sum().backward()
    theirs = {"dx": x.grad, "dW_ih": module.weight_ih_l0.grad,
              "dW_hh": module.weight_hh_l0.grad, "db_ih": module.bias_ih_l0.grad,
              "db_hh": module.bias_hh_l0.grad, "dh0": states[0].grad[0]}
    if cell.has_cell_state:
        theirs["dc0"] = states[1].grad[0]
    if cell.variant.proj_size:
        theirs["dW_hr"] = module.weight_hr_l0.grad
    for name, g in theirs.items():
        np.testing.assert_allclose(g.numpy(), getattr(grads, name), rtol=1e-4, atol=1e-5,
                                   err_msg=name)


# ----------------------------------------------------------------------------------------------
# Shapes


def test_presets_and_flops():
    tiny = presets.PRESETS["tiny"]
    assert tiny[:5] == ("tiny", 100, 1, 64, 64)
    assert presets.forward_flops(Cell("lstm"), tiny) == 2 * 100 * 1 * 4 * 64 * 128 == 6553600
    assert presets.flops(Cell("gru"), tiny, "training") == 3 * 2 * 100 * 3 * 64 * 128
    with pytest.raises(ValueError, match="mode must be one of"):
        presets.flops(Cell("gru"), tiny, "eval")


def test_deepbench_sets_follow_the_published_problems():
    train = presets.DEEPBENCH["deepbench-train"]
    server = presets.DEEPBENCH["deepbench-server"]
    device = presets.DEEPBENCH["deepbench-device"]
    assert (len(train), len(server), len(device)) == (52, 69, 3)
    assert all(s.I == s.H for s in train + server + device)
    assert {s.mode for s in train} == {"training"}
    assert {s.mode for s in server + device} == {"inference"}
    assert (train[0].H, train[0].B, train[0].T, train[0].cell) == (1760, 16, 50, "rnn_relu")
    assert sum(s.cell == "lstm" for s in train) == 22
    assert (2816, 32, 1500) not in {(s.H, s.B, s.T) for s in train}  # commented out upstream
    assert (server[-1].H, server[-1].B, server[-1].T, server[-1].cell) == (1024, 4, 1500, "gru")
    assert [(s.H, s.T, s.cell) for s in device] == [
        (32, 672, "rnn_relu"), (64, 96, "rnn_relu"), (256, 150, "lstm")]


def test_select_shapes_scales_time_and_parses_custom_sizes():
    shapes = presets.select_shapes("deepbench-device,7x2x3x5", t_scale=0.1)
    assert [s.T for s in shapes] == [67, 10, 15, 1]
    assert shapes[0].name == "db-device-vanilla-H32-B1-T672*0.1"
    assert shapes[3][1:5] == (1, 2, 3, 5)
    assert presets.select_shapes("all") == list(presets.PRESETS.values())
    with pytest.raises(ValueError, match="t_scale must be > 0"):
        presets.select_shapes("tiny", t_scale=0)


def test_plan_cases_keeps_deepbench_cells_and_modes():
    cells = [cell_by_name(n) for n in ("rnn_relu", "lstm")]
    device = presets.select_shapes("deepbench-device")
    cases = bench.plan_cases(cells, device)
    assert [(c.cell.name, c.mode, c.shape.H) for c in cases] == [
        ("rnn_relu", "inference", 32), ("rnn_relu", "inference", 64), ("lstm", "inference", 256)]
    assert {c.mode for c in bench.plan_cases(cells, device, ("training",))} == {"training"}
    assert bench.plan_cases([Cell("gru")], device) == []
    assert [c.cell.name for c in bench.plan_cases(None, device)] == [
        "rnn_relu", "rnn_relu", "lstm"]
    assert {c.cell.name for c in bench.plan_cases(None, [presets.PRESETS["tiny"]])} == set(
        bench.DEFAULT_CELLS)
    both = bench.plan_cases(cells, [presets.PRESETS["tiny"]])
    assert [(c.mode, c.cell.name) for c in both] == [
        ("inference", "rnn_relu"), ("inference", "lstm"), ("training", "rnn_relu"),
        ("training", "lstm")]

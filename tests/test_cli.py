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
from fastrnn.cells import ALL_CELLS, Cell, cell_by_name
from fastrnn.reference import NumpyBackend
from fastrnn.tools import bench, presets, runners
from fastrnn.tools import validate as validation
from fastrnn.backends.numba_cpu.threads import OPENBLAS_IDLE_TIMEOUT
from fastrnn.tools.cli import main

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
    path = tmp_path / "v.json"
    assert main(["validate", "--json", str(path)]) == 0
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


@pytest.mark.parametrize("cell", [c for c in ALL_CELLS if c.name != "gru_textbook"],
                         ids=lambda c: c.name)
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

"""`fastrnn gpu-check` proven on the CPU, so that the check cannot rot before a GPU runs it.

- End to end in emulation (--emulate): the very steps, flags and files, the CUDA backend run
  through tests/cuda_emulation as "cupy", torch on the CPU, compute-sanitizer replaced by a
  script that runs its program (it is no GPU tool here).
- Without a GPU: exit status 3 and a summary that says why, never a pass; an unwritable results
  folder: exit status 2; a failing, a missing and a hanging step each give their status.
- The GPU path of the tests (FASTRNN_TEST_DEVICE=cupy) and `fastrnn info`'s CuPy line, on a
  CPU stand-in for CuPy (tests/cuda_emulation/cupy_stand_in): the real CudaDevice, counting
  device and NumPy-array wrapper run, with the emulation's kernels in the GPU's place.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastrnn.backends.cupy_cuda import device
from fastrnn.cells import Cell, Variant
from fastrnn.tools import gpu_check, presets, report
from fastrnn.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = ROOT / "tests" / "cuda_emulation" / "cupy_stand_in"
# compute-sanitizer's stand-in: drops the option pairs and runs the program, or fails or hangs.
SANITIZERS = {
    "runs": 'while [ "${1#--}" != "$1" ]; do shift 2; done\nexec "$@"\n',
    "reports an error": 'echo "========= ERROR SUMMARY: 1 error"\nexit 1\n',
    "hangs": "sleep 60\n",
}


def _sanitizer(tmp_path, behaviour):
    folder = tmp_path / "bin"
    folder.mkdir()
    tool = folder / "compute-sanitizer"
    tool.write_text("#!/bin/sh\n" + SANITIZERS[behaviour])
    tool.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def _gpu_check(out, *options, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "fastrnn", "gpu-check", str(out), *options],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=os.environ | (env or {}))


def test_the_emulated_check_runs_every_step_into_its_folder(tmp_path):
    out = tmp_path / "results"
    done = _gpu_check(out, "--emulate", env=_sanitizer(tmp_path, "runs"))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_status"] == 0 and summary["mode"] == "emulation on the CPU"
    assert [(s["step"], s["result"]) for s in summary["steps"]] == [
        (name, "pass") for name in gpu_check.STEP_NAMES]
    assert (out / "summary.txt").read_text().startswith(
        "fastrnn gpu-check (emulation on the CPU): exit status 0, every step passed")
    for name in gpu_check.STEP_NAMES:  # each log starts with its command
        assert (out / f"{name}.txt").read_text().startswith("$ "), name
    logs = {name: (out / f"{name}.txt").read_text() for name in gpu_check.STEP_NAMES}
    available = next(line for line in logs["info"].splitlines()
                     if line.startswith("backends available: "))
    assert "cupy" in available.split(": ")[1].split(", ")  # the emulation, registered as cupy
    assert "--backends cupy" in logs["validate"] and "0 failed" in logs["validate"]
    validated = json.loads((out / "validate.json").read_text())
    assert validated["backends"] == ["cupy"] and validated["dtypes"] == ["float32", "float64"]
    assert "6 passed" in logs["tests"] and "skipped" not in logs["tests"]
    for tool in ("racecheck", "memcheck"):
        assert f"compute-sanitizer --tool {tool} --error-exitcode 1" in logs[tool]
        assert logs[tool].count("ok   ") == 5  # one forward + backward per cell
    for folder, shapes in (("bench", {"6x2x8x8"}), ("bench-deepbench", {
            "db-device-vanilla-H32-B1-T672*0.02", "db-device-vanilla-H64-B1-T96*0.02",
            "db-device-lstm-H256-B1-T150*0.02"})):
        result = json.loads((out / folder / "bench.json").read_text())
        rows = result["results"]
        assert {r["shape"] for r in rows} == shapes
        assert {r["impl"] for r in rows} >= {"cupy", "torch"}
        assert {r["mode"] for r in rows} == {"inference", "training"}
        assert all(r["us_per_step"] > 0 and r["tflops"] > 0 for r in rows)
        assert (out / folder / "bench.md").is_file()
    table = (out / "torch.md").read_text()
    assert table.count("| pass |") == 3 and "FAIL" not in table
    graphs = (out / "graphs.md").read_text().splitlines()
    rows = [line.split(" | ") for line in graphs if line.startswith("| lstm | 6x2x3x8")]
    assert [r[2] for r in rows] == ["inference", "training"]  # both paths ran and agreed
    assert all(float(r[3]) > 0 and float(r[4]) > 0 and r[6] == "0 |" for r in rows), rows


def test_without_a_gpu_it_says_so_and_exits_3(tmp_path, monkeypatch, capsys):
    for module in ("cupy", "torch"):  # as if neither were installed
        monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "results"
    assert main(["gpu-check", str(out)]) == gpu_check.EXIT_NO_GPU == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_status"] == 3 and summary["steps"] == []
    assert "CuPy is not installed" in summary["note"]
    assert "torch is not installed" in summary["note"]
    text = capsys.readouterr().out
    assert "exit status 3, no GPU here: nothing was run" in text and "pass" not in text


def test_a_cupy_without_torch_cuda_is_no_gpu_either(tmp_path):
    """CuPy finds a device (the stand-in) but torch has no CUDA: still exit 3, saying so."""
    done = _gpu_check(tmp_path / "results", env={"PYTHONPATH": f"{STAND_IN}{os.pathsep}"
                                                               f"{ROOT / 'tests'}"})
    assert done.returncode == 3, done.stdout + done.stderr
    note = json.loads((tmp_path / "results" / "summary.json").read_text())["note"]
    assert note == ("No GPU check was run: torch finds no CUDA device (a CPU-only build, or no "
                    "GPU).")


def test_an_unwritable_folder_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["gpu-check", str(blocker / "results"), "--emulate"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the results to {blocker / 'results'}" in err


@pytest.mark.parametrize("behaviour, status, result", [
    ("reports an error", 1, "fail"), (None, 4, "not run"), ("hangs", 1, "timeout")])
def test_each_steps_outcome_sets_the_exit_status(tmp_path, behaviour, status, result):
    """A sanitizer that reports an error fails the check; none on PATH leaves the steps not
    run (exit 4, not a pass); one that hangs is stopped at the budget."""
    env = _sanitizer(tmp_path, behaviour) if behaviour else {
        "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if not (Path(p) / "compute-sanitizer").exists())}
    out = tmp_path / "results"
    done = _gpu_check(out, "--emulate", "--steps", "racecheck,memcheck", "--budget", "8",
                      env=env)
    assert done.returncode == status, done.stdout + done.stderr
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["racecheck", "memcheck"]
    assert steps[0]["result"] == result
    if behaviour == "hangs":  # stopped when the 8 s ran out, which left none for the second
        assert 7.5 < steps[0]["seconds"] < 10 and steps[1]["result"] == "not run"
        assert steps[1]["why"] == "budget spent"


def _stand_in_env(**extra):
    return {"PYTHONPATH": f"{STAND_IN}{os.pathsep}{ROOT / 'tests'}", **extra}


def test_the_cuda_tests_run_on_the_device_path_when_asked(tmp_path):
    """FASTRNN_TEST_DEVICE=cupy: the same tests through CudaDevice (here on the CuPy stand-in),
    every one run; without CuPy they fail instead of skipping."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_cuda_emulated.py", "-k", "fused_kernel or registered or chunked"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=240,
                          env=os.environ | _stand_in_env(FASTRNN_TEST_DEVICE="cupy"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "26 passed" in done.stdout and "skipped" not in done.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "from cuda_emulation import emulated_backend as e; b = e(); "
         "print(type(b).__name__, type(b.inner.device).__name__, b.name)"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env=os.environ | _stand_in_env(FASTRNN_TEST_DEVICE="cupy"))
    assert probe.stdout.split() == ["DeviceBackend", "CountingDevice", "cupy-device"]
    missing = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=240,
                             env=os.environ | {"FASTRNN_TEST_DEVICE": "cupy"})
    assert missing.returncode != 0
    assert "CuPy cannot be imported" in missing.stdout + missing.stderr
    assert "skipped" not in missing.stdout


def _stand_in_cupy():
    spec = importlib.util.spec_from_file_location("cupy_stand_in",
                                                  STAND_IN / "cupy" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_versions_and_bandwidth_from_cupy():
    """CUDA 13's runtime has no memoryClockRate in the properties: the attribute is read.
    Peak = 2 transfers per clock x 2619 MHz x 5120 bits / 8 = 3352.32 GB/s."""
    assert [device.cuda_version_text(v) for v in (12080, 13000, 11080)] == [
        "12.8", "13.0", "11.8"]
    cupy = _stand_in_cupy()
    found = device.describe(cupy)
    assert found == {"cupy": "0.0+stand-in", "cuda_runtime": "12.8", "cuda_driver": "13.0",
                     "error": None, "devices": [{
                         "name": "Stand-in GPU", "compute_capability": "9.0",
                         "memory_bytes": 80 * 2 ** 30,
                         "peak_bandwidth_bytes_per_s": 3352.32e9}]}
    # A CUDA 12 runtime gives the clock in the properties; that value is the one used.
    props = cupy.cuda.runtime.getDeviceProperties(0) | {"memoryClockRate": 1_593_000}
    cupy.cuda.runtime.getDeviceProperties = lambda index: props
    assert device.peak_bandwidth(cupy, 0) == 2 * 1_593_000e3 * 5120 / 8


def test_info_names_cupy_and_the_cuda_runtime():
    done = subprocess.run([sys.executable, "-m", "fastrnn", "info"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=os.environ | _stand_in_env())
    assert done.returncode == 0, done.stderr
    assert "CuPy 0.0+stand-in: CUDA runtime 12.8, driver supports CUDA 13.0" in done.stdout
    assert ("Stand-in GPU: compute capability 9.0, 80 GiB, peak memory bandwidth 3352 GB/s"
            in done.stdout)


def test_weight_bytes_and_the_gpu_section_of_the_report():
    """Per call: W_hh (G*H, P) (+ W_hr (P, H)) in float32, T times, 2T in training."""
    shape = presets.Shape("s", 3, 2, 5, 4)
    assert presets.weight_bytes(Cell("lstm"), shape, "inference") == 16 * 4 * 4 * 3
    assert presets.weight_bytes(Cell("lstm"), shape, "training") == 16 * 4 * 4 * 3 * 2
    projected = Cell("lstm", variant=Variant(proj_size=2))
    assert presets.weight_bytes(projected, shape, "inference") == (16 * 2 + 2 * 4) * 4 * 3
    row = {"mode": "training", "cell": "lstm", "shape": "s", "T": 3, "B": 2, "I": 5, "H": 4,
           "label": "fastrnn cupy", "median_ms": 0.5, "us_per_step": 500 / 3, "tflops": 2e-3,
           "weight_bytes": 384, "bandwidth_fraction": 0.25, "flags": [], "host": False}
    lines = report._device_lines({"results": [row, row | {"host": True}],
                                  "device_bandwidth_bytes_per_s": 3.2e12})
    assert "(3200 GB/s from its memory clock and bus width)" in lines[3]
    assert lines[-1] == ("| training | lstm | s (3, 2, 5, 4) | fastrnn cupy | 0.5 | 167 "
                         "| 0.002 | 0.000384 | 25.0 |  |")
    assert len(lines) == 8  # the host row is not in it
    assert report._device_lines({"results": [row | {"host": True}]}) == []
    assert np.isclose(row["us_per_step"], 166.67, atol=0.01)


def test_graph_timing_fails_when_the_graph_path_disagrees(monkeypatch, capsys):
    """The graphs step's comparison can fail: results of the graph path off by a little more
    than the float32 tolerance make graph_timing exit 1 and mark the row; agreeing ones pass."""
    import fastrnn
    from cuda_emulation import make_backend
    from fastrnn.tools import graph_timing

    fastrnn.register_backend("graphs-under-test", make_backend())
    argv = ["--backend", "graphs-under-test", "--cells", "rnn_tanh", "--shapes", "3x2x3x4",
            "--rounds", "1"]
    try:
        assert graph_timing.main(argv) == 0
        call = graph_timing._call

        def off_on_the_graph(cell, backend, p, cot, mode):
            named = call(cell, backend, p, cot, mode)
            if backend.cuda_graphs:
                named = {k: v * (1 + 2e-4) + 2e-5 for k, v in named.items()}
            return named
        monkeypatch.setattr(graph_timing, "_call", off_on_the_graph)
        assert graph_timing.main(argv) == 1
    finally:
        fastrnn.dispatch.unregister_backend("graphs-under-test")
    out = capsys.readouterr()
    assert out.out.count(" FAIL |") == 2 and "2 case(s)" in out.err

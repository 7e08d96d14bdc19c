"""`fastrnn gpu-check OUT`: the prepared check of the CUDA backend on a machine with an NVIDIA
GPU, torch with CUDA and CuPy, in at most 8 minutes, with no network.

Steps, each with its own timeout and its output in its own file in OUT:

    info        `fastrnn info`: versions, CuPy and the CUDA runtime and driver, the GPU
    validate    `fastrnn validate --backends cupy`: every cell and variant, float32 and float64,
                against the NumPy reference (also validate.json)
    tests       the tests that run the CUDA backend through the CPU emulation, on the GPU
                instead (FASTRNN_TEST_DEVICE=cupy): tests/test_cuda_emulated.py,
                tests/test_cuda_variants.py, tests/test_cuda_graphs.py
    racecheck   one forward and backward per cell (fastrnn.tools.device_smoke) under
    memcheck    compute-sanitizer --tool racecheck / memcheck; not run without compute-sanitizer
    bench       `fastrnn bench --backends cupy` against torch.nn on CUDA (cuDNN) at the presets
                tiny ... xlarge, inference and training (bench/)
    deepbench   the same on DeepBench's training set with T scaled by 0.1 (bench-deepbench/)
    torch       fastrnn.torch on CUDA tensors (DLPack) against torch.nn
                (fastrnn.tools.torch_device_check)
    graphs      the CUDA Graph path against per-step launches: equal results, and the time of
                each (fastrnn.tools.graph_timing, graphs.md)

OUT/summary.txt and OUT/summary.json say pass, fail, timeout or not run per step, with its
time. Exit status: 0 every step passed; 1 a step failed, timed out or did not fit the budget;
2 a usage error (OUT not writable); 3 no GPU here (no CuPy, no CUDA device, or torch without
CUDA): nothing was run; 4 every step that ran passed, but a step could not run (no
compute-sanitizer).

``--emulate`` runs the same steps on the CPU, in a source checkout: the CUDA backend through the
emulation of tests/cuda_emulation (registered as "cupy" by ``cuda_emulation.as_cupy``), torch on
the CPU, tiny shapes, a few of the tests. It proves the check itself (its commands, flags and
files) where no GPU is; its figures mean nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fastrnn

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU, EXIT_INCOMPLETE = 0, 1, 2, 3, 4
EXIT_MEANING = {EXIT_PASSED: "every step passed",
                EXIT_FAILED: "a step failed, timed out or did not fit the budget",
                EXIT_USAGE: "usage error", EXIT_NO_GPU: "no GPU here: nothing was run",
                EXIT_INCOMPLETE: "every step that ran passed, but a step could not run"}
# The whole check's budget: 8 minutes less what starting and the summary take.
BUDGET_S = 470.0
ROOT = Path(fastrnn.__file__).resolve().parent.parent  # the source checkout, with tests/
CUDA_TESTS = ("tests/test_cuda_emulated.py", "tests/test_cuda_variants.py",
              "tests/test_cuda_graphs.py")
STEP_NAMES = ("info", "validate", "tests", "racecheck", "memcheck", "bench", "deepbench", "torch",
              "graphs")


@dataclass
class Step:
    """One step: ``python -m`` ``module`` (through ``cuda_emulation.as_cupy`` when emulating,
    if ``as_cupy``), after the ``tool`` prefix (compute-sanitizer), within ``timeout_s``."""

    name: str
    module: list
    timeout_s: float
    tool: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    as_cupy: bool = True

    def argv(self, emulate: bool) -> list:
        through = ["-m", "cuda_emulation.as_cupy"] if emulate and self.as_cupy else ["-m"]
        return self.tool + [sys.executable, *through, *self.module]


def plan(out: Path, emulate: bool) -> list:
    """The steps, sized for a GPU or, emulating, for a CPU."""
    if emulate:
        quick = ["--torch-device", "cpu", "--rounds", "1", "--warmup", "0", "--min-sample-ms",
                 "0", "--sgemm-size", "64", "--reference-budget", "0"]
        presets = ["--shapes", "6x2x8x8", *quick]
        deepbench = ["--shapes", "deepbench-device", "--t-scale", "0.02", *quick]
        tests = ["-k", "test_registered_by_name or test_one_fused_kernel_per_step"]
        torch = ["--device", "cpu", "--backend", "cupy"]
        graphs = ["--cells", "lstm", "--shapes", "6x2x3x8", "--rounds", "1"]
        test_env = {}
    else:
        presets = ["--shapes", "tiny,small,medium,large,xlarge", "--torch-device", "cuda",
                   "--rounds", "5", "--reference-max-gflop", "0.05",
                   "--reference-budget", "0.5"]
        deepbench = ["--shapes", "deepbench-train", "--t-scale", "0.1", "--torch-device",
                     "cuda", "--rounds", "3", "--reference-max-gflop", "0"]
        tests, torch, graphs = [], ["--device", "cuda"], []
        test_env = {"FASTRNN_TEST_DEVICE": "cupy"}
    bench = ["fastrnn", "bench", "--backends", "cupy", "--peers", "torch", "--modes",
             "inference,training", "--retry-budget", "0", "--no-progress"]
    smoke = ["fastrnn.tools.device_smoke", "--backend", "cupy"]
    steps = [
        Step("info", ["fastrnn", "info"], 20),
        Step("validate", ["fastrnn", "validate", "--backends", "cupy", "--dtypes",
                          "float32,float64", "--json", str(out / "validate.json")],
             65),
        Step("tests", ["pytest", *CUDA_TESTS, "-q", "-rs", "-p", "no:cacheprovider", *tests],
             115, env={"HYPOTHESIS_PROFILE": "dev", **test_env}, as_cupy=False),
        Step("racecheck", smoke, 40, tool=["compute-sanitizer", "--tool", "racecheck",
                                           "--error-exitcode", "1"]),
        Step("memcheck", smoke, 40, tool=["compute-sanitizer", "--tool", "memcheck",
                                          "--error-exitcode", "1"]),
        Step("bench", [*bench, *presets, "--out", str(out / "bench")], 65),
        Step("deepbench", [*bench, *deepbench, "--out", str(out / "bench-deepbench")], 60),
        Step("torch", ["fastrnn.tools.torch_device_check", *torch, "--out",
                       str(out / "torch.md")], 30),
        Step("graphs", ["fastrnn.tools.graph_timing", "--backend", "cupy", *graphs, "--out",
                        str(out / "graphs.md")], 35),
    ]
    assert tuple(s.name for s in steps) == STEP_NAMES
    return steps


def missing_gpu() -> list:
    """Why the GPU check cannot run here (empty when it can): CuPy, a CUDA device, torch CUDA."""
    import importlib.util

    reasons = []
    if importlib.util.find_spec("cupy") is None:
        reasons.append("CuPy is not installed (pip install 'fastrnn[cuda12]' or "
                       "'fastrnn[cuda13]')")
    else:
        from ..backends.cupy_cuda import device

        try:
            found = device.describe()
        except (ImportError, OSError) as exc:
            found = {"error": f"CuPy cannot be imported: {exc}", "devices": []}
        if found["error"] or not found["devices"]:
            reasons.append(f"CuPy finds no CUDA device ({found['error'] or 'none'})")
    if importlib.util.find_spec("torch") is None:
        reasons.append("torch is not installed")
    else:
        import torch

        if not torch.cuda.is_available():
            reasons.append("torch finds no CUDA device (a CPU-only build, or no GPU)")
    return reasons


def _run(step: Step, out: Path, emulate: bool, timeout_s: float) -> dict:
    """Run one step into OUT/<name>.txt; its result: pass, fail, timeout or not run."""
    log = out / f"{step.name}.txt"
    record = {"step": step.name, "output": log.name, "seconds": 0.0}
    if step.tool and shutil.which(step.tool[0]) is None:
        log.write_text(f"not run: {step.tool[0]} is not on PATH\n")
        return record | {"result": "not run", "why": f"{step.tool[0]} not found"}
    if timeout_s < 5:
        log.write_text("not run: the check's time budget is spent\n")
        return record | {"result": "not run", "why": "budget spent", "counts_as_failure": True}
    argv = step.argv(emulate)
    env = os.environ | step.env
    if emulate:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"),
                                                          env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with log.open("w") as f:
        f.write(f"$ {' '.join(argv)}  (timeout {timeout_s:.0f} s)\n")
        f.flush()
        process = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout_s)
            result = "pass" if code == 0 else "fail"
            why = "" if code == 0 else f"exit status {code}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the step and whatever it started
            process.wait()
            result, why = "timeout", f"stopped after {timeout_s:.0f} s"
            f.write(f"\ngpu-check: {why}\n")
    return record | {"result": result, "why": why,
                     "seconds": round(time.perf_counter() - start, 1)}


def _summary(records, status, mode, note="") -> str:
    lines = [f"fastrnn gpu-check ({mode}): exit status {status}, {EXIT_MEANING[status]}"]
    if note:
        lines.append(note)
    lines += ["", f"{'step':<10} {'result':<8} {'seconds':>7}  output / why"]
    lines += [f"{r['step']:<10} {r['result']:<8} {r['seconds']:>7.1f}  {r['output']}"
              + (f" ({r['why']})" if r.get("why") else "") for r in records]
    return "\n".join(lines) + "\n"


def _write_summary(out: Path, records, status, mode, note="") -> str:
    text = _summary(records, status, mode, note)
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps(
        {"mode": mode, "exit_status": status, "meaning": EXIT_MEANING[status], "note": note,
         "steps": records}, indent=1) + "\n")
    return text


def add_parser(subparsers, name_list):
    """The `fastrnn gpu-check` subcommand; ``name_list`` is cli.NameList (for --steps)."""
    g = subparsers.add_parser(
        "gpu-check", help="the prepared check of the CUDA backend on an NVIDIA GPU",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Exit status: " + "; ".join(f"{k} {v}" for k, v in EXIT_MEANING.items()) + ".")
    g.add_argument("out", help="folder for the results (created; one file per step, "
                   "summary.txt and summary.json)")
    g.add_argument("--emulate", action="store_true",
                   help="run the steps on the CPU through the emulation of the CUDA backend "
                   "(a source checkout's tests/cuda_emulation) with tiny shapes: checks the "
                   "check, measures nothing")
    g.add_argument("--steps", default=None, action=name_list, valid=STEP_NAMES,
                   help=f"run only these, comma-separated among {', '.join(STEP_NAMES)}")
    g.add_argument("--budget", type=float, default=BUDGET_S,
                   help="seconds for all the steps (default %(default)s)")


def run(out_dir, emulate=False, budget_s=BUDGET_S, only=None) -> int:
    """Run the check into ``out_dir``; returns the exit status. ``only``: step names to run."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.txt").write_text("fastrnn gpu-check: running\n")
    except OSError as exc:
        print(f"fastrnn gpu-check: error: cannot write the results to {out}: {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    mode = "emulation on the CPU" if emulate else "GPU"
    if emulate and not (ROOT / "tests" / "cuda_emulation").is_dir():
        print(f"fastrnn gpu-check: error: --emulate needs a source checkout with "
              f"tests/cuda_emulation; {ROOT} has none", file=sys.stderr)
        return EXIT_USAGE
    if not emulate:
        reasons = missing_gpu()
        if reasons:
            note = "No GPU check was run: " + "; ".join(reasons) + "."
            sys.stdout.write(_write_summary(out, [], EXIT_NO_GPU, mode, note))
            return EXIT_NO_GPU
    steps = plan(out, emulate)
    if only:
        steps = [s for s in steps if s.name in only]
    deadline = time.perf_counter() + budget_s
    records = []
    for step in steps:
        timeout_s = min(step.timeout_s, deadline - time.perf_counter())
        print(f"gpu-check: {step.name} ...", flush=True)
        records.append(_run(step, out, emulate, timeout_s))
        print(f"gpu-check: {step.name} {records[-1]['result']} "
              f"({records[-1]['seconds']:.1f} s)", flush=True)
    failed = any(r["result"] in ("fail", "timeout") or r.get("counts_as_failure")
                 for r in records)
    status = (EXIT_FAILED if failed else
              EXIT_INCOMPLETE if any(r["result"] == "not run" for r in records) else
              EXIT_PASSED)
    sys.stdout.write(_write_summary(out, records, status, mode))
    return status

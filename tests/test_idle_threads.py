"""The Numba backend starts the thread pools beside it with idle threads that sleep
(backends/numba_cpu/threads.py), whichever of torch and fastrnn a process imports first, and
leaves a user's process otherwise as it was: environment, thread counts, explicit settings.

Each case runs in a fresh interpreter: libgomp reads its settings once, when it loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

from fastrnn.backends.numba_cpu import threads  # noqa: E402

# Prints one JSON line: what the process looked like before and after fastrnn's calls, and the
# states of its threads right after a run of multithreaded NumPy products.
SCRIPT = textwrap.dedent("""
    import json, os, sys, threading, time
    if sys.argv[1] == "torch-first":
        import torch
    import numpy as np
    from threadpoolctl import threadpool_info
    import fastrnn
    from fastrnn.tools import runners
    from fastrnn.cells import cell_by_name

    env_before = dict(os.environ)
    counts_before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    cell = cell_by_name("gru")
    p = runners.make_params(cell, 20, 8, 64, 64, np.float32)  # parallel: 2M multiply-adds
    for mode in ("inference", "training"):
        runners.fastrnn_runner("numba", cell, p, mode)[0]()
    if sys.argv[1] == "torch-after":
        import torch
    torch.nn.Linear(256, 256)(torch.randn(512, 256)).sum().backward()
    counts_after = {i["filepath"]: i["num_threads"] for i in threadpool_info()}

    def running_threads():
        me, running = threading.get_native_id(), []
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if int(tid) != me and state == "R":
                running.append(tid)
        return running

    time.sleep(0.5)  # every pool asleep
    a = np.ones((512, 512), np.float32)
    for _ in range(3):
        a @ a
    # Idle OpenBLAS workers sleep after 2^19 cycles (0.2 ms) now, after 2^28 (0.1 s) before:
    # look from 20 to 60 ms after the products for a moment when none runs.
    time.sleep(0.02)
    busy = running_threads()
    for _ in range(8):
        if not busy:
            break
        time.sleep(0.005)
        busy = running_threads()
    from fastrnn.backends.numba_cpu import threads
    print(json.dumps({
        "env_changed": sorted(k for k in set(env_before) | set(os.environ)
                              if env_before.get(k) != os.environ.get(k)),
        "counts_before": counts_before, "counts_after": counts_after,
        "layer": threads.start_numba_threads(), "timeouts": threads.openblas_timeouts(),
        "openblas": [i["filepath"] for i in threadpool_info()
                     if i["internal_api"] == "openblas" and i["threading_layer"] == "pthreads"],
        "running_after_products": busy}))
""")


def _run(order, **env):
    pytest.importorskip("torch")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT",
                          "GOTO_THREAD_TIMEOUT", "OMP_DISPLAY_ENV")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, order], capture_output=True, text=True,
                         timeout=300, env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env})
    assert out.returncode == 0, out.stderr
    spincounts = [line.split("=")[1].strip().strip("'") for line in out.stderr.splitlines()
                  if line.strip().startswith("GOMP_SPINCOUNT")]
    return json.loads(out.stdout.strip().splitlines()[-1]), spincounts


@pytest.mark.parametrize("order", ["torch-first", "torch-after"])
def test_idle_threads_sleep_and_the_process_is_left_as_it_was(order):
    report, spincounts = _run(order)
    assert report["layer"] == "omp"
    if order == "torch-after":
        # one OpenMP runtime, loaded by Numba's pool with a short spin; torch shares it
        assert spincounts == [str(threads.OPENMP_IDLE_SPINS)]
    else:
        # torch's own runtime loaded first keeps its settings (libgomp's default spin count);
        # Numba's pool binds to it
        assert spincounts[0] == "300000"
    assert report["openblas"], "NumPy's OpenBLAS runs a pthreads pool in these tests"
    assert {report["timeouts"][path] for path in report["openblas"]} \
        == {threads.OPENBLAS_IDLE_TIMEOUT}
    assert report["running_after_products"] == []
    assert report["env_changed"] == []
    assert {k: report["counts_after"][k] for k in report["counts_before"]} \
        == report["counts_before"]


def test_a_users_own_settings_win():
    report, spincounts = _run("torch-after", OMP_WAIT_POLICY="ACTIVE",
                              OPENBLAS_THREAD_TIMEOUT="28")
    assert spincounts == ["30000000000"]  # libgomp's ACTIVE spin count: untouched
    assert {report["timeouts"][path] for path in report["openblas"]} == {28}
    assert report["running_after_products"] != []  # OpenBLAS's workers spin, as asked
    assert report["env_changed"] == []

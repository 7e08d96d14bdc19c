"""What this machine has and how `fastrnn bench` sets it: cores, installed versions, the thread
count of every runtime, and the sgemm peak that GFLOP/s are measured against. Idle threads are
as in any user's process: the Numba backend puts them to sleep when it starts
(backends/numba_cpu/threads.py)."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from typing import Optional

import numpy as np


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution``, or None."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


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
            before_numba = getattr(fastrnn, "get_num_threads", numba.get_num_threads)()
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


def device_bandwidth(impls) -> Optional[float]:
    """The current GPU's peak memory bandwidth in bytes/s (through CuPy, in the backend's
    device.py) when an implementation computes on a GPU and CuPy can read it; else None."""
    import importlib.util

    if all(i.host for i in impls) or importlib.util.find_spec("cupy") is None:
        return None
    from ..backends.cupy_cuda import device

    return device.current_peak_bandwidth()


def machine_info(threads: int) -> dict:
    """The CPU, cores, ``threads``, Python and platform, for the report."""
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
            "python": platform.python_version(), "platform": platform.platform()}


def load_average():
    """The 1-minute load average, or None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None

"""What the Numba backend's tests share: the knobs that force each way a call can split over
threads, and a block run on a given number of Numba threads. Imported only by modules that
checked that the backend runs (it imports Numba)."""

from __future__ import annotations

import numba

NEVER = 1 << 62

# Every way the backend can split a call; the tests' shapes are small, so each split is forced.
# Threaded splits also split every GEMM above the recurrence (matmul) over the threads.
SPLITS = {
    "serial": dict(parallel_min_work=NEVER, matmul_min_work=NEVER),
    "rows": dict(parallel_min_work=0, unit_split_min=NEVER, few_rows_unit_split_min=NEVER,
                 matmul_min_work=0),
    "units": dict(parallel_min_work=0, unit_split_min=0, matmul_min_work=0),
}


def knob_setter(monkeypatch, backend, paths):
    """set_path(name): the knobs of ``paths[name]`` on ``backend`` for the test."""
    def set_path(name):
        for key, value in paths[name].items():
            monkeypatch.setattr(backend, key, value)
    return set_path


class numba_threads:
    """Run the block with n Numba threads (capped at NUMBA_NUM_THREADS)."""

    def __init__(self, n):
        self.n = min(n, numba.config.NUMBA_NUM_THREADS)

    def __enter__(self):
        self.old = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.old)
        return False

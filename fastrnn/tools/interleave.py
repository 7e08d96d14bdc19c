"""Side-by-side timing for the benchmark scripts in benchmarks/: every callable in one process,
in interleaved rounds, so that load from elsewhere hits all of them alike."""

from __future__ import annotations

import time

import numpy as np


def calls_per_sample(call, min_sample_s: float) -> int:
    """How many calls make a sample of at least ``min_sample_s`` (after one warm-up call)."""
    call()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        if time.perf_counter() - t0 >= min_sample_s:
            return n
        n *= 2


def interleaved(calls: dict, rounds: int = 7, min_sample_s: float = 0.005) -> dict:
    """name -> array of ``rounds`` samples, seconds per call. Round r times every callable once,
    starting from a different one each round."""
    names = list(calls)
    number = {n: calls_per_sample(calls[n], min_sample_s) for n in names}
    samples = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            call, k = calls[n], number[n]
            t0 = time.perf_counter()
            for _ in range(k):
                call()
            samples[n].append((time.perf_counter() - t0) / k)
    return {n: np.array(s) for n, s in samples.items()}


def read_bandwidth(nbytes: int, seconds: float = 0.2) -> float:
    """GB/s of one thread's streaming read of ``nbytes`` (the L2 cache, the L3 cache or memory,
    by size): a float32 dot product of two arrays of half that size each on one BLAS thread (a
    vectorised loop that does nothing but read), the best of repeated ones."""
    from threadpoolctl import threadpool_limits

    n = max(1, nbytes // 8)
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)
    best, t_end = float("inf"), time.perf_counter() + seconds
    with threadpool_limits(1):
        np.dot(a, b)
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            np.dot(a, b)
            best = min(best, time.perf_counter() - t0)
    return (a.nbytes + b.nbytes) / best / 1e9

"""Idle threads that sleep soon: the thread pools that fastrnn's calls share the cores with.

A training loop interleaves fastrnn's calls with torch work and NumPy products on the same
cores. Two kinds of idle threads would spin over that work:

- libgomp's (GNU OpenMP's) workers, which run Numba's parallel loops, spin 300,000 rounds (5-10
  ms here) after each parallel region before they sleep;
- OpenBLAS's own pthreads workers (NumPy's, SciPy's) spin 2^28 TSC cycles (0.1 s) after each
  multithreaded product.

A spinning thread keeps a core that the next library's threads need: on 2 cores a NumPy product
right after a fastrnn call, or a fastrnn call right after a NumPy product, took 1.1-2.4x as
long, and on a busy machine many times that (benchmarks/interference.py measures every pair).
Idle threads that sleep at once cost a wake-up at the next parallel region instead, which a
library pays many times per call (torch's Linear forward and backward runs several regions, a
fastrnn call two or three). So the Numba backend, when it starts, lets both kinds spin about
0.25 ms: long enough that the regions and products of one call, and calls back to back, find
them awake; short enough that they leave the cores to the next library's work.

- ``start_numba_threads``: Numba's OpenMP pool starts with GOMP_SPINCOUNT (``OPENMP_IDLE_SPINS``)
  in the environment, which libgomp reads once, when it loads; the variable is removed again at
  once. torch shares that runtime when imported later: its libgomp has the same soname, so the
  loader reuses the one loaded. When torch was imported first, Numba's pool binds to torch's
  libgomp, loaded and configured already: the two share one pool, whose idle policy is torch's.
- ``quiet_openblas``: each OpenBLAS with a pthreads pool gets a short idle timeout
  (``OPENBLAS_IDLE_TIMEOUT``), the setting OPENBLAS_THREAD_TIMEOUT makes at load: OpenBLAS
  re-reads its environment (``openblas_read_env``) and restarts its pool, which reads the
  timeout when it starts. This happens once per library, when the backend starts; a product
  running on another Python thread at that moment would see its pool restart under it.

A user's own OMP_WAIT_POLICY, GOMP_SPINCOUNT or OPENBLAS_THREAD_TIMEOUT wins: nothing is changed
where one is set. Thread counts are left as they are.
"""

from __future__ import annotations

import os
import threading

# libgomp's idle workers sleep after this many spin rounds: about 0.25 ms here (300,000 rounds
# spun 5-10 ms of CPU time after a call; 100,000 spun 2.5 ms).
OPENMP_IDLE_SPINS = 10000

# OpenBLAS's idle workers sleep after 2^19 TSC cycles: 0.2 ms at 2.6 GHz.
OPENBLAS_IDLE_TIMEOUT = 19

OPENMP_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
OPENBLAS_SETTINGS = ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")

_lock = threading.Lock()
_quieted = set()  # paths of the OpenBLAS libraries given the short timeout


def _with_environment(env, fn):
    """fn() with ``env`` added to os.environ (and so to the C environment), then removed."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return fn()
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def start_numba_threads():
    """Start Numba's thread pool (once) with idle OpenMP threads that sleep soon. Returns
    Numba's threading layer ("omp", "tbb" or "workqueue")."""
    from numba.np.ufunc import parallel

    with _lock:
        if not parallel._is_initialized:
            user_set = any(k in os.environ for k in OPENMP_SETTINGS)
            env = {} if user_set else {"GOMP_SPINCOUNT": str(OPENMP_IDLE_SPINS)}
            _with_environment(env, parallel._launch_threads)
    return parallel.threading_layer()


def quiet_openblas():
    """Give every OpenBLAS loaded so far (NumPy's, SciPy's) that runs its own pthreads pool the
    short idle timeout, once per library. Returns the paths of the libraries that have it."""
    if any(k in os.environ for k in OPENBLAS_SETTINGS):
        return set(_quieted)
    import scipy.linalg.cython_blas  # noqa: F401  (SciPy's BLAS, which np.dot in Numba calls)
    from threadpoolctl import ThreadpoolController

    with _lock:
        for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
            if lib.filepath in _quieted or lib.threading_layer != "pthreads":
                continue
            try:
                read_env = lib.dynlib.openblas_read_env
                stop, start = lib.dynlib.blas_thread_shutdown_, lib.dynlib.blas_thread_init
            except AttributeError:  # an OpenBLAS without these entry points: left as it is
                continue
            _with_environment({"OPENBLAS_THREAD_TIMEOUT": str(OPENBLAS_IDLE_TIMEOUT)}, read_env)
            stop()
            start()
            _quieted.add(lib.filepath)
        return set(_quieted)


def openblas_timeouts():
    """{path: the idle timeout (log2 of TSC cycles) each loaded OpenBLAS read from its
    environment, 0 for its built-in 2^28}, for the OpenBLAS libraries that say."""
    from threadpoolctl import ThreadpoolController

    timeouts = {}
    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        read = getattr(lib.dynlib, "openblas_thread_timeout", None)
        if read is not None:
            timeouts[lib.filepath] = int(read())
    return timeouts


def start():
    """What the Numba backend runs before its first call: both of the above."""
    layer = start_numba_threads()
    quiet_openblas()
    return layer

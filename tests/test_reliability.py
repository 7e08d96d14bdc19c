"""Reliability: bounds, non-finite values, threads, determinism, memory and very long sequences.

Every test runs on each backend that can run here (see conftest.py) unless it says otherwise:
- the Numba kernels, compiled with NUMBA_BOUNDSCHECK=1 in a separate process and cache, never
  index out of bounds over the edge-case grid and still give the reference's results;
- NaN and Inf propagate exactly as in the reference; inputs of magnitude 1e4 raise no
  floating-point error and give finite results;
- four threads calling forward and backward at once get the serial results, bit for bit;
- repeated calls, and two separate processes, give bitwise identical results;
- 2,000 forward+backward calls keep the resident memory flat; backward frees what forward kept;
  ``fastrnn.training_memory`` predicts what a fused backend's training forward keeps (to the
  byte, up to one int64 per batch row and direction of bookkeeping);
- an LSTM runs forward and backward over T = 10,000, and an inference forward over T = 100,000
  needs no memory that grows with T beyond its output.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import types
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastrnn
from fastrnn.backends.base import Backend
from fastrnn.cells import ALL_CELLS, Cell
from helpers import BACKWARD, FORWARD, make_cotangents, make_problem, run, variant_kwargs
from test_properties import assert_unchanged, chunking, expect_close, flat, make_layer
from test_properties import snapshot

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
DTYPES = (np.float32, np.float64)
LSTM = Cell("lstm")


def cell_id(cell):
    return cell.name


def all_arrays(outs, grads):
    return {**{f"out {k}": v for k, v in outs.items()},
            **{f"grad {k}": v for k, v in grads.items()}}


def assert_bitwise_equal(a: dict, b: dict, label):
    assert set(a) == set(b), label
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (label, k)
        bits = [np.ascontiguousarray(v).view(np.uint8) for v in (a[k], b[k])]
        assert np.array_equal(*bits), f"{label}: {k} differs"


# ----------------------------------------------------------------------------------------------
# Bounds: the Numba kernels under NUMBA_BOUNDSCHECK=1


BOUNDS_SCRIPT = textwrap.dedent("""
    import sys
    import numba
    import numpy as np

    assert numba.config.BOUNDSCHECK == 1, numba.config.BOUNDSCHECK

    @numba.njit
    def probe(a, i):
        return a[i]

    try:
        probe(np.zeros(2), 5)
    except IndexError:
        pass
    else:
        sys.exit("NUMBA_BOUNDSCHECK=1 did not turn bounds checking on")

    sys.path.insert(0, sys.argv[1])
    import fastrnn
    from fastrnn.cells import ALL_CELLS
    from helpers import FORWARD, assert_close, make_cotangents, make_problem, run
    from helpers import variant_kwargs
    from test_properties import flat, make_layer

    # (T, B, I, H): every size 1, single steps, single rows, wide and narrow layers
    GRID = [(1, 1, 1, 1), (1, 3, 2, 5), (6, 1, 1, 1), (4, 3, 2, 1), (5, 4, 3, 2), (3, 2, 7, 6)]
    backend = fastrnn.get_backend("numba")
    checked = 0
    for cell in ALL_CELLS:
        for dtype in (np.float32,):  # the float64 kernels index the same way
            for T, B, I, H in GRID:
                for lengths in (False, True):
                    p = make_problem(cell, T, B, I, H, dtype, seed=T * B + I, lengths=lengths)
                    cot = make_cotangents(cell, T, B, H, dtype)
                    for reverse in (False, True):
                        label = f"{cell.name} {dtype.__name__} {(T, B, I, H)} {lengths} {reverse}"
                        got = run(cell, p, cot, "numba", reverse)
                        want = run(cell, p, cot, "numpy", reverse)
                        for g, w in zip(got, want):
                            assert_close(g, w, dtype, label)
                        # inference, one step per chunk, so lengths reach the kernels as 0..1
                        kw = dict(**p, **variant_kwargs(cell), reverse=reverse, training=False)
                        backend.chunk_elements = 1
                        try:
                            out = FORWARD[cell.kind](**kw, backend="numba")
                        finally:
                            del backend.chunk_elements
                        ref = FORWARD[cell.kind](**kw, backend="numpy")
                        assert_close(dict(enumerate(out[:-1])), dict(enumerate(ref[:-1])),
                                     dtype, label + " chunked inference")
                        checked += 1
            # two layers, both directions: the kernels see views into wider arrays
            T, B, I, H = 4, 3, 2, 3
            lengths = [4, 1, 3]
            rng = np.random.default_rng(1)
            x = rng.standard_normal((T, B, I)).astype(dtype)
            dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
            results = []
            for name in ("numba", "numpy"):
                layer = make_layer(cell, I, H, 2, bidirectional=True, dtype=dtype, backend=name)
                out = flat("out", layer(x, None, lengths))
                out.update(flat("d", layer.backward(dy)))
                out.update(layer.grads)
                results.append(out)
            assert_close(results[0], results[1], dtype, f"{cell.name} bidirectional layers")
    print("checked", checked)
""")


def test_numba_kernels_stay_in_bounds(request, tmp_path):
    """NUMBA_BOUNDSCHECK=1 turns every out-of-bounds index in a kernel into an IndexError. The
    kernels compile into a cache directory of their own (pytest's cache, else a temporary one),
    so no kernel cached without bounds checks is reused, and a second run skips the compiling."""
    if "numba" not in fastrnn.available_backends():
        pytest.skip("the numba backend cannot run here")
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("numba-boundscheck") if cache is not None else tmp_path
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("FASTRNN_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", BOUNDS_SCRIPT, TESTS_DIR], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    assert proc.stdout.split()[-1] == str(len(ALL_CELLS) * 6 * 2 * 2)


# ----------------------------------------------------------------------------------------------
# Non-finite values


def inject(p, cot, where, value, rng):
    """Put ``value`` into one element of the input named by ``where`` (in place, on copies)."""
    if where == "padding":  # a step past the sequence's length: must not reach y or h_n
        b = int(np.argmin(p["lengths"]))
        t = int(rng.integers(p["lengths"][b], p["x"].shape[0]))
        p["x"][t, b, rng.integers(p["x"].shape[2])] = value
        return
    a = cot[where] if where in cot else p[where if where != "x valid" else "x"]
    if where == "x valid":  # inside the sequence of a row whose sequence is short
        b = int(np.argmin(p["lengths"]))
        a[rng.integers(p["lengths"][b]), b, rng.integers(a.shape[2])] = value
        return
    a[tuple(rng.integers(n) for n in a.shape)] = value


NONFINITE_PLACES = ["x", "h0", "c0", "W_ih", "W_hh", "b_hh", "dy", "dh_n", "x valid", "padding"]


@pytest.mark.parametrize("where", NONFINITE_PLACES)
@pytest.mark.parametrize("cell", ALL_CELLS, ids=cell_id)
def test_nan_and_inf_propagate_as_in_reference(backend_target, cell, where):
    if where == "c0" and not cell.has_cell_state:
        pytest.skip("c0 is the LSTM's")
    with_lengths = where in ("x valid", "padding")
    for dtype in DTYPES:
        for k, value in enumerate((np.nan, np.inf, -np.inf)):
            rng = np.random.default_rng(k)
            T, B, I, H = 6, 3, 3, 4
            p = make_problem(cell, T, B, I, H, dtype, seed=k, lengths=with_lengths)
            if with_lengths:
                p["lengths"][1] = 2  # a short sequence, so there is padding
            cot = make_cotangents(cell, T, B, H, dtype, seed=k)
            inject(p, cot, where, value, rng)
            before = snapshot({**p, **cot})
            with np.errstate(all="ignore"):  # NaN and Inf are the point here
                got = run(cell, p, cot, backend_target.backend)
                want = run(cell, p, cot, "numpy")
            label = f"{backend_target} {cell.name} {value} in {where} {dtype.__name__}"
            expect_close(all_arrays(*got), all_arrays(*want), dtype, label)
            assert_unchanged({**p, **cot}, before)
            if where == "padding":  # padding reaches nothing: as if it were finite
                with np.errstate(all="ignore"):
                    clean = run(cell, {**p, "x": np.nan_to_num(p["x"])}, cot,
                                backend_target.backend)
                expect_close(all_arrays(*got), all_arrays(*clean), dtype, label)


@pytest.mark.parametrize("cell", ALL_CELLS, ids=cell_id)
def test_large_inputs_give_finite_results_without_fp_errors(backend_target, cell):
    """|x|, |h0|, |c0| ~ 1e4 saturate the gates: no overflow, invalid operation or division by
    zero anywhere (underflow to 0 is the right answer of a saturated sigmoid), finite results."""
    for dtype in DTYPES:
        p = make_problem(cell, 6, 3, 4, 5, dtype, seed=3)
        for name in ("x", "h0", "c0"):
            if name in p:
                p[name] = (np.sign(p[name]) * 1e4).astype(dtype)
        cot = make_cotangents(cell, 6, 3, 5, dtype)
        with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise",
                                                    divide="raise", under="ignore"):
            warnings.simplefilter("error")
            got = run(cell, p, cot, backend_target.backend)
            want = run(cell, p, cot, "numpy")
        label = f"{backend_target} {cell.name} {dtype.__name__}"
        for name, a in all_arrays(*got).items():
            assert np.isfinite(a).all(), f"{label}: {name} not finite"
        expect_close(all_arrays(*got), all_arrays(*want), dtype, label)


# ----------------------------------------------------------------------------------------------
# Threads


def functional_job(backend, i):
    """Forward and backward of problem ``i`` (a different cell, dtype and data for each i)."""
    cell = ALL_CELLS[i % len(ALL_CELLS)]
    dtype = DTYPES[i % 2]
    p = make_problem(cell, 24, 3, 8, 16, dtype, seed=100 + i, lengths=i % 2 == 1)
    cot = make_cotangents(cell, 24, 3, 16, dtype, seed=200 + i)
    return lambda: all_arrays(*run(cell, p, cot, backend, reverse=i == 2))


def layer_job(backend, i):
    cell = ALL_CELLS[i % len(ALL_CELLS)]
    dtype = DTYPES[i % 2]
    layer = make_layer(cell, 8, 16, num_layers=2, bidirectional=i % 2 == 0, dtype=dtype,
                       backend=backend, seed=i)
    rng = np.random.default_rng(300 + i)
    x = rng.standard_normal((24, 3, 8)).astype(dtype)
    dy = rng.standard_normal((24, 3, layer.num_directions * 16)).astype(dtype)

    def job():
        layer.zero_grad()
        out = flat("out", layer(x, None, [24, 7, 13]))
        out.update(flat("d", layer.backward(dy)))
        out.update({f"grads[{n}]": g.copy() for n, g in layer.grads.items()})
        return out
    return job


JOBS = {"functional": functional_job, "layers": layer_job}


def test_four_threads_get_the_serial_results(backend_target, api_level):
    jobs = [JOBS[api_level](backend_target.backend, i) for i in range(4)]
    serial = [job() for job in jobs]
    start = threading.Barrier(4)

    def worker(i):
        start.wait()  # all four call at once
        return [jobs[i]() for _ in range(6)]

    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(worker, range(4)))
    for i, results in enumerate(threaded):
        for r in results:
            assert_bitwise_equal(r, serial[i], f"{backend_target} thread {i}")


# ----------------------------------------------------------------------------------------------
# Determinism


def digest_runs(backend, api_level):
    """sha256 of every output and gradient of all jobs, as hex."""
    h = hashlib.sha256()
    for i in range(len(ALL_CELLS)):
        results = JOBS[api_level](backend, i)()
        for k in sorted(results):
            h.update(k.encode())
            h.update(np.ascontiguousarray(results[k]).tobytes())
    return h.hexdigest()


def backend_named(target):
    """What ``backend=`` takes for the backend target named ``target``, in a fresh process."""
    if target == "cuda-emulated":
        from cuda_emulation import emulated_backend
        return emulated_backend()
    return target


# Runs ``function`` of this module on (backend, api level) in a fresh interpreter and prints
# its result: argv is the tests' folder, the function, the target's name, the API level.
FRESH_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import test_reliability
    function = getattr(test_reliability, sys.argv[2])
    print(json.dumps(function(test_reliability.backend_named(sys.argv[3]), sys.argv[4])))
""")


def test_repeated_calls_are_bitwise_identical(backend_target, api_level):
    jobs = [JOBS[api_level](backend_target.backend, i) for i in range(len(ALL_CELLS))]
    for job in jobs:
        first = job()
        for _ in range(2):
            assert_bitwise_equal(job(), first, f"{backend_target} repeated call")


def test_two_processes_give_bitwise_identical_results(backend_target, api_level):
    """Two fresh interpreters with the same thread counts compute the same bits."""
    threads = str(min(2, os.cpu_count() or 1))
    env = dict(os.environ, NUMBA_NUM_THREADS=threads, OMP_NUM_THREADS=threads,
               OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.pop("FASTRNN_BACKEND", None)
    cmd = [sys.executable, "-c", FRESH_SCRIPT, TESTS_DIR, "digest_runs", backend_target.name,
           api_level]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    digests = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    assert len(digests[0]) == 64 and digests[0] == digests[1], digests


# ----------------------------------------------------------------------------------------------
# Memory


def reachable_arrays(root):
    """Every NumPy array reachable from ``root`` through containers and instance attributes
    (not through backends, modules, classes or functions, which are shared, not per call)."""
    seen, found, stack = set(), {}, [root]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            found[id(o)] = o
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (Backend, types.ModuleType, type, types.FunctionType,
                            types.MethodType, np.random.Generator, str, bytes)):
            continue
        elif hasattr(o, "__dict__"):
            stack.extend(vars(o).values())
    return list(found.values())


def buffer_of(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def kept_bytes(arrays, exclude):
    """Bytes of the distinct buffers behind ``arrays`` that share no memory with ``exclude``."""
    buffers = {}
    for a in arrays:
        if not any(np.may_share_memory(a, e) for e in exclude):
            b = buffer_of(a)
            buffers[id(b)] = b.nbytes
    return sum(buffers.values())


def training_step(api_level, backend, cell, T, B, I, H, dtype):
    """A closure running one forward+backward of one layer, functional or as a layer."""
    p = make_problem(cell, T, B, I, H, dtype, lengths=True)
    cot = make_cotangents(cell, T, B, H, dtype)
    if api_level == "functional":
        return lambda: run(cell, p, cot, backend)
    layer = make_layer(cell, I, H, dtype=dtype, backend=backend)
    hx = (p["h0"][None], p["c0"][None]) if cell.has_cell_state else p["h0"][None]
    dh_n = (cot["dh_n"][None], cot["dc_n"][None]) if cell.has_cell_state else cot["dh_n"][None]

    def step():
        layer(p["x"], hx, p["lengths"])
        return layer.backward(cot["dy"], dh_n)
    return step


def rss_of_2000_training_calls(backend, api_level):
    """The process's RSS after 200 warm-up training calls and after 2,000 more, and the bytes
    one call's forward keeps for its backward."""
    import psutil

    proc = psutil.Process()
    T, B, I, H, dtype = 2, 64, 8, 32, np.float64  # few steps: few kernel launches per call
    step = training_step(api_level, backend, LSTM, T, B, I, H, dtype)
    for _ in range(200):
        step()
    gc.collect()
    rss0 = proc.memory_info().rss
    for _ in range(2000):
        step()
    gc.collect()
    return {"rss0": rss0, "rss1": proc.memory_info().rss,
            "per_call": fastrnn.training_memory(LSTM, T, B, I, H, dtype)}


def test_2000_training_calls_keep_rss_flat(backend_target, api_level):
    """In a fresh interpreter: in the suite's own process, gigabytes of what earlier tests
    compiled and loaded would hide the growth of a leak."""
    pytest.importorskip("psutil")
    proc = subprocess.run([sys.executable, "-c", FRESH_SCRIPT, TESTS_DIR,
                           "rss_of_2000_training_calls", backend_target.name, api_level],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.splitlines()[-1])
    rss0, rss1 = r["rss0"], r["rss1"]
    # The test can see a leak: 2,000 forwards' saved state is far above the allowed growth.
    assert 2000 * r["per_call"] > 0.05 * rss0
    assert rss1 < 1.05 * rss0, f"RSS grew from {rss0 / 2**20:.1f} MiB to {rss1 / 2**20:.1f} MiB"


@pytest.mark.parametrize("cell", ALL_CELLS, ids=cell_id)
def test_backward_frees_what_forward_kept(backend_target, api_level, cell):
    dtype = np.float64
    if api_level == "functional":
        p = make_problem(cell, 5, 3, 4, 6, dtype, lengths=True)
        cot = make_cotangents(cell, 5, 3, 6, dtype)
        ctx = FORWARD[cell.kind](**p, **variant_kwargs(cell), backend=backend_target.backend).ctx
        owner, inputs = ctx, [v for v in p.values() if isinstance(v, np.ndarray)]
    else:
        owner = make_layer(cell, 4, 6, num_layers=2, bidirectional=True, dtype=dtype,
                           backend=backend_target.backend)
        x = np.random.default_rng(0).standard_normal((5, 3, 4))
        inputs = [x, *owner.named_parameters().values(), *owner.grads.values()]
        owner(x, None, [5, 2, 4])
    kept = [weakref.ref(a) for a in reachable_arrays(owner)
            if not any(np.may_share_memory(a, e) for e in inputs)]
    assert kept, "forward kept nothing for backward"
    if api_level == "functional":
        grads = BACKWARD[cell.kind](ctx, **cot)
        assert ctx.saved is None and ctx.consumed
    else:
        grads = owner.backward()
    gc.collect()
    alive = [r() for r in kept if r() is not None]
    assert not alive, (f"{len(alive)} of {len(kept)} kept arrays outlive backward: "
                       f"{[a.shape for a in alive]}")
    assert grads is not None  # the gradients are alive and do not hold the saved state


# A backend may keep an int64 per batch row and direction besides cells.py's state (lengths).
BOOKKEEPING = 8


@pytest.mark.parametrize("cell", ALL_CELLS, ids=cell_id)
def test_training_memory_is_what_a_fused_forward_keeps(backend_target, cell):
    if not backend_target.fused:
        pytest.skip("training_memory describes the fused backends; the NumPy reference keeps "
                    "per-step caches")
    for dtype in DTYPES:
        for T, B, I, H in ((7, 3, 5, 4), (1, 1, 1, 1), (3, 2, 9, 2)):
            p = make_problem(cell, T, B, I, H, dtype)
            out = FORWARD[cell.kind](**p, **variant_kwargs(cell), backend=backend_target.backend)
            exclude = [*[v for v in p.values() if isinstance(v, np.ndarray)], *out[:-1]]
            kept = kept_bytes(reachable_arrays(out.ctx), exclude)
            expected = fastrnn.training_memory(cell, T, B, I, H, dtype)
            assert expected == fastrnn.saved_bytes(cell, T, B, H, np.dtype(dtype).itemsize)
            assert 0 <= kept - expected <= BOOKKEEPING * B, (kept, expected, T, B, I, H, dtype)
        for L, bidirectional, batch_first, dropout in ((3, True, False, 0.0),
                                                       (2, False, True, 0.5),
                                                       (2, True, True, 0.25), (1, True, False, 0)):
            T, B, I, H = 6, 3, 5, 4
            layer = make_layer(cell, I, H, L, bidirectional=bidirectional,
                               batch_first=batch_first, dtype=dtype,
                               backend=backend_target.backend, dropout=dropout)
            x = np.ones((B, T, I) if batch_first else (T, B, I), dtype)
            exclude = [x, *layer.named_parameters().values(), *layer.grads.values()]
            before = kept_bytes(reachable_arrays(layer), exclude)
            out = layer(x)
            kept = kept_bytes(reachable_arrays(layer), [*exclude, *flat("out", out).values()])
            expected = fastrnn.training_memory(
                cell, T, B, I, H, dtype, num_layers=L, bidirectional=bidirectional,
                batch_first=batch_first, dropout=dropout)
            D = 2 if bidirectional else 1
            assert before == 0, before
            assert 0 <= kept - expected <= BOOKKEEPING * B * D * L, (
                kept, expected, L, bidirectional, batch_first, dropout)


# The variants: the named cells of fastrnn.tools (functional) and the layers that make them.
VARIANT_LAYERS = {
    "lstm_proj": lambda I, H, **kw: fastrnn.LSTM(I, H, proj_size=H // 2, **kw),
    "layernorm_lstm": lambda I, H, **kw: fastrnn.LayerNormLSTM(I, H, **kw),
    "layernorm_gru": lambda I, H, **kw: fastrnn.LayerNormGRU(I, H, **kw),
    "rnn_zoneout": lambda I, H, **kw: fastrnn.RNN(I, H, zoneout=0.25, **kw),
    "lstm_zoneout": lambda I, H, **kw: fastrnn.LSTM(I, H, zoneout=0.25, **kw),
    "gru_zoneout": lambda I, H, **kw: fastrnn.GRU(I, H, zoneout=0.25, **kw),
    "lstm_peepholes": None, "lstm_clip": None, "gru_clip": None,  # functional API only
}
FUSED = {"numba": "numba", "cupy-emulated": "cupy"}


def _variant_cases():
    from cuda_emulation import emulated_backend
    from fastrnn.tools import variants

    backends = {"numba": fastrnn.get_backend("numba"), "cupy-emulated": emulated_backend()}
    return [(name, named.name) for named in variants.VARIANT_CELLS
            for name, backend in backends.items() if not backend.unsupported(named.at(4))]


@pytest.fixture
def emulated_by_name():
    from cuda_emulation import NAME, register_emulated_backend

    register_emulated_backend()
    yield
    fastrnn.dispatch.unregister_backend(NAME)


@pytest.mark.parametrize("backend, name", _variant_cases())
def test_training_memory_of_the_variants(backend, name, emulated_by_name):
    """What a training forward of each variant keeps on each fused backend that runs it is
    what training_memory says: through the functional API (the zoneout mask is the caller's)
    and through layers (stacked, bidirectional, batch_first; their zoneout masks are theirs)."""
    from fastrnn.tools import runners, variants

    (named,) = variants.named_cells([name])
    for dtype in DTYPES:
        for T, B, I, H in ((7, 3, 5, 4), (3, 2, 9, 2)):
            cell = named.at(H)
            p = runners.make_params(cell, T, B, I, H, dtype, seed=1)
            out = runners.fastrnn_forward(cell, p, training=True, backend=backend)
            exclude = [*[v for v in p.values() if isinstance(v, np.ndarray)], *out[:-1]]
            kept = kept_bytes(reachable_arrays(out.ctx), exclude)
            expected = fastrnn.training_memory(cell, T, B, I, H, dtype, backend=FUSED[backend])
            assert 0 <= kept - expected <= BOOKKEEPING * B, (kept, expected, T, B, I, H, dtype)
        if VARIANT_LAYERS[name] is None:
            continue
        for L, bidirectional, batch_first in ((2, True, False), (1, False, True)):
            T, B, I, H = 6, 3, 5, 4
            layer = VARIANT_LAYERS[name](I, H, num_layers=L, bidirectional=bidirectional,
                                         batch_first=batch_first, dtype=dtype, backend=backend)
            x = np.ones((B, T, I) if batch_first else (T, B, I), dtype)
            exclude = [x, *layer.named_parameters().values(), *layer.grads.values()]
            out = layer(x)
            kept = kept_bytes(reachable_arrays(layer), [*exclude, *flat("out", out).values()])
            expected = fastrnn.training_memory(
                layer.cell, T, B, I, H, dtype, num_layers=L, bidirectional=bidirectional,
                batch_first=batch_first, layer=True, backend=FUSED[backend])
            D = 2 if bidirectional else 1
            assert 0 <= kept - expected <= BOOKKEEPING * B * D * L, (
                kept, expected, L, bidirectional, batch_first)


def test_training_memory_arguments():
    assert fastrnn.training_memory("rnn", 10, 2, 3, 4, "float64") == 8 * (10 * 2 * 4 + 2 * 4)
    assert fastrnn.training_memory("gru_textbook", 0, 2, 3, 4) == 0
    assert fastrnn.training_memory(Cell("gru"), 5, 2, 3, 4) == 4 * (5 * 2 * 4 * 5 + 2 * 4)
    for kw, exc, name in (({"cell": "sru"}, ValueError, "cell kind"),
                          ({"cell": 3}, TypeError, "cell"), ({"T": -1}, ValueError, "T"),
                          ({"H": 2.0}, TypeError, "H"), ({"dtype": "float16"}, TypeError, "dtype"),
                          ({"num_layers": 0}, ValueError, "num_layers"),
                          ({"bidirectional": "yes"}, TypeError, "bidirectional")):
        args = dict(cell="lstm", T=4, B=2, I=3, H=5)
        args.update(kw)
        with pytest.raises(exc, match=name):
            fastrnn.training_memory(**args)


# ----------------------------------------------------------------------------------------------
# Scale


def test_lstm_ten_thousand_steps_forward_and_backward(fastest_cpu):
    """In float64, against the reference at 1e-10: in float32 two correct implementations
    differ by more than 1e-5 in weight gradients summed over 40,000 rows."""
    T, B, I, H, dtype = 10_000, 4, 32, 128, np.float64
    p = make_problem(LSTM, T, B, I, H, dtype, seed=7, scale=1 / math.sqrt(H))
    cot = make_cotangents(LSTM, T, B, H, dtype)
    got = all_arrays(*run(LSTM, p, cot, fastest_cpu.backend))
    for name, a in got.items():
        assert np.isfinite(a).all(), name
    assert got["out y"].shape == (T, B, H) and got["grad dx"].shape == (T, B, I)
    if fastest_cpu.name != "numpy":
        want = all_arrays(*run(LSTM, p, cot, "numpy"))
        expect_close(got, want, dtype, f"{fastest_cpu} T={T}")


def reset_peak_rss():
    """Reset the kernel's record of peak resident memory (Linux); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def inference_extra_rss(backend, p):
    """(y, peak resident memory of one inference forward beyond what was resident and y)."""
    gc.collect()
    reset_peak_rss()
    rss0 = rss_status("VmRSS")
    out = fastrnn.lstm_forward(**p, training=False, backend=backend)
    return out, rss_status("VmHWM") - rss0 - out.y.nbytes


def test_inference_over_100000_steps_needs_no_memory_growing_with_T(fastest_cpu):
    """T = 100,000, B = 1: the memory beyond y is the same as at T = 50,000 (a fused backend
    projects the input in chunks of ``chunk_elements``, not all T steps at once)."""
    if not reset_peak_rss():
        pytest.skip("needs /proc/self/clear_refs (Linux) to measure the peak resident memory")
    T, B, I, H, dtype = 100_000, 1, 8, 64, np.float32
    p = make_problem(LSTM, T, B, I, H, dtype, seed=5, scale=1 / math.sqrt(H))
    fastrnn.lstm_forward(**{**p, "x": p["x"][:3]}, training=False, backend=fastest_cpu.backend)
    half = {**p, "x": p["x"][:T // 2]}
    _, extra_half = inference_extra_rss(fastest_cpu.backend, half)
    (y, h_n, c_n, ctx), extra = inference_extra_rss(fastest_cpu.backend, p)
    assert ctx is None and y.shape == (T, B, H)
    projection = T // 2 * B * 4 * H * np.dtype(dtype).itemsize  # what 50,000 more steps add
    assert extra - extra_half < 4 * 2**20 < projection, (
        f"beyond y: {extra_half / 2**20:.1f} MiB at T = {T // 2}, {extra / 2**20:.1f} MiB at {T}")
    # the chunks join up: the first 20,000 steps (past a chunk boundary) equal the reference
    n = 20_000
    ref = fastrnn.lstm_forward(**{**p, "x": p["x"][:n]}, training=False, backend="numpy")
    expect_close({"y": y[:n]}, {"y": ref.y}, dtype, f"{fastest_cpu} long inference")
    assert np.isfinite(h_n).all() and np.isfinite(c_n).all()


def test_inference_memory_beyond_y_is_independent_of_T(backend_target):
    """Every backend, measured with tracemalloc (NumPy reports its allocations to it): an
    inference forward's peak memory beyond y is the same for T = 250 and T = 1,000, up to
    Python's free lists (which keep up to 2,000 small tuples). Fused backends run with small
    chunks here, so both lengths take many chunks."""
    import tracemalloc

    B, I, H, dtype = 1, 8, 64, np.float64
    p = make_problem(LSTM, 1000, B, I, H, dtype, seed=6, scale=1 / math.sqrt(H))
    backend = backend_target.backend
    extra = {}
    with chunking(backend_target, 4096):
        for T in (250, 1000):  # first calls fill caches (compiled code, packed weights)
            fastrnn.lstm_forward(**{**p, "x": p["x"][:T]}, training=False, backend=backend)
        tracemalloc.start()
        try:
            for T in (250, 1000):
                q = {**p, "x": p["x"][:T]}
                gc.collect()
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                y = fastrnn.lstm_forward(**q, training=False, backend=backend).y
                extra[T] = tracemalloc.get_traced_memory()[1] - before - y.nbytes
                del y
        finally:
            tracemalloc.stop()
    projection = 750 * B * 4 * H * np.dtype(dtype).itemsize  # 750 more steps, unchunked
    assert extra[1000] - extra[250] < 256 * 2**10 < projection / 4, extra

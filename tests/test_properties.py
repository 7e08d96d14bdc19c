"""Property-based tests of the public API: functional forward/backward and the layers.

Valid inputs: random shapes (every size from 1, some in the hundreds), both dtypes, every memory
layout NumPy can hand over (C and Fortran order, axes swapped, strided and negatively strided
views, unaligned and broadcast arrays, read-only arrays; lengths in random order, as lists,
tuples or arrays of any integer type and layout). Every backend must give the NumPy reference's
results (run on C-contiguous copies) within the project's tolerances, never modify an input and
never return an array that shares memory with one.

Invalid inputs must raise ValueError or TypeError whose message names the argument, before any
result and without any warning; inputs stay unmodified, and a rejected backward leaves the ctx
usable. The number of examples comes from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import math
import re
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastrnn
from fastrnn.cells import ALL_CELLS
from helpers import BACKWARD, FORWARD, GRAD_NAMES, TOL, assert_close, make_cotangents
from helpers import make_problem, variant_kwargs

DTYPES = (np.float32, np.float64)
LAYOUTS = ("C", "F", "swapped", "strided", "negative", "unaligned", "broadcast")
PARAM_NAMES = ("W_ih", "W_hh", "b_ih", "b_hh")


# ----------------------------------------------------------------------------------------------
# Memory layouts


def relayout(a, layout, readonly):
    """``a``'s values in another memory layout ("broadcast" repeats ``a[0]`` along axis 0)."""
    if layout == "F":
        out = np.asfortranarray(a)
    elif layout == "swapped" and a.ndim >= 2:  # stored with the first two axes exchanged
        out = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
    elif layout == "strided":  # every other element on every axis, the last one included
        # visible if anything reads past the view
        fill = np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).max
        buf = np.full(tuple(2 * n + 1 for n in a.shape), fill, a.dtype)
        out = buf[tuple(slice(1, None, 2) for _ in a.shape)]
        out[...] = a
    elif layout == "negative":  # reversed storage read backwards: negative strides everywhere
        out = np.flip(np.flip(a).copy())
    elif layout == "unaligned":  # data one byte past an aligned address
        raw = np.zeros(a.nbytes + 1, np.uint8)
        out = raw[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
    elif layout == "broadcast" and a.size:  # zero stride on axis 0
        out = np.broadcast_to(a[:1], a.shape)
    else:
        out = a.copy()
    if readonly:
        out.setflags(write=False)
    return out


def c_copy(a):
    return None if a is None else np.array(a, order="C")


layout_choices = st.tuples(st.sampled_from(LAYOUTS), st.booleans())


def lengths_form(values, form, layout, readonly):
    """``values`` as the caller may pass them: list, tuple, NumPy integers or an int array."""
    if form == "list":
        return list(values)
    if form == "tuple":
        return tuple(values)
    if form == "numpy ints":
        return [np.int64(v) for v in values]
    dtype = np.dtype(form)
    return relayout(np.asarray(values, dtype), layout, readonly)


@st.composite
def lengths_strategy(draw, T, B):
    values = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    forms = ["list", "tuple", "numpy ints", "int64", "int32", "int16", "uint64"]
    if T <= 255:
        forms.append("uint8")
    return (values, draw(st.sampled_from(forms)), *draw(layout_choices))


# ----------------------------------------------------------------------------------------------
# Shapes: mostly 1..4, sometimes one of T, B, I, H in the tens or hundreds


@st.composite
def sizes(draw, big_max=256):
    dims = {k: draw(st.integers(1, 4)) for k in "TBIH"}
    pick = draw(st.integers(0, 19))  # one example in five has a big dimension
    if pick >= 16:  # (and shrinking goes towards none)
        dims["TBIH"[pick - 16]] = draw(st.integers(16, big_max))
    return dims["T"], dims["B"], dims["I"], dims["H"]


def state_names(cell):
    return ("h0", "c0") if cell.has_cell_state else ("h0",)


def cotangent_names(cell):
    return ("dy", "dh_n", "dc_n") if cell.has_cell_state else ("dy", "dh_n")


@contextmanager
def chunking(target, chunk_elements):
    """Make a fused backend run inference in chunks of ``chunk_elements`` (None: unchanged)."""
    backend = fastrnn.get_backend(target.backend)
    if chunk_elements is None or not target.fused:
        yield
        return
    backend.chunk_elements = chunk_elements
    try:
        yield
    finally:
        del backend.chunk_elements  # back to the class's value


# ----------------------------------------------------------------------------------------------
# Checks shared by every property


def snapshot(values: dict) -> dict:
    return {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else
                list(v) if isinstance(v, (list, tuple)) else v) for k, v in values.items()}


def assert_unchanged(values: dict, before: dict):
    for k, v in values.items():
        if isinstance(v, np.ndarray):
            if not np.array_equal(v, before[k], equal_nan=v.dtype.kind in "fc"):
                np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was modified")
        elif isinstance(v, (list, tuple)):
            assert list(v) == before[k], f"{k} was modified"


def _close(a, e, tol):
    if a.shape != e.shape or a.dtype != e.dtype:
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (np.abs(a - e) <= tol["atol"] + tol["rtol"] * np.abs(e)) | (a == e)
    return bool((ok | (np.isnan(a) & np.isnan(e))).all())


def expect_close(actual: dict, expected: dict, dtype, label=""):
    """helpers.assert_close (the project's tolerances, NaN where NaN), with a fast path."""
    tol = TOL[dtype]
    if set(actual) != set(expected) or not all(
            _close(np.asarray(actual[k]), np.asarray(expected[k]), tol) for k in expected):
        assert_close(actual, expected, dtype, label)
        raise AssertionError(f"{label}: dtypes differ")  # assert_close passed: only dtypes left


def assert_fresh(results: dict, inputs: dict):
    """No result shares memory with an input: writing into a result cannot change an input."""
    for rn, r in results.items():
        for n, a in inputs.items():
            if isinstance(r, np.ndarray) and isinstance(a, np.ndarray):
                assert not np.may_share_memory(r, a), f"result {rn} shares memory with {n}"


# ----------------------------------------------------------------------------------------------
# Functional API, valid inputs


@st.composite
def functional_cases(draw):
    cell = draw(st.sampled_from(ALL_CELLS))
    T, B, I, H = draw(sizes())
    case = dict(cell=cell, dtype=draw(st.sampled_from(DTYPES)), T=T, B=B, I=I, H=H,
                seed=draw(st.integers(0, 2**32 - 1)), reverse=draw(st.booleans()),
                training=draw(st.integers(0, 3)) > 0, chunk=draw(st.sampled_from([None, 1, 50])))
    names = ["x", "W_ih", "W_hh", "b_ih", "b_hh", *state_names(cell), *cotangent_names(cell)]
    optional = {"b_ih", "b_hh", "h0", "c0", "dy", "dh_n", "dc_n"}
    case["given"] = {n: n not in optional or draw(st.booleans()) for n in names}
    case["layouts"] = {n: draw(layout_choices) for n in names}
    case["lengths"] = draw(st.none() | lengths_strategy(T, B))
    return case


def build_functional(case):
    """(forward kwargs as laid out, cotangents as laid out, lengths as passed, lengths values)."""
    cell, T, B, I, H = case["cell"], case["T"], case["B"], case["I"], case["H"]
    data = make_problem(cell, T, B, I, H, case["dtype"], seed=case["seed"],
                        scale=1 / math.sqrt(H))
    data.update(make_cotangents(cell, T, B, H, case["dtype"], seed=case["seed"] + 1))
    laid = {n: relayout(data[n], *case["layouts"][n]) if case["given"][n] else None
            for n in case["given"]}
    lengths = values = None
    if case["lengths"] is not None:
        lengths = lengths_form(*case["lengths"])
        values = np.array(lengths, dtype=np.int64)
    inputs = {n: laid[n] for n in ("x", *PARAM_NAMES, *state_names(cell))}
    cots = {n: laid[n] for n in cotangent_names(cell)}
    return inputs, cots, lengths, values


def run_functional(cell, inputs, cots, lengths, reverse, training, backend):
    out = FORWARD[cell.kind](**inputs, **variant_kwargs(cell), lengths=lengths, reverse=reverse,
                             training=training, backend=backend)
    outs = {"y": out.y, "h_n": out.h_n}
    if cell.has_cell_state:
        outs["c_n"] = out.c_n
    if not training:
        assert out.ctx is None
        return outs, {}
    g = BACKWARD[cell.kind](out.ctx, **cots)
    return outs, {n: getattr(g, n) for n in GRAD_NAMES if getattr(g, n) is not None}


@given(case=functional_cases())
def test_functional_valid_inputs_match_reference(backend_target, case):
    cell, dtype = case["cell"], case["dtype"]
    inputs, cots, lengths, lengths_values = build_functional(case)
    everything = {**inputs, **cots, "lengths": lengths}
    before = snapshot(everything)
    with chunking(backend_target, case["chunk"]):
        outs, grads = run_functional(cell, inputs, cots, lengths, case["reverse"],
                                     case["training"], backend_target.backend)
    assert_unchanged(everything, before)
    assert_fresh({**outs, **grads}, everything)

    expected = run_functional(
        cell, {k: c_copy(v) for k, v in inputs.items()}, {k: c_copy(v) for k, v in cots.items()},
        lengths_values, case["reverse"], case["training"], "numpy")
    for label, got, want in (("forward", outs, expected[0]), ("backward", grads, expected[1])):
        expect_close(got, want, dtype, f"{backend_target} {cell.name} {label}")
        for name, value in got.items():
            assert value.dtype == dtype, (name, value.dtype)


# ----------------------------------------------------------------------------------------------
# Functional API, invalid inputs


class FakeArray:
    """Has shape, dtype, ndim and __array__, but belongs to no array library fastrnn takes."""

    def __init__(self, a):
        self._a = a
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim

    def __array__(self, dtype=None, copy=None):
        return self._a


def other_library(a, how):
    if how == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(np.array(a))
    if how == "list":
        return a.tolist()
    if how == "array-like fake":
        return FakeArray(a)
    if how == "memoryview":
        return memoryview(np.ascontiguousarray(a))
    if how == "masked array":  # an ndarray whose mask fastrnn could not honour
        return np.ma.masked_array(a, mask=np.ones(a.shape, bool))
    if how == "numpy non-array":
        return np.random.default_rng(0)
    if how == "numpy scalar":
        return a.dtype.type(1)
    raise AssertionError(how)


BAD_DTYPES = ("float16", "int32", "int64", "uint8", "complex64", "complex128", "object", "bool",
              ">f4", ">f8", "longdouble")
OTHER_LIBRARIES = ("torch", "list", "array-like fake", "memoryview", "masked array",
                   "numpy non-array", "numpy scalar")


def bad_lengths(draw, T, B):
    """Invalid lengths for (T, B) and the kind of mistake."""
    ok = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    i = draw(st.integers(0, B - 1))
    kinds = ["zero", "above T", "negative", "huge", "float array", "float list", "NaN",
             "too many", "2-D", "bool", "strings", "object", "scalar"]
    if B > 1:
        kinds.append("too few")
    kind = draw(st.sampled_from(kinds))
    bad = list(ok)
    if kind in ("zero", "above T", "negative", "huge"):
        bad[i] = {"zero": 0, "above T": T + 1, "negative": -draw(st.integers(1, 2**40)),
                  "huge": draw(st.sampled_from([2**31, 2**62, 2**64 - 1]))}[kind]
        return (np.array(bad, np.uint64) if kind == "huge" and bad[i] >= 2**63
                else np.array(bad)), kind
    if kind == "float array":
        return np.array(ok, np.float64), kind
    if kind == "float list":
        bad[i] = float(bad[i])
        return bad, kind
    if kind == "NaN":
        return np.where(np.arange(B) == i, np.nan, ok), kind
    if kind == "too many":
        return ok + [1], kind
    if kind == "too few":
        return ok[:-1], kind
    if kind == "2-D":
        return np.array(ok)[:, None], kind
    if kind == "bool":
        return np.ones(B, bool), kind
    if kind == "strings":
        return [str(v) for v in ok], kind
    if kind == "object":
        return np.array([2**70] * B), kind
    return T, kind  # a scalar


def mutate_forward(draw, cell, kw, T, B):
    """Make one argument of a valid forward call invalid; returns (mutation, names it may cite)."""
    arrays = [n for n in ("x", *PARAM_NAMES, *state_names(cell)) if kw.get(n) is not None]
    kinds = ["rank", "size", "dtype", "mixed float", "library", "None", "lengths", "flag",
             "variant", "backend"]
    kind = draw(st.sampled_from(kinds))
    name = draw(st.sampled_from(arrays))
    a = kw.get(name)
    if kind == "rank":
        kw[name] = a[None] if draw(st.booleans()) or a.ndim == 1 else a[0]
        return f"{name} rank {kw[name].ndim}", {name}
    if kind == "size":
        axis = draw(st.integers(0, a.ndim - 1))
        if name == "x" and axis < 2:
            axis = 2  # T and B of x are free; its I must match W_ih
        shape = list(a.shape)
        shape[axis] += draw(st.sampled_from([-1, 1])) if shape[axis] > 1 else 1
        kw[name] = np.resize(a, shape)
        return f"{name} shape {tuple(shape)}", {name, "W_ih"} if name == "x" else {name}
    if kind == "dtype":
        dtype = draw(st.sampled_from(BAD_DTYPES))
        kw[name] = a.astype(dtype)
        return f"{name} dtype {dtype}", {name}
    if kind == "mixed float":
        kw[name] = a.astype(np.float64 if a.dtype == np.float32 else np.float32)
        return f"{name} {kw[name].dtype} among {a.dtype}", {name}
    if kind == "library":
        how = draw(st.sampled_from(OTHER_LIBRARIES))
        kw[name] = other_library(a, how)
        return f"{name} as {how}", {name}
    if kind == "None":
        name = draw(st.sampled_from(["x", "W_ih", "W_hh"]))
        kw[name] = None
        return f"{name} None", {name}
    if kind == "lengths":
        kw["lengths"], what = bad_lengths(draw, T, B)
        return f"lengths {what}", {"lengths"}
    if kind == "flag":
        flag = draw(st.sampled_from(["reverse", "training"]))
        kw[flag] = draw(st.sampled_from(["yes", 1, 0, None, 1.0, "False"]))
        return f"{flag}={kw[flag]!r}", {flag}
    if kind == "variant":
        if cell.kind == "rnn":
            kw["nonlinearity"] = draw(st.sampled_from(["sigmoid", "TANH", None, 1]))
            return f"nonlinearity={kw['nonlinearity']!r}", {"nonlinearity"}
        if cell.kind == "gru":
            kw["linear_before_reset"] = draw(st.sampled_from(["no", 1, None]))
            return f"linear_before_reset={kw['linear_before_reset']!r}", {"linear_before_reset"}
    kw["backend"] = draw(st.sampled_from(["fortran", "", 3, object()]))
    return f"backend={kw['backend']!r}", {"backend"}


def assert_rejected(call, names, label):
    """``call()`` raises ValueError or TypeError naming one of ``names``, and warns nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((ValueError, TypeError)) as info:
            call()
    message = str(info.value)
    assert any(re.search(rf"(?<![A-Za-z_]){re.escape(n)}(?![A-Za-z_])", message)
               for n in names), f"{label}: message does not name {sorted(names)}: {message!r}"


@st.composite
def small_problems(draw):
    cell = draw(st.sampled_from(ALL_CELLS))
    T, B, I, H = (draw(st.integers(1, 4)) for _ in range(4))
    return dict(cell=cell, dtype=draw(st.sampled_from(DTYPES)), T=T, B=B, I=I, H=H,
                seed=draw(st.integers(0, 2**32 - 1)), lengths=draw(st.booleans()))


def small_problem(case):
    cell = case["cell"]
    p = make_problem(cell, case["T"], case["B"], case["I"], case["H"], case["dtype"],
                     seed=case["seed"], lengths=case["lengths"])
    cot = make_cotangents(cell, case["T"], case["B"], case["H"], case["dtype"],
                          seed=case["seed"] + 1)
    return cell, p, cot


@given(case=small_problems(), data=st.data())
def test_functional_invalid_forward_raises_naming_the_argument(backend_target, case, data):
    cell, p, _ = small_problem(case)
    kw = {**p, **variant_kwargs(cell), "backend": backend_target.backend}
    label, names = mutate_forward(data.draw, cell, kw, case["T"], case["B"])
    before = snapshot(kw)
    assert_rejected(lambda: FORWARD[cell.kind](**kw), names, label)
    assert_unchanged(kw, before)


def mutate_cotangent(draw, cell, cot, T, B, H):
    name = draw(st.sampled_from(cotangent_names(cell)))
    a = cot[name]
    kind = draw(st.sampled_from(["shape", "rank", "dtype", "mixed float", "library"]))
    if kind == "shape":
        shape = list(a.shape)
        shape[draw(st.integers(0, a.ndim - 1))] += 1
        cot[name] = np.resize(a, shape)
    elif kind == "rank":
        cot[name] = a[None] if draw(st.booleans()) else a[0]
    elif kind == "dtype":
        cot[name] = a.astype(draw(st.sampled_from(BAD_DTYPES)))
    elif kind == "mixed float":
        cot[name] = a.astype(np.float64 if a.dtype == np.float32 else np.float32)
    else:
        cot[name] = other_library(a, draw(st.sampled_from(OTHER_LIBRARIES)))
    return f"{name} {kind}", {name}


@given(case=small_problems(), data=st.data())
def test_functional_invalid_backward_raises_and_keeps_ctx(backend_target, case, data):
    cell, p, cot = small_problem(case)
    forward, backward = FORWARD[cell.kind], BACKWARD[cell.kind]
    kw = {**p, **variant_kwargs(cell), "backend": backend_target.backend}
    kind = data.draw(st.sampled_from(["cotangent", "cotangent", "cotangent", "consumed ctx",
                                      "inference ctx", "other cell's ctx", "not a ctx"]))
    if kind == "inference ctx":
        ctx = forward(**kw, training=False).ctx
        assert ctx is None
        assert_rejected(lambda: backward(ctx, **cot), {"ctx"}, kind)
        return
    ctx = forward(**kw).ctx
    if kind == "consumed ctx":
        backward(ctx, **cot)
        assert ctx.saved is None
        assert_rejected(lambda: backward(ctx, **cot), {"ctx"}, kind)
        return
    if kind == "other cell's ctx":
        other = data.draw(st.sampled_from([c for c in ALL_CELLS if c.kind != cell.kind]))
        o = make_problem(other, 2, case["B"], case["I"], case["H"], case["dtype"])
        other_ctx = FORWARD[other.kind](**o, **variant_kwargs(other),
                                        backend=backend_target.backend).ctx
        assert_rejected(lambda: backward(other_ctx, **cot), {"ctx"}, kind)
    elif kind == "not a ctx":
        junk = data.draw(st.sampled_from(["result", "dict", "int", "string"]))
        bad = {"result": forward(**kw), "dict": {}, "int": 3, "string": "ctx"}[junk]
        assert_rejected(lambda: backward(bad, **cot), {"ctx"}, f"ctx as {junk}")
    else:
        bad = dict(cot)
        label, names = mutate_cotangent(data.draw, cell, bad, case["T"], case["B"], case["H"])
        before = snapshot(bad)
        assert_rejected(lambda: backward(ctx, **bad), names, label)
        assert_unchanged(bad, before)
    # The rejected call consumed nothing: the ctx still gives the reference's gradients.
    g = backward(ctx, **cot)
    got = {n: getattr(g, n) for n in GRAD_NAMES if getattr(g, n) is not None}
    expected = run_functional(cell, {k: v for k, v in p.items() if k != "lengths"}, cot,
                              p.get("lengths"), False, True, "numpy")[1]
    expect_close(got, expected, case["dtype"], f"{cell.name} after {kind}")


# ----------------------------------------------------------------------------------------------
# Layers


def make_layer(cell, I, H, num_layers=1, bias=True, batch_first=False, bidirectional=False,
               dtype=np.float64, backend=None, seed=0, dropout=0.0):
    kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, dropout=dropout,
              bidirectional=bidirectional, dtype=dtype, backend=backend, seed=seed)
    if cell.kind == "rnn":
        return fastrnn.RNN(I, H, nonlinearity=cell.nonlinearity, **kw)
    if cell.kind == "gru":
        return fastrnn.GRU(I, H, linear_before_reset=cell.linear_before_reset, **kw)
    return fastrnn.LSTM(I, H, **kw)


needs_layers = pytest.mark.skipif(not hasattr(fastrnn, "RNN"),
                                  reason="fastrnn.RNN/LSTM/GRU (fastrnn/layers.py) not exported")


@st.composite
def layer_cases(draw):
    cell = draw(st.sampled_from(ALL_CELLS))
    T, B, I, H = draw(sizes(big_max=64))
    case = dict(cell=cell, dtype=draw(st.sampled_from(DTYPES)), T=T, B=B, I=I, H=H,
                num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
                bias=draw(st.booleans()), batch_first=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)), training=draw(st.integers(0, 3)) > 0,
                chunk=draw(st.sampled_from([None, 1, 50])), hx=draw(st.booleans()),
                lengths=draw(st.none() | lengths_strategy(T, B)))
    case["cotangents"] = {n: draw(st.booleans()) for n in cotangent_names(cell)}
    names = ["x", "h0", "c0", "dy", "dh_n", "dc_n", "params"]
    case["layouts"] = {n: draw(layout_choices) for n in names}
    return case


def layer_io(case):
    """(params, x, hx, lengths, lengths values, dy, dh_n) for a layer case, laid out."""
    cell, T, B, I, H = case["cell"], case["T"], case["B"], case["I"], case["H"]
    dtype, L = case["dtype"], case["num_layers"]
    D = 2 if case["bidirectional"] else 1
    rng = np.random.default_rng(case["seed"])
    lay = case["layouts"]
    shapes = {n: p.shape for n, p in make_layer(
        cell, I, H, L, case["bias"], bidirectional=D == 2).state_dict().items()}
    bound = 1 / math.sqrt(H)
    params = {n: relayout(rng.uniform(-bound, bound, s).astype(dtype), *lay["params"])
              for n, s in shapes.items()}
    x = rng.standard_normal((B, T, I) if case["batch_first"] else (T, B, I)).astype(dtype)
    x = relayout(x, *lay["x"])

    def state(name):
        return relayout(rng.standard_normal((L * D, B, H)).astype(dtype), *lay[name])
    hx = None
    if case["hx"]:
        hx = (state("h0"), state("c0")) if cell.has_cell_state else state("h0")
    lengths = values = None
    if case["lengths"] is not None:
        lengths = lengths_form(*case["lengths"])
        values = np.array(lengths, dtype=np.int64)
    given = case["cotangents"]
    dy = relayout(rng.standard_normal(
        (B, T, D * H) if case["batch_first"] else (T, B, D * H)).astype(dtype), *lay["dy"])
    dy = dy if given["dy"] else None
    dh_n = state("dh_n") if given["dh_n"] else None
    if cell.has_cell_state and given["dc_n"]:
        dh_n = (dh_n, state("dc_n"))
    return params, x, hx, lengths, values, dy, dh_n


def flat(prefix, value):
    """{name: array} of a nested result such as (y, (h_n, c_n))."""
    if isinstance(value, (tuple, list)):
        out = {}
        for i, v in enumerate(value):
            out.update(flat(f"{prefix}[{i}]", v))
        return out
    return {} if value is None else {prefix: value}


def run_layer(case, params, x, hx, lengths, dy, dh_n, backend):
    cell = case["cell"]
    layer = make_layer(cell, case["I"], case["H"], case["num_layers"], case["bias"],
                       case["batch_first"], case["bidirectional"], case["dtype"], backend)
    layer.load_state_dict(params)
    layer.train(case["training"])
    outs = flat("out", layer(x, hx, lengths))
    if not case["training"]:
        return outs, {}
    grads = flat("d", layer.backward(dy, dh_n))
    grads.update({f"grads[{n}]": g for n, g in layer.grads.items()})
    return outs, grads


@needs_layers
@given(case=layer_cases())
def test_layers_valid_inputs_match_reference(backend_target, case):
    params, x, hx, lengths, values, dy, dh_n = layer_io(case)
    everything = {**{f"param {n}": p for n, p in params.items()}, "x": x, "lengths": lengths,
                  **flat("hx", hx), **flat("dy", dy), **flat("dh_n", dh_n)}
    before = snapshot(everything)
    with chunking(backend_target, case["chunk"]):
        outs, grads = run_layer(case, params, x, hx, lengths, dy, dh_n, backend_target.backend)
    assert_unchanged(everything, before)
    assert_fresh({**outs, **grads}, everything)

    copy = (lambda v: tuple(c_copy(a) for a in v) if isinstance(v, tuple) else c_copy(v))
    expected = run_layer(case, {n: c_copy(p) for n, p in params.items()}, c_copy(x), copy(hx),
                         values, copy(dy), copy(dh_n), "numpy")
    label = f"{backend_target} layer {case['cell'].name}"
    expect_close(outs, expected[0], case["dtype"], label)
    expect_close(grads, expected[1], case["dtype"], label)


def mutate_layer_call(draw, case, layer, x, hx, lengths):
    """An invalid forward for ``layer``: returns (call, names, label)."""
    cell, T, B, H = case["cell"], case["T"], case["B"], case["H"]
    kind = draw(st.sampled_from(["x rank", "x size", "x dtype", "x library", "x None",
                                 "hx shape", "hx dtype", "hx form", "lengths"]))
    if kind == "x rank":
        bad = x[None] if draw(st.booleans()) else x[0]
        return (lambda: layer(bad, hx, lengths)), {"x"}, kind
    if kind == "x size":
        bad = np.resize(x, x.shape[:2] + (x.shape[2] + 1,))
        return (lambda: layer(bad, hx, lengths)), {"x"}, kind
    if kind == "x dtype":
        dtype = draw(st.sampled_from(BAD_DTYPES + ("float32", "float64")))
        assume(np.dtype(dtype) != x.dtype)
        bad = x.astype(dtype)
        return (lambda: layer(bad, hx, lengths)), {"x"}, f"x {dtype}"
    if kind == "x library":
        how = draw(st.sampled_from(OTHER_LIBRARIES))
        bad = other_library(x, how)
        return (lambda: layer(bad, hx, lengths)), {"x"}, f"x as {how}"
    if kind == "x None":
        return (lambda: layer(None, hx, lengths)), {"x"}, kind
    D = layer.num_directions
    good = np.zeros((layer.num_layers * D, B, H), x.dtype)
    if kind == "hx shape":
        shape = list(good.shape)
        shape[draw(st.integers(0, 2))] += 1
        bad = np.zeros(shape, x.dtype) if draw(st.booleans()) else good[0]
    elif kind == "hx dtype":
        bad = good.astype(draw(st.sampled_from(BAD_DTYPES)))
    elif kind == "hx form":
        if not cell.has_cell_state:
            return (lambda: layer(x, [good], lengths)), {"hx"}, "hx as a list"
        bad = draw(st.sampled_from(["array", "triple"]))
        bad = good if bad == "array" else (good, good, good)
        return (lambda: layer(x, bad, lengths)), {"hx"}, "LSTM hx not a pair"
    else:
        bad_len, what = bad_lengths(draw, T, B)
        return (lambda: layer(x, hx, bad_len)), {"lengths"}, f"lengths {what}"
    if cell.has_cell_state:
        pair = (bad, good) if draw(st.booleans()) else (good, bad)
        return (lambda: layer(x, pair, lengths)), {"hx", "h0", "c0"}, f"LSTM {kind}"
    return (lambda: layer(x, bad, lengths)), {"hx"}, kind


def mutate_layer_backward(draw, case, layer, dy, dh_n):
    cell = case["cell"]
    name = draw(st.sampled_from(["dy", "dh_n", "dc_n"] if cell.has_cell_state else
                                ["dy", "dh_n"]))
    good = {"dy": dy, "dh_n": dh_n, "dc_n": dh_n}[name]
    kind = draw(st.sampled_from(["shape", "rank", "dtype", "mixed float", "library"]))
    if kind == "shape":
        shape = list(good.shape)
        shape[draw(st.integers(0, 2))] += 1
        bad = np.resize(good, shape)
    elif kind == "rank":
        bad = good[0]
    elif kind in ("dtype", "mixed float"):
        dtype = (draw(st.sampled_from(BAD_DTYPES)) if kind == "dtype" else
                 np.float64 if good.dtype == np.float32 else np.float32)
        bad = good.astype(dtype)
    else:
        bad = other_library(good, draw(st.sampled_from(OTHER_LIBRARIES)))
    if name == "dy":
        return (lambda: layer.backward(bad, dh_n)), {"dy"}, f"dy {kind}"
    if cell.has_cell_state:
        pair = (bad, dh_n) if name == "dh_n" else (dh_n, bad)
        return (lambda: layer.backward(dy, pair)), {name}, f"{name} {kind}"
    return (lambda: layer.backward(dy, bad)), {"dh_n"}, f"dh_n {kind}"


@st.composite
def small_layer_cases(draw):
    cell = draw(st.sampled_from(ALL_CELLS))
    T, B, I, H = (draw(st.integers(1, 4)) for _ in range(4))
    case = dict(cell=cell, dtype=draw(st.sampled_from(DTYPES)), T=T, B=B, I=I, H=H,
                num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
                bias=draw(st.booleans()), batch_first=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)), training=True, chunk=None, hx=True,
                lengths=draw(st.none() | lengths_strategy(T, B)))
    case["cotangents"] = {n: True for n in cotangent_names(cell)}
    case["layouts"] = {n: ("C", False) for n in ("x", "h0", "c0", "dy", "dh_n", "dc_n", "params")}
    return case


@needs_layers
@given(case=small_layer_cases(), data=st.data())
def test_layers_invalid_calls_raise_naming_the_argument(backend_target, case, data):
    params, x, hx, lengths, values, dy, dh_n = layer_io(case)
    layer = make_layer(case["cell"], case["I"], case["H"], case["num_layers"], case["bias"],
                       case["batch_first"], case["bidirectional"], case["dtype"],
                       backend_target.backend)
    layer.load_state_dict(params)
    everything = {"x": x, **flat("hx", hx), **flat("dy", dy), **flat("dh_n", dh_n)}
    before = snapshot(everything)
    dh = dh_n[0] if isinstance(dh_n, tuple) else dh_n
    stage = data.draw(st.sampled_from(["forward", "backward"]))
    if stage == "forward":
        # A good forward first: the rejected call must leave its state for backward intact.
        layer(x, hx, lengths)
        call, names, label = mutate_layer_call(data.draw, case, layer, x, hx, lengths)
    else:
        layer(x, hx, lengths)
        call, names, label = mutate_layer_backward(data.draw, case, layer, dy, dh)
    assert_rejected(call, names, label)
    assert_unchanged(everything, before)
    got = flat("d", layer.backward(dy, dh_n))
    got.update({f"grads[{n}]": g for n, g in layer.grads.items()})
    expected = run_layer(case, params, x, hx, values, dy, dh_n, "numpy")[1]
    expect_close(got, expected, case["dtype"], f"layer {case['cell'].name} after {label}")


BAD_CONSTRUCTOR_ARGS = [
    ("input_size", 0), ("input_size", -1), ("input_size", "3"), ("input_size", 2.5),
    ("input_size", True), ("input_size", None), ("hidden_size", 0), ("hidden_size", 1.0),
    ("num_layers", 0), ("num_layers", "2"), ("dropout", -0.1), ("dropout", 1.5),
    ("dropout", float("nan")), ("dropout", "0.5"), ("dropout", None), ("bias", "yes"),
    ("batch_first", 1), ("bidirectional", None), ("dtype", np.float16), ("dtype", np.int32),
    ("dtype", "complex64"), ("dtype", "nonsense"), ("dtype", object), ("backend", "fortran"),
    ("backend", 3), ("seed", "abc"), ("seed", -1), ("seed", 1.5),
]


@needs_layers
@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
@pytest.mark.parametrize("arg,value", BAD_CONSTRUCTOR_ARGS,
                         ids=[f"{a}={v!r}" for a, v in BAD_CONSTRUCTOR_ARGS])
def test_layer_constructor_rejects_bad_arguments(cell, arg, value):
    kw = dict(input_size=3, hidden_size=4, num_layers=1, bias=True, batch_first=False,
              dropout=0.0, bidirectional=False, dtype=np.float32, backend=None, seed=0)
    kw[arg] = value
    I, H = kw.pop("input_size"), kw.pop("hidden_size")
    cls = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell.kind]
    extra = variant_kwargs(cell)
    assert_rejected(lambda: cls(I, H, **extra, **kw), {arg}, f"{arg}={value!r}")


@needs_layers
@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
def test_layer_backward_without_a_training_forward_is_refused(backend_target, cell):
    """Backward with no forward, after an eval forward, or twice: an error, never stale state."""
    layer = make_layer(cell, 3, 4, backend=backend_target.backend)
    x = np.ones((2, 2, 3))
    expect = (RuntimeError, ValueError, TypeError)
    with pytest.raises(expect, match="forward"):
        layer.backward()
    layer.eval()
    layer(x)
    with pytest.raises(expect, match="eval|training"):
        layer.backward()
    layer.train()
    layer(x)
    layer.backward()
    with pytest.raises(expect, match="consumed|again"):
        layer.backward()


@needs_layers
@pytest.mark.parametrize("cell", ALL_CELLS, ids=lambda c: c.name)
def test_layer_load_state_dict_rejects_and_leaves_the_layer_unchanged(cell):
    layer = make_layer(cell, 3, 4, num_layers=2, bidirectional=True)
    good = {n: np.full(p.shape, 0.25, p.dtype) for n, p in layer.state_dict().items()}
    before = {n: p.copy() for n, p in layer.state_dict().items()}
    first = next(iter(good))
    cases = {
        "missing": ({k: v for k, v in good.items() if k != first}, first),
        "unexpected": ({**good, "weight_ih_l9": good[first]}, "weight_ih_l9"),
        "shape": ({**good, first: good[first][:-1]}, first),
        "dtype": ({**good, first: good[first].astype(np.float32)}, first),
        "float16": ({**good, first: good[first].astype(np.float16)}, first),
        "library": ({**good, first: good[first].tolist()}, first),
        "not a mapping": (list(good.values()), "state_dict"),
        "key type": ({**good, 3: good[first]}, "3"),
    }
    for label, (sd, name) in cases.items():
        assert_rejected(lambda: layer.load_state_dict(sd), {name}, label)
        for n, p in layer.state_dict().items():
            np.testing.assert_array_equal(p, before[n], err_msg=f"{label} changed {n}")

"""`fastrnn validate`: every backend, cell, variant and dtype against the NumPy reference.

For each case of a grid of small shapes (T = B = I = H = 1, odd sizes, ``lengths`` with ties and
full-length sequences, ``reverse``, given or zero initial states, with and without biases), a
backend runs a training forward, the backward with random dy, dh_n and dc_n, and an inference
forward. Every output (y, h_n, c_n, training and inference) and every gradient is compared with
the reference run in float64 on the same inputs: it passes when |actual - expected| <=
atol + rtol * |expected| everywhere (numpy.allclose), with the tolerances of
``fastrnn.tolerances`` (float32 rtol 1e-4, atol 1e-5; float64 rtol = atol = 1e-10), and when its
dtype and shape are right.

The cells are the named cells of ``variants``: by default the five plain cells and every named
variant (projection, layer norm, peepholes, clip, zoneout). A backend is given a variant only if
it declares the variant's switches (``Backend.variant_switches``); for the others the records
say "not run: the backend does not run <switch>", neither passed nor failed. A grid case where a
variant cannot be made (the projection proj_size = H // 2 at H = 1) is skipped, and the records
say so. In inference a zoneout cell runs in its evaluation form (M = 1 - p), in training with the
random 0/1 mask of ``runners.make_params``.

The reference itself in float64 has nothing to be compared with; its gradients are checked with
central finite differences instead (Richardson's extrapolation of steps 1e-6 and 2e-6), along a
random direction per gradient: relative error <= ``FD_RTOL``, 1e-6, or, for a derivative too
small for that to be measurable, an error within ten times the quotient's own rounding.

A float32 result may also differ by twice the float64 reference's own movement when its inputs
move by float32's rounding (``_sensitivity``): far below the tolerance for well-conditioned
problems; for layer norm, whose backward subtracts row means step after step, about the
tolerance itself on some draws, which no float32 implementation can beat.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from .. import dispatch
from ..cells import Cell
from ..reference import NumpyBackend
from ..tolerances import FD_RTOL, TOLERANCES, describe, tolerance
from . import runners
from .variants import NAMED_CELLS, as_named, named_cells

FD_STEP = 1e-6
DTYPES = tuple(TOLERANCES)


@dataclass(frozen=True)
class GridCase:
    name: str
    T: int
    B: int
    I: int
    H: int
    lengths: bool = False
    reverse: bool = False
    states: bool = True
    bias: bool = True

    def make_lengths(self):
        """Lengths with a full-length sequence, a tie and a length-1 sequence."""
        if not self.lengths:
            return None
        pattern = [self.T, max(1, self.T // 2), max(1, self.T // 2), 1, max(1, self.T - 1)]
        return np.array([pattern[b % len(pattern)] for b in range(self.B)], dtype=np.int64)


GRID = (
    GridCase("T1 B1 I1 H1", 1, 1, 1, 1),
    GridCase("odd I7 H33", 5, 3, 7, 33),
    GridCase("lengths", 6, 5, 4, 6, lengths=True),
    GridCase("reverse", 5, 3, 4, 5, reverse=True),
    GridCase("reverse lengths", 6, 5, 3, 4, lengths=True, reverse=True),
    GridCase("zero states no bias", 4, 2, 3, 5, states=False, bias=False),
)


def _problem(cell: Cell, case: GridCase, dtype, seed):
    """(params, cotangents) in ``dtype``, drawn in float64 and rounded once."""
    p = runners.make_params(cell, case.T, case.B, case.I, case.H, dtype, seed,
                            bias=case.bias, states=case.states)
    return p, runners.make_cotangents(cell, case.T, case.B, case.H, dtype, seed + 1)


def _not_run(base, check, problem):
    """A record of a check that did not run, neither passed nor failed (``passed`` None):
    ``check`` "not run" (a backend's whole run) or "skipped" (a grid case)."""
    return dict(base, quantity="(case)" if check == "skipped" else "(run)", check=check,
                max_abs=None, max_rel=None, worst=None, passed=None, problem=problem)


def _run(cell, case, backend, p, cot):
    """All outputs and gradients of one case on ``backend``, as host arrays by name."""
    be = dispatch.get_backend(backend)
    if be.library != "numpy":
        p = {k: None if v is None else be.xp.asarray(v) for k, v in p.items()}
        cot = {k: be.xp.asarray(v) for k, v in cot.items()}
    lengths = case.make_lengths()
    out = runners.fastrnn_forward(cell, p, training=True, backend=backend, lengths=lengths,
                                  reverse=case.reverse)
    result = runners.outputs(cell, out)
    result.update(runners.gradients(runners.fastrnn_backward(cell, out[-1], cot)))
    inf = runners.fastrnn_forward(cell, p, training=False, backend=backend, lengths=lengths,
                                  reverse=case.reverse)
    result.update((f"{k} (inference)", v) for k, v in runners.outputs(cell, inf).items())
    return {k: runners.to_numpy(v) for k, v in result.items()}


def compare(actual, expected, dtype: str, sensitivity=None) -> dict:
    """Errors of ``actual`` against ``expected`` and whether they pass (see the module doc).

    max_rel is taken over the entries with |expected| > atol, where a relative error means
    something; ``worst`` is the largest |a - e| / (atol + rtol |e| + 2 sensitivity), at most 1
    to pass. ``sensitivity`` (float32 only, see ``_sensitivity``): how far the exact result
    itself moves when the inputs move by float32's rounding.
    """
    tol = tolerance(dtype)
    if actual is None:
        return {"max_abs": None, "max_rel": None, "worst": None, "passed": False,
                "problem": "missing"}
    if actual.dtype != np.dtype(dtype):
        return {"max_abs": None, "max_rel": None, "worst": None, "passed": False,
                "problem": f"dtype {actual.dtype}, expected {dtype}"}
    if actual.shape != expected.shape:
        return {"max_abs": None, "max_rel": None, "worst": None, "passed": False,
                "problem": f"shape {actual.shape}, expected {expected.shape}"}
    err = np.abs(actual.astype(np.float64) - expected)
    mag = np.abs(expected)
    bound = tol["atol"] + tol["rtol"] * mag + (0 if sensitivity is None else 2 * sensitivity)
    passed = bool(np.all(err <= bound))  # False for any NaN
    big = mag > tol["atol"]
    return {
        "max_abs": float(err.max()) if err.size else 0.0,
        "max_rel": float((err[big] / mag[big]).max()) if big.any() else 0.0,
        "worst": float((err / bound).max()) if err.size else 0.0,
        "passed": passed, "problem": None,
    }


def _finite_differences(cell, case, p, cot, grads, seed) -> dict:
    """Directional central differences of L = <y, dy> + <h_n, dh_n> (+ <c_n, dc_n>) with the
    float64 reference, one random direction per gradient: {gradient name: comparison}."""
    lengths = case.make_lengths()

    def loss(q):  # a training forward: with zoneout, the mask that ``grads`` were taken with
        out = runners.fastrnn_forward(cell, q, training=True, backend="numpy",
                                      lengths=lengths, reverse=case.reverse)
        return sum(np.sum(a * cot["d" + k]) for k, a in runners.outputs(cell, out).items())

    rng = np.random.default_rng(seed + 2)
    results = {}
    for name in runners.GRAD_NAMES:
        if name not in grads:
            continue
        param = runners.PARAM_OF_GRAD[name]
        if p.get(param) is None:  # zero initial state: perturb an explicit zero state
            p = dict(p, **{param: np.zeros_like(grads[name])})
        v = rng.standard_normal(p[param].shape)
        values = {k: loss(dict(p, **{param: p[param] + k * FD_STEP * v})) for k in (-2, -1, 1, 2)}
        # Richardson's extrapolation of the central differences at steps h and 2h cancels
        # their h^2 error, which layer norm near a zero row (1/sqrt(eps) steep) makes large.
        fd = (8 * (values[1] - values[-1]) - (values[2] - values[-2])) / (12 * FD_STEP)
        analytic = float(np.sum(grads[name] * v))
        err = abs(fd - analytic)
        scale = max(abs(fd), abs(analytic))
        rel = err / scale if scale > 1e-12 else 0.0
        # The quotient's own rounding: L is known to a few ulps of |L|, so a derivative far
        # below |L| (a layer norm over one input is nearly scale-invariant) has no relative
        # accuracy to check; within ten times that noise it passes.
        noise = 10 * np.finfo(np.float64).eps * max(map(abs, values.values())) / FD_STEP
        results[name] = {"max_abs": err, "max_rel": rel, "worst": rel / FD_RTOL,
                         "passed": bool(rel <= FD_RTOL or err <= noise), "problem": None}
    return results


def validate(backends=None, cells=NAMED_CELLS, dtypes=DTYPES, grid=GRID, seed=0):
    """Run the checks; returns a list of records, one per backend, cell, dtype, case and
    quantity: {backend, cell, dtype, case, quantity, check, max_abs, max_rel, worst, passed,
    problem}. ``cells``: named cells (``variants``) or ``Cell``s. ``passed`` is None for a check
    that did not run: ``check`` is "not run" (the backend does not run a variant switch) or
    "skipped" (the variant does not apply to the grid case), and ``problem`` says why."""
    backends = dispatch.available_backends() if backends is None else list(backends)
    for name in backends:
        dispatch.get_backend(name)  # an unavailable backend raises here, saying why
    records = []
    for named in map(as_named, cells):
        for dtype in dtypes:
            for k, case in enumerate(grid):
                bases = [dict(backend=backend, cell=named.name, dtype=dtype, case=case.name)
                         for backend in backends]
                why_not = named.why_not(case.H)
                if why_not:
                    records += [_not_run(base, "skipped", f"skipped: {why_not}")
                                for base in bases]
                    continue
                records += _check_case(named.at(case.H), case, dtype, seed + k, bases)
    return records


def _sensitivity(cell, case, p64, cot64, expected, seed) -> dict:
    """How far each float64 reference result moves when every input moves by at most half a
    float32 ulp (the rounding a float32 run cannot avoid), the largest of four random draws:
    {quantity: |moved - expected|}. For well-conditioned problems it is far below the float32
    tolerance; a layer-normalised cell's backward, which subtracts row means of gradients step
    after step, can move by as much as the tolerance itself, and no float32 implementation is
    closer to the exact result than that."""
    rng = np.random.default_rng(seed + 3)
    half_ulp = np.finfo(np.float32).eps / 2
    spread = {}
    for _ in range(4):
        moved = {n: a if a is None or n == "zoneout_mask"
                 else a * (1 + half_ulp * rng.uniform(-1, 1, a.shape))
                 for n, a in {**p64, **cot64}.items()}
        result = _run(cell, case, "numpy", {n: moved[n] for n in p64},
                      {n: moved[n] for n in cot64})
        for q, e in expected.items():
            spread[q] = np.maximum(spread.get(q, 0), np.abs(result[q] - e))
    return spread


def _check_case(cell, case, dtype, seed, bases) -> list:
    """The records of one cell, dtype and grid case on each backend (``bases``: the records'
    common fields, one per backend)."""
    reasons = [runners.not_run_reason(dispatch.get_backend(b["backend"]), cell) for b in bases]
    records = [_not_run(base, "not run", f"not run: {reason}")
               for base, reason in zip(bases, reasons) if reason]
    bases = [base for base, reason in zip(bases, reasons) if not reason]
    if not bases:
        return records
    p, cot = _problem(cell, case, dtype, seed)
    p64 = {n: None if a is None else a.astype(np.float64) for n, a in p.items()}
    cot64 = {n: a.astype(np.float64) for n, a in cot.items()}
    expected = _run(cell, case, "numpy", p64, cot64)
    spread = _sensitivity(cell, case, p64, cot64, expected, seed) if dtype == "float32" else {}
    for base in bases:
        backend = dispatch.get_backend(base["backend"])
        if type(backend) is NumpyBackend and base["dtype"] == "float64":
            checks = _finite_differences(cell, case, p64, cot64, expected, seed)
            records += [dict(base, quantity=q, check="finite differences", **c)
                        for q, c in checks.items()]
            continue
        try:
            actual = _run(cell, case, base["backend"], p, cot)
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check
            records.append(dict(base, quantity="(run)", check="reference", max_abs=None,
                                max_rel=None, worst=None, passed=False,
                                problem=f"{type(exc).__name__}: {exc}"))
            continue
        for q in expected:
            records.append(dict(base, quantity=q, check="reference",
                                **compare(actual.get(q), expected[q], dtype, spread.get(q))))
        for q in actual.keys() - expected.keys():
            records.append(dict(base, quantity=q, check="reference", max_abs=None,
                                max_rel=None, worst=None, passed=False,
                                problem="returned, but the reference gives None"))
    return records


def summarize(records) -> list:
    """One row per backend, cell, dtype and quantity: the largest errors over the grid, the
    case where the error is closest to (or beyond) its tolerance, and PASS/FAIL; a check that
    did not run (``passed`` None) keeps None, with the cases it covers."""
    rows = {}
    for r in records:
        key = (r["backend"], r["cell"], r["dtype"], r["quantity"])
        row = rows.setdefault(key, dict(backend=r["backend"], cell=r["cell"], dtype=r["dtype"],
                                        quantity=r["quantity"], check=r["check"], max_abs=0.0,
                                        max_rel=0.0, worst=-1.0, worst_case=None, passed=True))
        if r["passed"] is None:  # a group holds only such records; skipped ones name the cases
            row.update(passed=None, max_abs=None, max_rel=None, problem=r["problem"])
            if r["check"] == "skipped":
                row["worst_case"] = "; ".join(filter(None, (row["worst_case"], r["case"])))
            continue
        row["passed"] = row["passed"] and r["passed"]
        for k in ("max_abs", "max_rel"):
            if r[k] is not None:
                row[k] = max(row[k], r[k])
        worst = np.inf if r["worst"] is None or np.isnan(r["worst"]) else r["worst"]
        if worst > row["worst"]:
            row["worst"], row["worst_case"] = worst, r["case"]
    for row in rows.values():
        row["worst"] = row["worst"] if np.isfinite(row["worst"]) else None
    return list(rows.values())


def _e(v):
    return "-" if v is None else f"{v:.2e}"


def _result(r) -> str:
    if r["passed"] is None:
        return r["check"].upper()  # NOT RUN, SKIPPED
    return "PASS" if r["passed"] else "FAIL"


def _not_run_lines(records) -> list:
    """One line per backend, cell and reason a check did not run, naming its dtypes (and for a
    skipped grid case, the cases)."""
    grouped = {}
    for r in records:
        if r["passed"] is None:
            entry = grouped.setdefault((r["backend"], r["cell"], r["problem"]), ({}, {}))
            entry[0][r["dtype"]] = None
            entry[1][r["case"]] = None
    lines = []
    for (backend, cell, problem), (dtypes, cases) in grouped.items():
        where = f" [{'; '.join(cases)}]" if problem.startswith("skipped") else ""
        lines.append(f"{backend} {cell} {', '.join(dtypes)}{where}: {problem}")
    return lines


def format_text(records, backends, cells, dtypes, grid, verbose=False) -> str:
    rows = records if verbose else summarize(records)
    where = "case" if verbose else "worst case"
    header = ("backend", "cell", "dtype", "quantity", "check", "max abs err", "max rel err",
              where, "result")
    table = [header] + [(
        r["backend"], r["cell"], r["dtype"], r["quantity"], r["check"], _e(r["max_abs"]),
        _e(r["max_rel"]), str(r["case"] if verbose else r["worst_case"]),
        _result(r)) for r in rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    lines = [
        f"fastrnn validate: backends {', '.join(backends)}; cells "
        f"{', '.join(as_named(c).name for c in cells)}; dtypes {', '.join(dtypes)}",
        f"grid ({len(grid)} cases per cell and dtype): "
        + "; ".join(f"{g.name} (T={g.T} B={g.B} I={g.I} H={g.H})" for g in grid),
        "tolerances: |actual - expected| <= atol + rtol |expected| against the float64 "
        "reference, " + ", ".join(f"{d} {describe(d)}" for d in TOLERANCES) + "; the reference "
        f"in float64: finite differences, relative error <= {FD_RTOL:g}. max rel err is over "
        "entries with |expected| > atol. A backend runs a variant only if it declares its "
        "switches; the others are listed as not run, neither passed nor failed.",
        "",
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
              for row in table]
    failed = [r for r in records if r["passed"] is False]
    not_run = _not_run_lines(records)
    ran = sum(r["passed"] is not None for r in records)
    lines += ["", f"{ran} checks, {len(failed)} failed"
              + (f"; not run ({len(not_run)}):" if not_run else "")]
    lines += [f"  {line}" for line in not_run]
    for r in failed:
        detail = r["problem"] or (f"max abs err {_e(r['max_abs'])}, max rel err "
                                  f"{_e(r['max_rel'])}, {r['worst']:.3g}x its tolerance")
        lines.append(f"FAIL {r['backend']} {r['cell']} {r['dtype']} [{r['case']}] "
                     f"{r['quantity']}: {detail}")
    return "\n".join(lines) + "\n"


def passed(records) -> bool:
    """No check failed (checks that did not run neither pass nor fail)."""
    return all(r["passed"] is not False for r in records)


def to_json(records, backends, cells, dtypes, grid) -> str:
    return json.dumps({
        "backends": list(backends), "cells": [as_named(c).name for c in cells],
        "dtypes": list(dtypes), "grid": [asdict(g) for g in grid],
        "tolerances": TOLERANCES, "finite_difference_rtol": FD_RTOL,
        "passed": passed(records),
        "failed": sum(r["passed"] is False for r in records),
        "not_run": sum(r["passed"] is None for r in records),
        "summary": summarize(records), "records": records,
    }, indent=1, default=_json_default) + "\n"


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.bool_):
        return bool(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def cells_by_names(names):
    """The named cells (``variants``) in ``names`` (a comma-separated string or a sequence);
    None means every one, as "all"."""
    return NAMED_CELLS if names is None else named_cells(names)

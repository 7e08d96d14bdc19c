"""The pytest-benchmark suite's configuration: which cases and implementations it runs.

The shapes, cells, FLOP counts and implementations are those of `fastrnn bench`
(``fastrnn.tools.presets``, ``fastrnn.tools.bench``, ``fastrnn.tools.runners``); only the timing
differs: here pytest-benchmark times each implementation on its own, `fastrnn bench`
interleaves them.

    pytest benchmarks/ --benchmark-json out.json
    pytest benchmarks/ --fastrnn-shapes tiny,small,medium,large,xlarge
    pytest benchmarks/ --fastrnn-shapes deepbench-device --fastrnn-t-scale 0.1
"""

from __future__ import annotations

import pytest

from fastrnn.tools import bench, machine, presets
from fastrnn.tools.validate import cells_by_names


def pytest_addoption(parser):
    group = parser.getgroup("fastrnn", "fastrnn benchmark cases")
    group.addoption("--fastrnn-shapes", default=",".join(bench.DEFAULT_SHAPES),
                    help="shapes as `fastrnn bench --shapes` takes them (default %(default)s)")
    group.addoption("--fastrnn-cells", default=None,
                    help=f"cells (default {','.join(bench.DEFAULT_CELLS)}; DeepBench sets use "
                    "their own)")
    group.addoption("--fastrnn-modes", default=None,
                    help="inference, training or both (default both)")
    group.addoption("--fastrnn-reference-shapes", default="tiny,small",
                    help="shape names at which the slow NumPy reference runs, or all "
                    "(default %(default)s)")
    group.addoption("--fastrnn-threads", type=int, default=2,
                    help="threads for every implementation (default %(default)s)")
    group.addoption("--fastrnn-t-scale", type=float, default=1.0,
                    help="multiply every shape's T by this (default %(default)s)")


def _cases(config):
    shapes = presets.select_shapes(config.getoption("--fastrnn-shapes"),
                                   config.getoption("--fastrnn-t-scale"))
    modes = config.getoption("--fastrnn-modes")
    modes = tuple(m.strip() for m in modes.split(",")) if modes else None
    cells = config.getoption("--fastrnn-cells")
    return bench.plan_cases(None if cells is None else cells_by_names(cells), shapes, modes)


def _implementations():
    if not hasattr(_implementations, "cached"):
        _implementations.cached = bench.implementations()
    return _implementations.cached


def pytest_report_header(config):
    impls, notes = _implementations()
    return [f"fastrnn benchmarks: {', '.join(i.label for i in impls)}; "
            f"{config.getoption('--fastrnn-threads')} threads; float32"] + notes


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = _cases(metafunc.config)
        metafunc.parametrize("case", cases, ids=[c.label.replace(" ", "-") for c in cases])
    if "impl" in metafunc.fixturenames:
        impls, _ = _implementations()
        metafunc.parametrize("impl", impls, ids=[i.key for i in impls])


@pytest.fixture(scope="session")
def threads(request):
    """Every runtime set to --fastrnn-threads threads for the whole session."""
    n = request.config.getoption("--fastrnn-threads")
    impls, _ = _implementations()
    machine.preload(impls)
    with machine.thread_settings(n):
        yield n


@pytest.fixture(scope="session")
def reference_shapes(request):
    names = request.config.getoption("--fastrnn-reference-shapes")
    return None if names == "all" else {n.strip() for n in names.split(",")}

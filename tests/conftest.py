"""pytest configuration: hypothesis profiles and the backends the reliability tests run on.

Hypothesis profiles:
    ci    1,000 examples per property, derandomized (a fixed seed per test, so every run checks
          the same examples), no deadline, no example database. Loaded when CI=true, and by
          default, so a plain ``pytest`` checks what CI checks.
    dev   the same with 100 examples, for quick local runs: HYPOTHESIS_PROFILE=dev pytest.

Parametrization: a test that takes ``backend_target`` runs once per backend that can run here
on NumPy arrays (``fastrnn.available_backends()``) plus the emulated CUDA backend from
``tests/cuda_emulation`` when it imports (skipped with the reason otherwise); a test that takes
``api_level`` runs on the functional API and on the layers (skipped while ``fastrnn.RNN`` is
missing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import fastrnn

settings.register_profile(
    "ci", max_examples=1000, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=100)

_in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.load_profile("ci" if _in_ci else os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass(frozen=True)
class BackendTarget:
    """A backend under test: ``backend`` is what the API's ``backend=`` takes."""

    name: str
    backend: Any
    fused: bool  # derives from FusedBackend: keeps cells.py's saved state, chunks inference

    def __str__(self):
        return self.name


def _cpu_targets():
    from fastrnn.backends.fused import FusedBackend

    targets = []
    for name in fastrnn.available_backends():
        backend = fastrnn.get_backend(name)
        if backend.library == "numpy":
            targets.append(BackendTarget(name, name, isinstance(backend, FusedBackend)))
    return targets


def _emulated_target():
    """The CPU emulation of the CUDA backend, or the reason it cannot be used. With
    FASTRNN_TEST_DEVICE=cupy the real backend on the GPU (under the same test id), and no
    reason: where it cannot run, the error stops the test session rather than skip its tests."""
    from fastrnn.backends.base import Backend

    try:
        from cuda_emulation import device_kind, emulated_backend, on_device
        on_gpu = device_kind() == "cupy"
    except Exception as exc:  # noqa: BLE001 - any failure means: not available here
        if os.environ.get("FASTRNN_TEST_DEVICE", "") not in ("", "emulation"):
            raise  # the GPU was asked for, or a device not known: an error, not a skip
        return None, f"the emulated CUDA backend (tests/cuda_emulation) is not importable: {exc!r}"
    if on_gpu:
        backend = emulated_backend()  # raises BackendUnavailable without CuPy or a GPU
        return BackendTarget("cuda-emulated", backend, on_device.is_fused(backend)), None
    backend = emulated_backend
    if not isinstance(backend, Backend) and callable(backend):
        backend = backend()
    if not isinstance(backend, Backend) or backend.library != "numpy":
        return None, f"cuda_emulation.emulated_backend is not a NumPy-array Backend: {backend!r}"
    return BackendTarget("cuda-emulated", backend, on_device.is_fused(backend)), None


CPU_TARGETS = _cpu_targets()
EMULATED_TARGET, EMULATED_SKIP_REASON = _emulated_target()


def fastest_cpu_target() -> BackendTarget:
    """Numba when it runs here, else the NumPy reference."""
    by_name = {t.name: t for t in CPU_TARGETS}
    return by_name.get("numba", by_name["numpy"])


def backend_params():
    params = [pytest.param(t, id=t.name) for t in CPU_TARGETS]
    if EMULATED_TARGET is not None:
        params.append(pytest.param(EMULATED_TARGET, id=EMULATED_TARGET.name))
    else:
        params.append(pytest.param(None, id="cuda-emulated",
                                   marks=pytest.mark.skip(reason=EMULATED_SKIP_REASON)))
    return params


def api_params():
    layers_missing = not hasattr(fastrnn, "RNN")
    return [pytest.param("functional", id="functional"),
            pytest.param("layers", id="layers", marks=pytest.mark.skipif(
                layers_missing, reason="fastrnn.RNN/LSTM/GRU (fastrnn/layers.py) not exported"))]


def _parametrized_by_mark(metafunc, name):
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc):
    for name, params in (("backend_target", backend_params), ("api_level", api_params)):
        if name in metafunc.fixturenames and not _parametrized_by_mark(metafunc, name):
            metafunc.parametrize(name, params())


@pytest.fixture(scope="session")
def fastest_cpu():
    """The fastest backend that runs here on NumPy arrays (for the long-sequence checks)."""
    return fastest_cpu_target()

"""The backend registry and the rule that picks a backend for a call.

Order: ``backend=`` on the call, else the process default (``use_backend`` or the environment
variable ``FASTRNN_BACKEND``), else the arrays: CuPy arrays go to ``"cupy"``, NumPy arrays to
``"numba"`` when it can run here, else ``"numpy"``. Backends are imported on first use, so
``import fastrnn`` never imports Numba's kernels or CuPy.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from .backends.base import Backend, BackendUnavailable

ENV_VAR = "FASTRNN_BACKEND"


# name -> (module, class, the third-party module it needs, what to install)
_BUILTIN = {
    "numpy": ("fastrnn.reference", "NumpyBackend", None, ""),
    "numba": ("fastrnn.backends.numba_cpu", "NumbaBackend", "numba", "pip install numba"),
    "cupy": ("fastrnn.backends.cupy_cuda", "CupyBackend", "cupy",
             "pip install 'fastrnn[cuda12]' (cupy-cuda12x) or 'fastrnn[cuda13]' "
             "(cupy-cuda13x), after the CUDA version of the driver, on a machine with an "
             "NVIDIA GPU"),
}
_registered: dict = {}
_instances: dict = {}
_failures: dict = {}
_process_default = None


def register_backend(name: str, backend: Backend) -> None:
    """Make ``backend`` (a ``Backend`` instance) selectable as ``name``; replaces a previous one."""
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a fastrnn Backend instance, got {type(backend).__name__}")
    _registered[name] = backend
    _instances.pop(name, None)
    _failures.pop(name, None)


def unregister_backend(name: str) -> None:
    _registered.pop(name, None)


def known_backends() -> list:
    return list(_BUILTIN) + [n for n in _registered if n not in _BUILTIN]


def _installed(module: str) -> bool:
    if module in sys.modules:  # already imported (or blocked with None)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def _load(name: str) -> Backend:
    if name in _registered:
        return _registered[name]
    if name in _instances:
        return _instances[name]
    if name not in _BUILTIN:
        raise ValueError(f"backend must be one of {known_backends()}, got {name!r}")
    if name in _failures:
        raise BackendUnavailable(_failures[name])
    module, cls, needs, install = _BUILTIN[name]
    hint = f"; to use it: {install}" if install else ""
    if needs is not None and not _installed(needs):
        label = {"numba": "Numba", "cupy": "CuPy"}[needs]
        _failures[name] = f"backend {name!r} cannot run here: {label} is not installed{hint}"
        raise BackendUnavailable(_failures[name])
    # With the dependency installed, an ImportError in fastrnn's own backend code is a bug and
    # propagates: it must never turn silently into a fallback to another backend.
    try:
        backend = getattr(importlib.import_module(module), cls)()
    except BackendUnavailable as exc:
        _failures[name] = f"backend {name!r} cannot run here: {exc}{hint}"
        raise BackendUnavailable(_failures[name]) from exc
    _instances[name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises BackendUnavailable saying why it cannot run here."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a backend name (str), got {type(name).__name__}")
    return _load(name)


def unavailable_reasons() -> dict:
    """name -> why it cannot run here, for every known backend that cannot."""
    reasons = {}
    for name in known_backends():
        try:
            _load(name)
        except BackendUnavailable as exc:
            reasons[name] = str(exc)
    return reasons


def available_backends() -> list:
    """Names of the backends that can run here, in preference order."""
    return [n for n in known_backends() if n not in unavailable_reasons()]


class use_backend:
    """Set the process default backend; also a context manager that restores the previous one.

    ``use_backend(None)`` clears the default, so the arrays decide again.
    """

    def __init__(self, name):
        global _process_default
        if name is not None:
            get_backend(name)
        self._previous = _process_default
        _process_default = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _process_default
        _process_default = self._previous
        return False


def default_backend_name():
    """The process default: use_backend's, else FASTRNN_BACKEND's, else None."""
    if _process_default is not None:
        return _process_default
    return os.environ.get(ENV_VAR) or None


def select(backend, library: str) -> Backend:
    """Pick the backend for arrays of ``library`` ("numpy" or "cupy")."""
    name = backend if backend is not None else default_backend_name()
    if name is None:
        if library == "cupy":
            return get_backend("cupy")
        try:
            return get_backend("numba")
        except BackendUnavailable:
            return get_backend("numpy")
    chosen = get_backend(name)
    if chosen.library != library:
        label = name if isinstance(name, str) else chosen.name
        raise TypeError(
            f"backend {label!r} runs on {chosen.library} arrays, but the arrays given are "
            f"{library} arrays; pass {chosen.library} arrays or choose another backend")
    return chosen

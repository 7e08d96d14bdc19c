"""The Numba CPU backend (being written)."""
raise ImportError("the numba backend is not written yet")

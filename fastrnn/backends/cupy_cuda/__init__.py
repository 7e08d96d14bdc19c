"""The CuPy CUDA backend (being written)."""
raise ImportError("the cupy backend is not written yet")

"""The `fastrnn` command's tools, kept apart from the library core: shape presets, the runners
that call fastrnn and its peers (PyTorch, ONNX Runtime), `fastrnn validate`, `fastrnn bench` and
its report, and the command line itself. ``import fastrnn`` imports none of them."""

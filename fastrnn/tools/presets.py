"""Benchmark shapes and FLOP counts, defined once for `fastrnn bench` and benchmarks/.

Two kinds of shape sets:

- ``PRESETS``: five single shapes (T, B, I, H), run for every cell and mode asked for.
- ``DEEPBENCH``: Baidu DeepBench's published RNN problems (``code/kernels/rnn_problems.h``:
  the training set, the server inference set and the device inference set). Each DeepBench
  problem fixes its cell and its mode: "vanilla" is a ReLU RNN (DeepBench maps it to
  CUDNN_RNN_RELU), and the input size equals the hidden size, as in DeepBench's cuDNN
  benchmark. Their T (up to 1500 steps at H = 2816) is sized for GPUs; ``t_scale`` shrinks it
  for the CPU.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from ..cells import Cell

MODES = ("inference", "training")


class Shape(NamedTuple):
    """A problem size. ``cell`` and ``mode`` are set only where the shape fixes them (DeepBench)."""

    name: str
    T: int
    B: int
    I: int
    H: int
    cell: Optional[str] = None
    mode: Optional[str] = None


# (T, B, I, H)
PRESETS = {
    "tiny": Shape("tiny", 100, 1, 64, 64),
    "small": Shape("small", 100, 16, 128, 128),
    "medium": Shape("medium", 100, 32, 256, 256),
    "large": Shape("large", 100, 64, 512, 512),
    "xlarge": Shape("xlarge", 50, 64, 1024, 1024),
}


def forward_flops(cell: Cell, shape: Shape) -> int:
    """2*T*B*G*H*(I+H): the two GEMMs of the forward; the pointwise work (a variant's layer
    norm, peepholes, clip, zoneout included) is not counted. With an LSTM projection of
    proj_size P, W_hh is (4H, P) and h = W_hr (o tanh(c)) a third GEMM: 2*T*B*(4H*(I+P) + P*H).
    """
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    P = cell.variant.hidden_size(H)
    projection = P * H if cell.variant.proj_size else 0
    return 2 * T * B * (cell.gates * H * (I + P) + projection)


def weight_bytes(cell: Cell, shape: Shape, mode: str, itemsize: int = 4) -> int:
    """Bytes of recurrent weights one call reads, once per step: W_hh (G*H, P), and W_hr (P, H)
    with a projection, T times in inference and 2T in training (the backward's d_gh @ W_hh reads
    them again). The floor of a step's memory traffic when the weights are not cached."""
    H = shape.H
    P = cell.variant.hidden_size(H)
    per_step = cell.gates * H * P + (P * H if cell.variant.proj_size else 0)
    return per_step * itemsize * shape.T * (1 if mode == "inference" else 2)


def training_flops(cell: Cell, shape: Shape) -> int:
    """Forward plus backward, counted as three forwards."""
    return 3 * forward_flops(cell, shape)


def flops(cell: Cell, shape: Shape, mode: str) -> int:
    """The FLOPs of one call in ``mode`` ("inference" or "training")."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return forward_flops(cell, shape) if mode == "inference" else training_flops(cell, shape)


# ----------------------------------------------------------------------------------------------
# DeepBench (github.com/baidu-research/DeepBench, code/kernels/rnn_problems.h): per cell type,
# (hidden units H, batch sizes, time steps). The training set's GRU (2816, 32, 1500) problem is
# commented out there and left out here too.

_DEEPBENCH_CELL = {"vanilla": "rnn_relu", "lstm": "lstm", "gru": "gru"}

_DEEPBENCH_TRAIN = (
    ("vanilla", [(H, B, 50) for H in (1760, 2048, 2560) for B in (16, 32, 64, 128)]),
    ("lstm", [(H, B, 25) for H in (512, 1024, 2048, 4096) for B in (16, 32, 64, 128)]
     + [(1536, B, 50) for B in (8, 16, 32)] + [(256, B, 150) for B in (16, 32, 64)]),
    ("gru", [(2816, 32, T) for T in (750, 375, 187)]
     + [(H, 32, T) for H in (2048, 1536, 2560) for T in (1500, 750, 375, 187)]
     + [(512, 32, 1), (1024, 32, 1500), (1024, 64, 1500)]),
)

_DEEPBENCH_SERVER = (
    ("lstm", [(H, B, 25) for H in (512, 1024, 2048) for B in (1, 2, 4)]
     + [(1536, B, 50) for B in (1, 2, 4)] + [(256, B, 150) for B in (1, 2, 4)]),
    ("gru", [(H, B, T) for H in (2816, 2048, 1536, 2560) for B in (1, 2, 4)
             for T in (1500, 750, 375, 187)]
     + [(512, B, 1) for B in (1, 2, 4)] + [(1024, B, 1500) for B in (1, 2, 4)]),
)

_DEEPBENCH_DEVICE = (
    ("vanilla", [(32, 1, 672), (64, 1, 96)]),
    ("lstm", [(256, 1, 150)]),
)


def _deepbench_set(prefix, mode, table):
    return tuple(
        Shape(f"{prefix}-{kind}-H{H}-B{B}-T{T}", T, B, H, H, _DEEPBENCH_CELL[kind], mode)
        for kind, problems in table for H, B, T in problems)


DEEPBENCH = {
    "deepbench-train": _deepbench_set("db-train", "training", _DEEPBENCH_TRAIN),
    "deepbench-server": _deepbench_set("db-server", "inference", _DEEPBENCH_SERVER),
    "deepbench-device": _deepbench_set("db-device", "inference", _DEEPBENCH_DEVICE),
}


def scale_time(shape: Shape, t_scale: float) -> Shape:
    """``shape`` with T multiplied by ``t_scale`` (rounded, at least 1); the name keeps the
    original T and says the scale, so reports stay traceable to the published problem."""
    if not t_scale > 0:
        raise ValueError(f"t_scale must be > 0, got {t_scale!r}")
    if t_scale == 1:
        return shape
    T = max(1, round(shape.T * t_scale))
    return shape._replace(name=f"{shape.name}*{t_scale:g}", T=T)


_CUSTOM = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+)$")
SHAPE_NAMES = (*PRESETS, "all", *DEEPBENCH)


def custom_shape(name: str) -> Optional[Shape]:
    """The shape ``name`` writes as TxBxIxH, or None when it is not written so; ValueError
    when a size is 0."""
    custom = _CUSTOM.match(name)
    if not custom:
        return None
    T, B, I, H = (int(v) for v in custom.groups())
    if min(T, B, I, H) < 1:
        raise ValueError("T, B, I and H must all be >= 1")
    return Shape(name, T, B, I, H)


def select_shapes(spec, t_scale: float = 1.0) -> list:
    """Shapes from a comma-separated string or a list of names: preset names (tiny ... xlarge),
    DeepBench set names (deepbench-train, deepbench-server, deepbench-device), "all" (the five
    presets) or custom sizes written TxBxIxH (e.g. 100x16x128x128)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    shapes = []
    for name in names:
        if not name:
            continue
        try:
            custom = custom_shape(name)
        except ValueError as exc:
            raise ValueError(f"shape {name!r}: {exc}") from None
        if name == "all":
            shapes.extend(PRESETS.values())
        elif name in PRESETS:
            shapes.append(PRESETS[name])
        elif name in DEEPBENCH:
            shapes.extend(DEEPBENCH[name])
        elif custom:
            shapes.append(custom)
        else:
            raise ValueError(
                f"unknown shape {name!r}; expected one of {list(PRESETS)}, {list(DEEPBENCH)}, "
                f"'all' or TxBxIxH such as 100x16x128x128")
    if not shapes:
        raise ValueError(f"no shapes selected by {spec!r}")
    return [scale_time(s, t_scale) for s in shapes]

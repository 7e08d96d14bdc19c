"""Benchmark shapes and FLOP counts, defined once for `fastrnn bench` and benchmarks/."""

from __future__ import annotations

from typing import NamedTuple

from .cells import Cell


class Shape(NamedTuple):
    name: str
    T: int
    B: int
    I: int
    H: int


# (T, B, I, H)
PRESETS = {
    "tiny": Shape("tiny", 100, 1, 64, 64),
    "small": Shape("small", 100, 16, 128, 128),
    "medium": Shape("medium", 100, 32, 256, 256),
    "large": Shape("large", 100, 64, 512, 512),
    "xlarge": Shape("xlarge", 50, 64, 1024, 1024),
}


def forward_flops(cell: Cell, shape: Shape) -> int:
    """2*T*B*G*H*(I+H): the two GEMMs of the forward; the pointwise work is not counted."""
    return 2 * shape.T * shape.B * cell.gates * shape.H * (shape.I + shape.H)


def training_flops(cell: Cell, shape: Shape) -> int:
    """Forward plus backward, counted as three forwards."""
    return 3 * forward_flops(cell, shape)

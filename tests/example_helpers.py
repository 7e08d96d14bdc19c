"""Running the programs in examples/ from tests: each is imported as a module from that folder
and its ``main(argv)`` called with a tiny configuration."""

from __future__ import annotations

import importlib
import pathlib
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def example(name: str):
    """The module examples/NAME.py (examples/ is put on sys.path once, as running a script
    there would)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def fell_by(losses, window: int = 5) -> float:
    """How much the mean of the last ``window`` losses fell below the first loss, as a
    fraction of it; asserts there are enough steps to tell."""
    assert len(losses) > 2 * window, f"only {len(losses)} steps ran"
    tail = sum(losses[-window:]) / window
    return 1.0 - tail / losses[0]

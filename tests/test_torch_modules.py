"""fastrnn.torch modules against torch.nn: outputs, states and every gradient, on random
configurations, and the fixed checks (gradcheck, retain_graph, double backward, state dicts,
dropout, convert, errors, a training run)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from torch_helpers import (KINDS, assert_same, forward_backward, make_input,  # noqa: E402
                           twins)

pytestmark = pytest.mark.torch


def _configs(n, seed=13):
    """n random configurations, each input mode and dtype equally often."""
    rng = random.Random(seed)
    modes = ["padded", "unbatched", "packed_sorted", "packed_unsorted"]
    out = []
    for i in range(n):
        out.append(dict(
            kind=list(KINDS)[i % 4], mode=modes[(i // 4) % 4],
            dtype=(torch.float32, torch.float64)[(i // 2) % 2],
            num_layers=rng.randint(1, 3), bidirectional=rng.random() < 0.5,
            batch_first=rng.random() < 0.5, bias=rng.random() < 0.75,
            hx=rng.random() < 0.5, T=rng.randint(1, 6), B=rng.randint(1, 4),
            I=rng.randint(1, 5), H=rng.randint(1, 6), seed=i))
    return out


@pytest.mark.parametrize("cfg", _configs(48), ids=lambda c: (
    f"{c['kind']}-{c['mode']}-{str(c['dtype'])[6:]}-L{c['num_layers']}"
    f"{'-bi' if c['bidirectional'] else ''}{'-bf' if c['batch_first'] else ''}"
    f"{'' if c['bias'] else '-nobias'}{'-hx' if c['hx'] else ''}"))
def test_matches_torch_nn(cfg):
    torch.manual_seed(cfg["seed"])
    dtype = cfg["dtype"]
    ref, ours = twins(cfg["kind"], cfg["I"], cfg["H"], cfg["num_layers"], bias=cfg["bias"],
                      batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"],
                      dtype=dtype)
    gen = torch.Generator().manual_seed(cfg["seed"])
    inp, leaf = make_input(cfg["mode"], cfg["T"], cfg["B"], cfg["I"], dtype,
                           cfg["batch_first"], gen)
    hx = None
    if cfg["hx"]:
        D = 2 if cfg["bidirectional"] else 1
        shape = (cfg["num_layers"] * D,) + (() if cfg["mode"] == "unbatched" else (cfg["B"],))
        make = lambda: torch.randn(shape + (cfg["H"],), dtype=dtype, generator=gen,  # noqa
                                   requires_grad=True)
        hx = (make(), make()) if cfg["kind"] == "lstm" else make()
    expected = forward_backward(ref, inp, leaf, hx, cfg["seed"])
    actual = forward_backward(ours, inp, leaf, hx, cfg["seed"])
    assert_same(expected, actual, dtype)

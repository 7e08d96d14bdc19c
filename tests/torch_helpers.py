"""What the fastrnn.torch tests share: building a torch.nn module and its fastrnn twin, and
running both forward and backward with the same cotangents."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn.torch as ft

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
KINDS = {"rnn_tanh": (torch.nn.RNN, ft.RNN, {}), "rnn_relu": (torch.nn.RNN, ft.RNN,
                                                              {"nonlinearity": "relu"}),
         "lstm": (torch.nn.LSTM, ft.LSTM, {}), "gru": (torch.nn.GRU, ft.GRU, {})}


def twins(kind, *args, **kwargs):
    """(torch.nn module, fastrnn.torch module with the same state dict)."""
    ref_cls, cls, extra = KINDS[kind]
    ref = ref_cls(*args, **extra, **kwargs)
    ours = cls(*args, **extra, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_input(mode, T, B, I, dtype, batch_first, gen):
    """(build, leaf): build() gives a fresh input for forward, whose gradient reaches the
    tensor ``leaf``. mode: padded, unbatched, packed_sorted or packed_unsorted."""
    if mode == "unbatched":
        x = torch.randn(T, I, dtype=dtype, generator=gen, requires_grad=True)
        return (lambda: x), x
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype, generator=gen,
                    requires_grad=True)
    if mode == "padded":
        return (lambda: x), x
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    if mode == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    return (lambda: pack_padded_sequence(x, lengths, batch_first=batch_first,
                                         enforce_sorted=mode == "packed_sorted")), x


def forward_backward(module, build, leaf, hx, gen_seed):
    """Forward, then backward of sum(out * r) + sum(state * r') with fixed random r; returns
    a dict of every output and gradient (input, each hx part, each parameter)."""
    for p in module.parameters():
        p.grad = None
    for t in [leaf, *([] if hx is None else (hx if isinstance(hx, tuple) else (hx,)))]:
        t.grad = None
    out, state = module(build(), hx)
    states = state if isinstance(state, tuple) else (state,)
    data = out.data if isinstance(out, PackedSequence) else out
    gen = torch.Generator().manual_seed(gen_seed)
    loss = (data * torch.randn(data.shape, dtype=data.dtype, generator=gen)).sum()
    for s in states:
        loss = loss + (s * torch.randn(s.shape, dtype=s.dtype, generator=gen)).sum()
    loss.backward()
    result = {"out": data, **{f"state{i}": s for i, s in enumerate(states)},
              "d_input": leaf.grad}
    if isinstance(out, PackedSequence):
        for name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            result[name] = getattr(out, name)
    if hx is not None:
        for i, h in enumerate(hx if isinstance(hx, tuple) else (hx,)):
            result[f"d_hx{i}"] = h.grad
    for name, p in module.named_parameters():
        result[f"d_{name}"] = p.grad
    return result


def assert_same(expected, actual, dtype):
    assert expected.keys() == actual.keys()
    for name, e in expected.items():
        a = actual[name]
        assert type(a) is type(e) and (a is None) == (e is None), name
        if e is not None:
            assert a.dtype == e.dtype and a.shape == e.shape, (name, a.dtype, a.shape, e.shape)
            torch.testing.assert_close(a, e, **(TOL[dtype] if e.is_floating_point() else {}),
                                       msg=lambda m: f"{name}: {m}")

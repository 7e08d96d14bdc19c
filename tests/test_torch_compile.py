"""torch.compile(fullgraph=True) traces the fastrnn modules (custom ops with fake
implementations and registered autograd) without a graph break and gives the eager numbers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from torch_helpers import twins  # noqa: E402

pytestmark = pytest.mark.torch


def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: schema, fake implementation and autograd registration agree with
    the real kernels."""
    from fastrnn.torch import ops

    torch.manual_seed(0)
    m = ft.GRU(3, 4, 2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(4, 2, 4, dtype=torch.float64)
    args = (x, [h0], list(m.parameters()), torch.tensor([5, 3]), [], "gru", 4, 2, True, True,
            0.0, True, "")
    torch.library.opcheck(ops.stack_forward, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


@pytest.mark.parametrize("kind,batch_first", [("lstm", True), ("gru", False)])
def test_compile_fullgraph_matches_eager(kind, batch_first):
    torch._dynamo.reset()
    torch.manual_seed(0)
    _, model = twins(kind, 3, 5, 2, bidirectional=True, batch_first=batch_first)
    head = torch.nn.Linear(10, 1)

    def step(x):
        y, _ = model(x)
        return head(y).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 6, 3)
    losses, grads = [], []
    for fn in (step, compiled):
        for p in (*model.parameters(), *head.parameters()):
            p.grad = None
        loss = fn(x)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_compile_module_with_inductor_no_graph_break():
    """The module itself under the default (inductor) backend; explain() finds no break."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ft.LSTM(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, fullgraph=True)
    y, (h, c) = compiled(x)
    y0, (h0, c0) = model(x)
    for a, b in ((y, y0), (h, h0), (c, c0)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_custom_op_autograd_matches_the_eager_path():
    """The registered autograd of the op (what torch.compile traces) and the eager
    autograd.Function give the same gradients, recomputation after consumption included."""
    from fastrnn.torch import ops

    torch.manual_seed(0)
    m = ft.LSTM(3, 4, 2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    zeros = [torch.zeros(2, 2, 4, dtype=torch.float64) for _ in range(2)]
    params = list(m.parameters())
    y, finals, _ = ops.stack_forward(x, zeros, params, torch.tensor([5, 2]), [], "lstm", 4, 2,
                                     False, False, 0.0, True, "")
    loss = (y ** 2).sum() + finals[1].sum()
    op_grads = torch.autograd.grad(loss, [x, *params], retain_graph=True)
    again = torch.autograd.grad(loss, [x, *params])  # the state was consumed: recomputed
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2]))
    out, (_, c) = m(packed)
    y_eager, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
    eager = torch.autograd.grad((y_eager ** 2).sum() + c.sum(), [x, *params])
    for a, b, c in zip(op_grads, again, eager):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b, c, rtol=1e-10, atol=1e-10)

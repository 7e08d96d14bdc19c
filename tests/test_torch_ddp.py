"""DistributedDataParallel over a model holding a fastrnn.torch.LSTM: 2 processes (gloo,
127.0.0.1), each on half the batch; the averaged gradients equal one process's over the whole
batch. The children are joined with a timeout and killed on failure, so the test cannot hang."""

from __future__ import annotations

import socket

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

TIMEOUT_S = 120


class Regressor(torch.nn.Module):
    def __init__(self):
        import fastrnn.torch as ft

        super().__init__()
        self.rnn = ft.LSTM(3, 8, 2, batch_first=True, dtype=torch.float64)
        self.head = torch.nn.Linear(8, 1, dtype=torch.float64)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _setup():
    """The model (same weights in every process) and the whole batch."""
    torch.manual_seed(0)
    model = Regressor()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, 3, generator=gen, dtype=torch.float64)
    return model, x, torch.randn(8, 1, generator=gen, dtype=torch.float64)


def _grads(model, x, target):
    torch.nn.functional.mse_loss(model(x), target).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank, port, queue):
    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=2)
        model, x, target = _setup()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        half = slice(4 * rank, 4 * rank + 4)
        grads = _grads(ddp, x[half], target[half])  # DDP averages them over the 2 processes
        # as NumPy arrays, pickled by value: a tensor would travel as shared memory that the
        # exiting child takes with it
        queue.put((rank, {n.removeprefix("module."): g.numpy() for n, g in grads.items()}))
        dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        queue.put((rank, repr(exc)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one():
    import queue as queue_module

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, queue), daemon=True)
             for rank in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=TIMEOUT_S) for _ in procs)
        for p in procs:
            p.join(timeout=30)
    except queue_module.Empty:
        pytest.fail(f"the DDP workers gave no result within {TIMEOUT_S} s")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    for rank, grads in results.items():
        assert not isinstance(grads, str), f"rank {rank} failed: {grads}"
    model, x, target = _setup()
    expected = _grads(model, x, target)
    for rank, grads in results.items():
        assert grads.keys() == expected.keys()
        for name, g in grads.items():
            torch.testing.assert_close(torch.from_numpy(g), expected[name], rtol=1e-10, atol=1e-10,
                                       msg=lambda m: f"rank {rank} {name}: {m}")

"""What sequence lengths cost: fastrnn with lengths vs without, and vs torch on packed input.

    python benchmarks/lengths.py [--rounds N] [--threads N] [--cells lstm,gru,rnn]

T = 200, B = 32, I = H = 128, float32, lengths drawn uniformly from [T/4, T] with a fixed seed
(about 62 % of the steps valid). Per cell and mode (training = forward + backward with dy = ones,
inference = forward only) it times, in one process with the rounds interleaved, fastrnn's
functional API with and without lengths, and torch.nn.LSTM / GRU / RNN on the same lengths as a
PackedSequence (pack_padded_sequence, enforce_sorted=False; packing is inside the timed call, as
a user pays it). It prints medians and the ratios with/without lengths and fastrnn/torch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastrnn

T, B, I, H = 200, 32, 128, 128
FORWARD = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward, "rnn": fastrnn.rnn_forward}
BACKWARD = {"lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward,
            "rnn": fastrnn.rnn_backward}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def draw_lengths(seed=0):
    return np.random.default_rng(seed).integers(T // 4, T + 1, size=B).astype(np.int64)


def fastrnn_call(cell, params, lengths, training):
    forward, backward = FORWARD[cell], BACKWARD[cell]
    dy = np.ones((T, B, H), np.float32)

    def call():
        out = forward(*params, lengths=lengths, training=training)
        if training:
            backward(out[-1], dy)
    return call


def torch_call(cell, params, lengths, training):
    import torch

    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](I, H)
    with torch.no_grad():
        for name, value in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                               params[1:5]):
            getattr(module, name).copy_(torch.from_numpy(value))
    x = torch.from_numpy(params[0]).requires_grad_(training)
    lens = torch.from_numpy(lengths)
    pack, unpack = torch.nn.utils.rnn.pack_padded_sequence, torch.nn.utils.rnn.pad_packed_sequence

    def call():
        with torch.set_grad_enabled(training):
            y, _ = unpack(module(pack(x, lens, enforce_sorted=False))[0], total_length=T)
            if training:
                y.backward(torch.ones_like(y))
    return call


def timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for fastrnn and torch (default: fastrnn's default)")
    parser.add_argument("--cells", default="lstm,gru,rnn")
    args = parser.parse_args()
    import torch

    if args.threads:
        fastrnn.set_num_threads(args.threads)
    torch.set_num_threads(args.threads or fastrnn.get_num_threads())
    lengths = draw_lengths()
    fill = lengths.sum() / (T * B)
    print(f"T={T} B={B} I={I} H={H} float32, lengths uniform in [{T // 4}, {T}], "
          f"fill {fill:.0%}, threads {torch.get_num_threads()}, {args.rounds} rounds (medians)")
    print(f"{'cell':5} {'mode':9} {'no lengths':>11} {'lengths':>9} {'torch packed':>13} "
          f"{'with/without':>13} {'torch/fastrnn':>14}")
    for cell in args.cells.split(","):
        G = GATES[cell]
        rng = np.random.default_rng(1)
        params = [(rng.standard_normal(s) * 0.1).astype(np.float32)
                  for s in ((T, B, I), (G * H, I), (G * H, H), (G * H,), (G * H,))]
        for training in (True, False):
            calls = {"plain": fastrnn_call(cell, params, None, training),
                     "lengths": fastrnn_call(cell, params, lengths, training),
                     "torch": torch_call(cell, params, lengths, training)}
            for call in calls.values():  # compile, plan, warm the caches
                call()
                call()
            times = {k: [] for k in calls}
            for _ in range(args.rounds):
                for k, call in calls.items():
                    times[k].append(timed(call))
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(f"{cell:5} {'training' if training else 'inference':9} "
                  f"{med['plain']:9.2f}ms {med['lengths']:7.2f}ms {med['torch']:11.2f}ms "
                  f"{med['lengths'] / med['plain']:13.2f} "
                  f"{med['torch'] / med['lengths']:13.2f}x")


if __name__ == "__main__":
    main()

"""The character-level language model of char_rnn.py on fastrnn's NumPy layers alone: no
PyTorch. Same corpus, split, model, truncated BPTT, clipping and metric (``val_bpc``); the
gradients of the embedding and the output layer are written out by hand, the LSTM's come from
``fastrnn.LSTM.backward``, and a small Adam updates the arrays in place.

    python examples/numpy_char_rnn.py --seconds 120
"""

from __future__ import annotations

import math

import numpy as np

import common
from char_rnn import Chunks, Corpus, docstring_corpus, options, streams, train_and_sample

import fastrnn

NAME = "numpy_char_rnn"


def arguments():
    return options(common.parser("char_rnn.py's LSTM language model on fastrnn's NumPy layers "
                                 "alone (no torch).", seconds=120, impls=("fastrnn",)))


class CharModel:
    """embedding (V, E) -> fastrnn.LSTM -> linear (V, H); parameters and gradients as dicts of
    arrays (float32 for training; float64 lets a test check the gradients against finite
    differences), the LSTM's under ``rnn.``."""

    def __init__(self, vocabulary, args, rng, dtype=np.float32):
        self.rnn = fastrnn.LSTM(args.embedding, args.hidden, args.layers, dtype=dtype,
                                seed=int(rng.integers(2**31)))
        bound = 1 / math.sqrt(args.hidden)  # torch.nn.Linear's initialisation
        self.own = {"embed": rng.standard_normal((vocabulary, args.embedding)),
                    "out_w": rng.uniform(-bound, bound, (vocabulary, args.hidden)),
                    "out_b": rng.uniform(-bound, bound, vocabulary)}
        self.own = {k: v.astype(dtype) for k, v in self.own.items()}
        self.own_grads = {k: np.zeros_like(v) for k, v in self.own.items()}

    def parameters(self):
        return {**self.own, **{f"rnn.{k}": v for k, v in self.rnn.named_parameters().items()}}

    def grads(self):
        return {**self.own_grads, **{f"rnn.{k}": g for k, g in self.rnn.grads.items()}}

    def logits(self, codes, hx):
        """codes (T, B) -> logits (T, B, V), hx after the chunk, and y for backward."""
        y, hx = self.rnn(self.own["embed"][codes], hx)
        return y @ self.own["out_w"].T + self.own["out_b"], hx, y

    def loss_and_grads(self, codes, targets, hx):
        """Mean cross-entropy (nats) of one chunk and every gradient, starting from zero."""
        logits, hx, y = self.logits(codes, hx)
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        count = targets.size
        picked = np.take_along_axis(p, targets[..., None], axis=-1)
        loss = -float(np.log(picked).sum()) / count
        d_logits = p  # softmax - one_hot(target), over the count of predictions
        np.put_along_axis(d_logits, targets[..., None], picked - 1, axis=-1)
        d_logits /= count
        for g in self.own_grads.values():
            g[...] = 0
        self.rnn.zero_grad()
        flat = d_logits.reshape(-1, d_logits.shape[-1])
        self.own_grads["out_w"] += flat.T @ y.reshape(-1, y.shape[-1])
        self.own_grads["out_b"] += flat.sum(axis=0)
        dx, _ = self.rnn.backward(d_logits @ self.own["out_w"])
        np.add.at(self.own_grads["embed"], codes, dx)
        return loss, hx


class Adam:
    """torch.optim.Adam's update (no weight decay), in place on the parameter arrays."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads):
        self.t += 1
        b1, b2 = self.betas
        for name, p in self.params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            step = self.lr / (1 - b1 ** self.t)
            p -= step * m / (np.sqrt(v / (1 - b2 ** self.t)) + self.eps)


def bits_per_character(model, codes, batch, chunk=1000):
    model.rnn.eval()
    data, total, count, hx = streams(codes, batch), 0.0, 0, None
    for start in range(0, len(data) - 1, chunk):
        inputs, targets = data[start:start + chunk], data[start + 1:start + chunk + 1]
        logits, hx, _ = model.logits(inputs[:len(targets)], hx)
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        total += float((log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0])
                       .sum())
        count += targets.size
    model.rnn.train()
    return total / count / math.log(2)


def sample(model, prime, length, temperature, rng):
    """Feed ``prime`` through ``LSTM.step`` (eval mode: one compiled call per step), then
    draw ``length`` codes."""
    model.rnn.eval()
    hx, codes = None, list(prime)
    for code in prime[:-1]:
        _, hx = model.rnn.step(model.own["embed"][[code]], hx)
    for _ in range(length):
        y, hx = model.rnn.step(model.own["embed"][[codes[-1]]], hx)
        logits = (y[0] @ model.own["out_w"].T + model.own["out_b"]) / temperature
        p = np.exp(logits - logits.max())
        codes.append(int(rng.choice(len(p), p=p / p.sum())))
    model.rnn.train()
    return codes[len(prime):]


def run(impl, args):
    fastrnn.set_num_threads(args.threads)
    corpus = Corpus(docstring_corpus(), args.corpus_chars)
    rng = np.random.default_rng(args.seed)
    model = CharModel(len(corpus.alphabet), args, rng)
    optimizer = Adam(model.parameters(), args.lr)
    chunks = Chunks(corpus.train, args.batch, args.bptt)
    state = {"hx": None}

    def step(i):
        inputs, targets, fresh = chunks(i)
        loss, state["hx"] = model.loss_and_grads(inputs, targets, None if fresh else state["hx"])
        grads = model.grads()
        fastrnn.clip_grad_norm(grads, args.clip)
        optimizer.step(grads)
        return loss

    return train_and_sample(NAME, impl, args, corpus, step,
                            lambda: bits_per_character(model, corpus.valid, args.batch),
                            lambda prime: sample(model, prime, args.sample, args.temperature,
                                                 rng))


def main(argv=None):
    args = arguments().parse_args(argv)
    return common.main(NAME, run, args, f"char-RNN on fastrnn's NumPy layers: LSTM "
                                        f"{args.layers}x{args.hidden}")


if __name__ == "__main__":
    main()

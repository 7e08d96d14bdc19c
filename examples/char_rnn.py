"""Character-level language model on English text: a 2-layer LSTM trained with truncated
backpropagation through time, then sampled one character at a time.

Data: the docstrings of Python's standard library (modules, their classes and functions, and
the classes' methods), gathered at run time with ``inspect``: about 0.9 MB of real English on
every machine, with no download. The text is cut in a fixed place: the first 90 % trains, the
last 10 % validates.

Model: embedding -> LSTM (2 layers, hidden 256) -> linear to the characters. The training
text is read as ``--batch`` parallel streams; each step takes the next ``--bptt`` (100)
characters of every stream and starts from the state the last chunk left (detached: truncated
BPTT). Gradients are clipped to norm 1. The metric is the validation cross-entropy in bits per
character (``val_bpc``). At the end the model samples text at ``--temperature`` through the
module's one-step path (fastrnn.torch's compiled ``step``; torch.nn runs forward over one step).

    python examples/char_rnn.py --impl both --seconds 120
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
import warnings

import numpy as np

import common

NAME = "char_rnn"
# Imported for their docstrings: all the standard library but modules that open windows,
# print on import or only exist for tests.
SKIPPED_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo",
                   "test", "lib2to3", "ensurepip", "venv", "pydoc_data"}
VALIDATION_FRACTION = 0.1


def docstring_corpus() -> str:
    """The docstrings of the standard library's modules, classes, functions and methods, in
    module-name order; characters outside printable ASCII become '?'."""
    with warnings.catch_warnings():  # deprecated modules and attributes warn when read
        warnings.simplefilter("ignore")
        docs = _docstrings()
    text = "\n\n".join(d for d in docs if d)
    return "".join(c if c == "\n" or " " <= c <= "~" else "?" for c in text)


def _docstrings():
    docs = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIPPED_MODULES:
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # platform-only modules (winreg, ...) and optional C extensions
            continue
        docs.append(inspect.getdoc(module))
        for _, obj in inspect.getmembers(module):
            if not ((inspect.isclass(obj) or inspect.isfunction(obj))
                    and getattr(obj, "__module__", None) == name):
                continue
            docs.append(inspect.getdoc(obj))
            if inspect.isclass(obj):
                # Own methods only: getdoc would repeat inherited docstrings once per class.
                for _, member in sorted(vars(obj).items()):
                    function = getattr(member, "__func__", member)
                    if inspect.isfunction(function) and function.__doc__:
                        docs.append(inspect.cleandoc(function.__doc__))
    return docs


class Corpus:
    """The text as integer codes, its alphabet and the fixed train/validation split."""

    def __init__(self, text: str, limit: int | None = None):
        text = text[:limit] if limit else text
        self.alphabet = sorted(set(text))
        index = {c: i for i, c in enumerate(self.alphabet)}
        codes = np.fromiter((index[c] for c in text), np.int64, len(text))
        cut = int(len(codes) * (1 - VALIDATION_FRACTION))
        self.train, self.valid = codes[:cut], codes[cut:]
        self.index = index

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index.get(c, self.index.get("?", 0)) for c in text], np.int64)

    def decode(self, codes) -> str:
        return "".join(self.alphabet[int(i)] for i in codes)


def streams(codes: np.ndarray, batch: int) -> np.ndarray:
    """The text as ``batch`` contiguous streams side by side, (length, batch): a chunk of rows
    continues each stream where the last chunk stopped, so the state can be carried over."""
    length = len(codes) // batch
    return codes[:length * batch].reshape(batch, length).T.copy()


def options(p):
    """The model, data and sampling options of both char-RNNs, added to the parser ``p``."""
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=100, help="characters per truncated-BPTT chunk")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipped to this")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validations")
    p.add_argument("--corpus-chars", type=int, default=None,
                   help="use only the first N characters of the corpus (for quick runs)")
    p.add_argument("--sample", type=int, default=300, help="characters to sample at the end")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--prime", default="Return the ")
    return p


def arguments():
    return options(common.parser("A character-level LSTM language model on the standard "
                                 "library's docstrings (truncated BPTT, gradient clipping, "
                                 "sampling).", seconds=120))


class Chunks:
    """Truncated BPTT over the training text: ``batch`` streams read ``bptt`` characters at a
    time; chunk i's (inputs, targets) and whether it starts a new pass over the text (whose
    state then starts from zeros). ``array`` turns the streams into the model's arrays."""

    def __init__(self, codes, batch, bptt, array=np.asarray):
        self.data, self.bptt = array(streams(codes, batch)), bptt
        self.count = (len(self.data) - 1) // bptt

    def __call__(self, i):
        start = (i % self.count) * self.bptt
        return (self.data[start:start + self.bptt], self.data[start + 1:start + self.bptt + 1],
                start == 0)


def train_and_sample(name, impl, args, corpus, step, bits, sample) -> common.Result:
    """Train with ``step(i) -> loss`` in the time budget, validating with ``bits()``; then
    print ``sample(prime codes) -> codes`` after the prime. The result line's metric is the last
    validation's bits per character."""
    curve = common.train(common.Curve(impl), step, seconds=args.seconds, max_steps=args.max_steps,
                         evaluate=bits, eval_every=args.eval_every,
                         items_per_step=args.batch * args.bptt, items="chars", quiet=args.quiet)
    text = corpus.decode(sample(corpus.encode(args.prime).tolist()))
    print(f"--- {impl} sample at temperature {args.temperature} ---\n{args.prime}{text}\n---")
    return common.Result(name, curve, "val_bpc", curve.eval_value[-1],
                         curve.per_second(args.batch * args.bptt), "chars",
                         payload=args.prime + text)


def build(impl, args, vocabulary):
    import torch
    from torch import nn

    class CharModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocabulary, args.embedding)
            self.rnn = common.recurrent(impl, "LSTM")(args.embedding, args.hidden, args.layers)
            self.out = nn.Linear(args.hidden, vocabulary)

        def forward(self, codes, hx=None):
            y, hx = self.rnn(self.embed(codes), hx)
            return self.out(y), hx

        @torch.no_grad()
        def sample(self, prime, length, temperature, generator):
            """Feed ``prime`` (codes), then draw ``length`` codes one step at a time."""
            hx, codes = None, list(prime)
            for code in prime[:-1]:
                _, hx = common.rnn_step(self.rnn, self.embed(torch.tensor([code])), hx)
            for _ in range(length):
                y, hx = common.rnn_step(self.rnn, self.embed(torch.tensor([codes[-1]])), hx)
                p = torch.softmax(self.out(y)[0] / temperature, dim=0)
                codes.append(int(torch.multinomial(p, 1, generator=generator)))
            return codes[len(prime):]

    return CharModel()


def bits_per_character(model, codes, batch, chunk=1000):
    """The mean cross-entropy (bits) of predicting each character of ``codes`` from the ones
    before it, in eval mode: ``batch`` streams read in chunks of ``chunk`` with the state
    carried through."""
    import torch

    model.eval()
    data = torch.from_numpy(streams(codes, batch))
    total, count, hx = 0.0, 0, None
    with torch.no_grad():
        for start in range(0, len(data) - 1, chunk):
            inputs, targets = data[start:start + chunk], data[start + 1:start + chunk + 1]
            logits, hx = model(inputs[:len(targets)], hx)
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
            count += targets.numel()
    model.train()
    return total / count / math.log(2)


def run(impl, args):
    import torch

    corpus = Corpus(docstring_corpus(), args.corpus_chars)
    model = build(impl, args, len(corpus.alphabet))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    chunks = Chunks(corpus.train, args.batch, args.bptt, torch.from_numpy)
    state = {"hx": None}

    def step(i):
        inputs, targets, fresh = chunks(i)
        logits, hx = model(inputs, None if fresh else state["hx"])
        state["hx"] = tuple(h.detach() for h in hx)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        return loss.item()

    def sample(prime):
        model.eval()
        return model.sample(prime, args.sample, args.temperature,
                            torch.Generator().manual_seed(args.seed))

    return train_and_sample(NAME, impl, args, corpus, step,
                            lambda: bits_per_character(model, corpus.valid, args.batch), sample)


def main(argv=None):
    args = arguments().parse_args(argv)
    return common.main(NAME, run, args, f"char-RNN: LSTM {args.layers}x{args.hidden} on the "
                                        f"standard library's docstrings")


if __name__ == "__main__":
    main()

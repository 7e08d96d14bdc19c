"""Date normalisation with an attentional encoder-decoder: dates written the ways people write
them ("3 March 1997", "march 3, 1997", "03/03/97", "Mon, 3 Mar 1997", "3rd of March 1997",
...) translated character by character into ISO 8601 ("1997-03-03").

Data: made here with ``datetime`` and the English month and day names of the ``calendar``
module, from a seeded NumPy Generator: distinct dates between 1950 and 2049 (so a two-digit
year names one year), each written in one of 13 formats in original, lower or upper case;
the held-out dates are disjoint from the training dates.

Model (Luong et al. 2015, "general" score, without input feeding): a bidirectional LSTM
encoder over the padded, packed sources of different lengths; a unidirectional LSTM decoder,
started from the encoder's final states, that runs over the whole teacher-forced target prefix
in one call while training; each decoder output h_t attends over the encoder outputs e_s with
score h_t . W e_s (softmax over the source's real positions only), and
tanh(W_c [context; h_t]) gives the logits of the next character. Without input feeding the
decoder's input does not depend on the attention, which is what lets one fused call run the
whole target sequence. Evaluation decodes greedily, one step at a time through
``common.rnn_step`` (fastrnn's compiled ``step``), exactly 10 characters (YYYY-MM-DD), and
reports the share of held-out dates whose 10 characters are all right (``exact_match``).

    python examples/seq2seq_attention.py                 # fastrnn.torch
    python examples/seq2seq_attention.py --impl both     # and torch.nn, same seed and weights
"""

from __future__ import annotations

import calendar
import datetime

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import common

NAME = "seq2seq_attention"
FIRST_DAY, LAST_DAY = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
TARGET_LENGTH = len("YYYY-MM-DD")
PAD = 0
# Every character a formatted date can contain; index 0 is padding.
SOURCE_CHARS = "\0" + " ',-./" + "0123456789" + "".join(map(chr, range(65, 91))) + "".join(
    map(chr, range(97, 123)))
TARGET_CHARS = "0123456789-"
START = len(TARGET_CHARS)          # the decoder's first input; never an output

# The calendar module's names are English unless the program sets LC_TIME, which none here
# does; they are read once, at import.
MONTH, MONTH_ABBR = list(calendar.month_name), list(calendar.month_abbr)
DAY, DAY_ABBR = list(calendar.day_name), list(calendar.day_abbr)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Numbers are in one order per separator (month/day with "/", year.month.day or day.month.year
# with ".", told apart by where the four-digit year is), so every string names one date.
FORMATS = (
    lambda d: f"{d.day} {MONTH[d.month]} {d.year}",                         # 3 March 1997
    lambda d: f"{MONTH[d.month]} {d.day}, {d.year}",                        # March 3, 1997
    lambda d: f"{MONTH[d.month]} {d.day} {d.year}",                         # March 3 1997
    lambda d: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",              # 03/03/97
    lambda d: f"{d.month}/{d.day}/{d.year}",                                # 3/3/1997
    lambda d: f"{DAY_ABBR[d.weekday()]}, {d.day} {MONTH_ABBR[d.month]} {d.year}",  # Mon, 3 Mar 1997
    lambda d: f"{DAY[d.weekday()]}, {MONTH[d.month]} {d.day}, {d.year}",   # Monday, March 3, 1997
    lambda d: f"{d.year}.{d.month:02d}.{d.day:02d}",                        # 1997.03.03
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",                        # 03.03.1997
    lambda d: f"{d.year}{d.month:02d}{d.day:02d}",                          # 19970303
    lambda d: f"{ordinal(d.day)} of {MONTH[d.month]} {d.year}",             # 3rd of March 1997
    lambda d: f"{d.day}-{MONTH_ABBR[d.month]}-{d.year % 100:02d}",          # 3-Mar-97
    lambda d: f"{DAY[d.weekday()]} {ordinal(d.day)} {MONTH_ABBR[d.month]} '{d.year % 100:02d}",
)
CASES = (str, str.lower, str.upper)


def make_data(seed: int, n_train: int, n_test: int):
    """(train, test), each (sources (N, S) padded int64, lengths (N,), targets (N, 10)), from
    n_train + n_test distinct dates, each written in a randomly drawn format and case."""
    rng = np.random.default_rng(seed)
    n_days = (LAST_DAY - FIRST_DAY).days + 1
    if n_train + n_test > n_days:
        raise ValueError(f"--train + --test must be at most {n_days} distinct dates, got "
                         f"{n_train + n_test}")
    offsets = rng.choice(n_days, size=n_train + n_test, replace=False)
    formats = rng.integers(len(FORMATS), size=offsets.size)
    cases = rng.integers(len(CASES), size=offsets.size)
    sources, targets = [], []
    for offset, f, c in zip(offsets.tolist(), formats.tolist(), cases.tolist()):
        date = FIRST_DAY + datetime.timedelta(days=offset)
        sources.append([SOURCE_CHARS.index(ch) for ch in CASES[c](FORMATS[f](date))])
        targets.append([TARGET_CHARS.index(ch) for ch in date.isoformat()])
    lengths = torch.tensor([len(s) for s in sources])
    padded = torch.full((len(sources), int(lengths.max())), PAD, dtype=torch.long)
    for i, s in enumerate(sources):
        padded[i, :len(s)] = torch.tensor(s)
    targets = torch.tensor(targets)
    test, train = slice(0, n_test), slice(n_test, None)
    return tuple((padded[part], lengths[part], targets[part]) for part in (train, test))


class Seq2Seq(nn.Module):
    def __init__(self, impl: str, embed: int, hidden: int):
        super().__init__()
        LSTM = common.recurrent(impl, "LSTM")
        self.source_embed = nn.Embedding(len(SOURCE_CHARS), embed, padding_idx=PAD)
        self.encoder = LSTM(embed, hidden, bidirectional=True)
        # The decoder starts from a learned mix of both directions' final states: the forward
        # direction ends after reading the whole source, the backward one after re-reading it
        # from the end to its first character, and which of them carries the year, month or day
        # depends on the format; a sum would fix the mix, a Linear learns it (tanh keeps h in
        # the range an LSTM's h has).
        self.bridge_h = nn.Linear(2 * hidden, hidden)
        self.bridge_c = nn.Linear(2 * hidden, hidden)
        self.target_embed = nn.Embedding(len(TARGET_CHARS) + 1, embed)   # + START
        self.decoder = LSTM(embed, hidden)
        self.score = nn.Linear(2 * hidden, hidden, bias=False)   # W of h_t . W e_s
        self.combine = nn.Linear(3 * hidden, hidden)              # W_c of tanh(W_c [c_t; h_t])
        self.out = nn.Linear(hidden, len(TARGET_CHARS))

    def encode(self, sources, lengths):
        """Encoder outputs (S, B, 2H), their keys W e_s (S, B, H), the mask of real positions
        (B, S), and the decoder's initial (h, c), each (1, B, H)."""
        x = self.source_embed(sources.T)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, (h_n, c_n) = self.encoder(packed)
        enc, _ = pad_packed_sequence(y)
        mask = torch.arange(enc.shape[0])[None, :] < lengths[:, None]
        h0 = torch.tanh(self.bridge_h(torch.cat([h_n[0], h_n[1]], -1)))
        c0 = self.bridge_c(torch.cat([c_n[0], c_n[1]], -1))
        return (enc, self.score(enc), mask), (h0[None], c0[None])

    def attend(self, dec, memory):
        """Logits (T, B, V) of decoder outputs dec (T, B, H) attending over memory."""
        enc, keys, mask = memory
        scores = torch.einsum("tbh,sbh->bts", dec, keys)
        weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        context = torch.einsum("bts,sbk->tbk", weights, enc)
        return self.out(torch.tanh(self.combine(torch.cat([context, dec], -1))))

    def forward(self, sources, lengths, previous):
        """Logits (T, B, V) of each target character given the characters before it: previous
        (B, T) starts with START (teacher forcing; the decoder runs over all T in one call)."""
        memory, state = self.encode(sources, lengths)
        dec, _ = self.decoder(self.target_embed(previous.T), state)
        return self.attend(dec, memory)

    def greedy(self, sources, lengths):
        """Greedy decoding of TARGET_LENGTH characters, one decoder step at a time: the
        characters (B, T) and their logits (T, B, V)."""
        memory, state = self.encode(sources, lengths)
        token = torch.full((sources.shape[0],), START, dtype=torch.long)
        tokens, logits = [], []
        for _ in range(TARGET_LENGTH):
            h, state = common.rnn_step(self.decoder, self.target_embed(token), state)
            logits.append(self.attend(h[None], memory)[0])
            token = logits[-1].argmax(-1)
            tokens.append(token)
        return torch.stack(tokens, 1), torch.stack(logits)


def teacher_input(targets):
    """START followed by all target characters but the last, (B, T)."""
    return torch.cat([torch.full_like(targets[:, :1], START), targets[:, :-1]], 1)


def exact_match(model, data) -> float:
    sources, lengths, targets = data
    model.eval()
    with torch.no_grad():
        tokens, _ = model.greedy(sources, lengths)
    model.train()
    return (tokens == targets).all(1).float().mean().item()


def run(impl: str, args) -> common.Result:
    train_data, test_data = make_data(args.seed, args.train, args.test)
    model = Seq2Seq(impl, args.embed, args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = np.random.default_rng(args.seed + 1)    # the same batches for both impls
    sources, lengths, targets = train_data

    def step(_):
        pick = torch.from_numpy(batches.integers(len(targets), size=args.batch))
        s, n, t = sources[pick], lengths[pick], targets[pick]
        logits = model(s[:, :int(n.max())], n, teacher_input(t))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.T.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        return loss.item()

    curve = common.train(common.Curve(impl), step, seconds=args.seconds,
                         max_steps=args.max_steps, evaluate=lambda: exact_match(model, test_data),
                         eval_every=args.eval_every, items_per_step=args.batch, items="dates",
                         quiet=args.quiet)
    return common.Result(NAME, curve, "exact_match", curve.eval_value[-1],
                         curve.per_second(args.batch), "dates",
                         {"train": args.train, "test": args.test, "hidden": args.hidden})


def arguments():
    p = common.parser(__doc__.splitlines()[0], seconds=60)
    p.add_argument("--train", type=int, default=20000, help="training dates")
    p.add_argument("--test", type=int, default=1000, help="held-out dates")
    p.add_argument("--embed", type=int, default=32, help="character embedding size")
    p.add_argument("--hidden", type=int, default=64,
                   help="hidden size of the decoder and of each encoder direction")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    return p


def main(argv=None):
    args = arguments().parse_args(argv)
    return common.main(NAME, run, args, "Dates to ISO 8601: attentional LSTM encoder-decoder")


if __name__ == "__main__":
    main()

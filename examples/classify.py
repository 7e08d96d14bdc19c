"""Many-to-one classification of variable-length sequences: who is speaking?

Data: JapaneseVowels (UCI, as shipped inside the sktime package, so nothing is downloaded).
Nine male speakers each said the vowel pair /ae/; every utterance is a sequence of 12
linear-prediction cepstrum coefficients per frame, 7 to 29 frames long. The task is to name
the speaker (9 classes). The official split is kept: 270 training utterances (30 per speaker)
and 370 test utterances (24 to 88 per speaker). Features are standardised with the training
set's mean and standard deviation.

Model: a bidirectional GRU reads each utterance as a PackedSequence (padded batch + lengths,
``enforce_sorted=False``), so the padding never enters the recurrence; the final hidden states
of the last layer's two directions, concatenated, go through one Linear layer to the 9 class
scores. Cross-entropy, Adam, shuffled mini-batches (a generator seeded from --seed, so both
implementations see the same batches); the test accuracy is evaluated after every epoch.

Run:
    python examples/classify.py                   # fastrnn.torch.GRU
    python examples/classify.py --impl both       # fastrnn.torch.GRU, then torch.nn.GRU
    python examples/classify.py --epochs 20 --hidden 32
Training stops after --epochs epochs or --seconds of training, whichever comes first.
"""

from __future__ import annotations

import common

NAME = "classify"
N_CLASSES = 9
PURPOSE = "classify.py's JapaneseVowels data"
EVAL_BATCH = 1024


def load():
    """The official train and test splits as (sequences, labels): sequences a list of
    (length, 12) float32 arrays standardised with the training statistics, labels int64 0..8."""
    import numpy as np

    datasets = common.require("sktime.datasets", PURPOSE)
    splits = []
    for split in ("train", "test"):
        # X is a DataFrame with one column per feature; each cell holds that feature's series
        # of one utterance (all 12 of an utterance have the same length).
        X, y = datasets.load_japanese_vowels(split=split)
        sequences = [np.stack([np.asarray(X.iloc[i, j], dtype=np.float64)
                               for j in range(X.shape[1])], axis=1) for i in range(len(X))]
        labels = np.asarray(y).astype(np.int64) - 1  # the labels are the strings "1".."9"
        splits.append((sequences, labels))
    frames = np.concatenate(splits[0][0])  # every training frame, for the statistics
    mean, std = frames.mean(axis=0), frames.std(axis=0)
    return [([((s - mean) / std).astype(np.float32) for s in seqs], labels)
            for seqs, labels in splits]


def as_tensors(sequences, labels):
    """(padded (T_max, N, ...), lengths (N,), labels (N,)) as torch tensors."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    padded = pad_sequence([torch.from_numpy(s) for s in sequences])
    lengths = torch.tensor([len(s) for s in sequences])
    return padded, lengths, torch.from_numpy(labels)


def classifier(impl, n_inputs, hidden, layers, n_classes, vocabulary=0):
    """The bidirectional GRU (of ``impl``) and its Linear head, as one module. With a
    ``vocabulary`` size the inputs are token ids (0 the padding), embedded in ``n_inputs``
    dimensions first."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocabulary, n_inputs, padding_idx=0) if vocabulary \
                else None
            self.rnn = common.recurrent(impl, "GRU")(n_inputs, hidden, layers,
                                                     bidirectional=True)
            self.head = nn.Linear(2 * hidden, n_classes)

        def forward(self, padded, lengths):
            if self.embed is not None:
                padded = self.embed(padded)
            packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
            _, h_n = self.rnn(packed)  # (layers * 2, N, hidden), in the batch's own order
            # h_n[-2] is the last layer's forward direction after each sequence's last frame,
            # h_n[-1] its backward direction after the first frame.
            return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))

    return Classifier()


def fit(name, impl, args, model, train, test) -> common.Result:
    """Train ``model`` on the (sequences, labels) of ``train`` with cross-entropy, Adam and
    shuffled mini-batches; its accuracy on ``test`` after every epoch is the curve's metric."""
    import torch
    from torch import nn

    x, lengths, y = as_tensors(*train)
    tx, tlengths, ty = as_tensors(*test)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    batches = common.Batches(len(y), args.batch, args.seed)

    def logits(padded, b_lengths):
        # Cut the padding to the batch's longest sequence: the packed run never reads it, but
        # the padded tensor would otherwise be copied in full.
        return model(padded[:int(b_lengths.max())], b_lengths)

    def step(i):
        batch = batches(i)
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(logits(x[:, batch], lengths[batch]), y[batch])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        return loss.item()

    def accuracy():
        model.eval()
        with torch.no_grad():  # in slices of EVAL_BATCH, to bound the memory
            predicted = torch.cat([logits(tx[:, i:i + EVAL_BATCH], tlengths[i:i + EVAL_BATCH])
                                   for i in range(0, len(ty), EVAL_BATCH)]).argmax(dim=1)
        return (predicted == ty).float().mean().item()

    curve = common.train(common.Curve(impl), step, seconds=args.seconds,
                         max_steps=batches.steps(args.epochs, args.max_steps),
                         evaluate=accuracy, eval_every=batches.per_epoch,
                         items_per_step=args.batch, items="sequences", quiet=args.quiet)
    return common.Result(name, curve, "test_accuracy", curve.eval_value[-1],
                         curve.per_second(args.batch), "sequences",
                         extra={"epochs": round(curve.steps / batches.per_epoch, 2)})


def run(impl, args) -> common.Result:
    train, test = load()
    model = classifier(impl, train[0][0].shape[1], args.hidden, args.layers, N_CLASSES)
    return fit(NAME, impl, args, model, train, test)


def model_and_fit_options(p, *, batch, epochs, lr, hidden=64):
    """The model's sizes and fit's options, added to the parser ``p`` with an example's
    defaults."""
    p.add_argument("--hidden", type=int, default=hidden, help="GRU hidden size per direction")
    p.add_argument("--layers", type=int, default=1, help="GRU layers")
    p.add_argument("--batch", type=int, default=batch, help="sequences per mini-batch")
    p.add_argument("--epochs", type=int, default=epochs, help="stop after this many epochs")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    return p


def arguments():
    return model_and_fit_options(common.parser(__doc__.splitlines()[0], seconds=120.0),
                                 batch=16, epochs=30, lr=3e-3)


def main(argv=None):
    args = arguments().parse_args(argv)
    return common.main(NAME, run, args, "JapaneseVowels speakers: bidirectional GRU over "
                                        "packed sequences")


if __name__ == "__main__":
    main()

"""examples/char_rnn.py and examples/numpy_char_rnn.py, in tiny configurations."""

import math

import numpy as np
import pytest

from example_helpers import example, fell_by

# 2 layers of 32, chunks of 20 characters, 8 streams over the first 50,000 characters.
TINY = ["--hidden", "32", "--embedding", "16", "--bptt", "20", "--batch", "8",
        "--corpus-chars", "50000", "--lr", "1e-2", "--sample", "40", "--quiet"]


def test_corpus_is_the_standard_library_docstrings():
    char_rnn = example("char_rnn")
    text = char_rnn.docstring_corpus()
    assert len(text) > 500_000  # about 0.9 MB on CPython 3.10-3.13
    assert "Return the" in text and set(text) <= {chr(c) for c in range(32, 127)} | {"\n"}
    corpus = char_rnn.Corpus(text, 10_000)
    assert len(corpus.train) == 9000 and len(corpus.valid) == 1000
    assert corpus.decode(corpus.encode("Return the")) == "Return the"
    streams = char_rnn.streams(np.arange(10), 3)
    assert streams.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


@pytest.mark.torch
def test_char_rnn_learns(tmp_path):
    [result] = example("char_rnn").main(TINY + ["--max-steps", "150", "--eval-every", "75",
                                                "--plot", str(tmp_path / "c.png")])
    # From ln(alphabet) = 4.5 nats per character (uniform) to below the 3.2 nats of 30 % less:
    # English characters' unigram entropy is about 2.9 nats, which 150 steps pass.
    assert fell_by(result.curve.step_loss) >= 0.3
    alphabet_bits = math.log2(len(example("char_rnn").Corpus(
        example("char_rnn").docstring_corpus(), 50_000).alphabet))
    assert result.metric == "val_bpc" and result.value < alphabet_bits - 1.5
    assert result.curve.eval_value[-1] < result.curve.eval_value[0]
    assert len(result.payload) == len("Return the ") + 40
    assert (tmp_path / "c.png").stat().st_size > 10_000
    line = result.line()
    assert line.startswith("result: example=char_rnn impl=fastrnn metric=val_bpc value=")
    assert "steps=150" in line


@pytest.mark.torch
def test_char_rnn_same_losses_on_both_impls():
    fastrnn_run, torch_run = example("char_rnn").main(
        TINY + ["--impl", "both", "--max-steps", "4", "--eval-every", "1000", "--plot", "none"])
    assert (fastrnn_run.curve.impl, torch_run.curve.impl) == ("fastrnn", "torch")
    np.testing.assert_allclose(fastrnn_run.curve.step_loss, torch_run.curve.step_loss,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fastrnn_run.value, torch_run.value, rtol=1e-4, atol=1e-5)
    assert fastrnn_run.curve.step_loss[-1] < fastrnn_run.curve.step_loss[0]


def test_numpy_char_rnn_learns(tmp_path):
    [result] = example("numpy_char_rnn").main(
        TINY + ["--max-steps", "150", "--eval-every", "75", "--plot", str(tmp_path / "n.png")])
    assert fell_by(result.curve.step_loss) >= 0.3  # the same figure as char_rnn's
    assert result.metric == "val_bpc" and result.curve.eval_value[-1] < \
        result.curve.eval_value[0]
    assert "impl=fastrnn" in result.line() and (tmp_path / "n.png").exists()


def test_numpy_char_rnn_gradients_match_finite_differences():
    """The hand-written gradients of the embedding and the output layer, and the LSTM's, in
    float64 against central differences."""
    numpy_char_rnn = example("numpy_char_rnn")
    args = numpy_char_rnn.arguments().parse_args(["--hidden", "5", "--embedding", "3",
                                                  "--layers", "2"])
    rng = np.random.default_rng(1)
    model = numpy_char_rnn.CharModel(7, args, rng, dtype=np.float64)
    codes, targets = rng.integers(0, 7, (4, 2)), rng.integers(0, 7, (4, 2))
    hx = tuple(rng.standard_normal((2, 2, 5)) for _ in range(2))
    model.loss_and_grads(codes, targets, hx)
    grads = {k: g.copy() for k, g in model.grads().items()}
    for name, p in model.parameters().items():
        for index in [tuple(rng.integers(0, n) for n in p.shape) for _ in range(3)]:
            keep, eps = p[index], 1e-5
            p[index] = keep + eps
            up, _ = model.loss_and_grads(codes, targets, hx)
            p[index] = keep - eps
            down, _ = model.loss_and_grads(codes, targets, hx)
            p[index] = keep
            numeric = (up - down) / (2 * eps)
            assert abs(grads[name][index] - numeric) <= 1e-6 * max(abs(numeric), 1e-3), name


def test_adam_matches_the_textbook_update():
    Adam = example("numpy_char_rnn").Adam
    p = np.array([1.0, -2.0])
    opt = Adam({"p": p}, lr=0.1)
    g = np.array([0.5, -0.25])
    opt.step({"p": g})
    # First step: m_hat = g, v_hat = g^2, so each moves by lr * sign(g) (up to eps).
    np.testing.assert_allclose(p, [0.9, -1.9], rtol=1e-7)

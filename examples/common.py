"""What every example shares: the command line, the choice between fastrnn and torch.nn, the
time-bounded training loop with its progress bar, the learning-curve picture and the result
line.

An example defines ``run(impl, args) -> Result`` and calls ``main(...)``; with ``--impl both`` it
runs once per implementation, from the same seed, data and initial weights (fastrnn.torch's
modules draw their parameters as torch.nn's do, so the same seed gives the same numbers).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import pathlib
import time
from dataclasses import dataclass, field

IMPLS = ("fastrnn", "torch")


class MissingPackage(ImportError):
    """A package that ships an example's data, or that the example needs, is not installed."""


def require(module: str, purpose: str):
    """Import ``module`` or say which package is missing, what for, and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(module.split(".")[0], purpose) from exc


def package_file(package: str, path: str, purpose: str) -> pathlib.Path:
    """The file ``path`` (relative to the package's folder) that the installed top-level
    ``package`` ships, found without importing the package: a package kept only for its data
    may no longer import (its code may need an old version of a dependency)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(package, purpose)
    found = pathlib.Path(list(spec.submodule_search_locations)[0]) / path
    if not found.is_file():
        raise MissingPackage(f"{purpose} needs {path} from the package {package!r}, which is "
                             f"installed without it (looked for {found})")
    return found


def _missing(package, purpose):
    return MissingPackage(f"{purpose} needs the package {package!r}, which is not installed; "
                          f"install the examples' packages with: pip install -e '.[examples]'")


def parser(description: str, seconds: float, impls=IMPLS) -> argparse.ArgumentParser:
    """The options every example takes; an example adds its own model and data sizes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--impl", choices=(*impls, "both") if len(impls) > 1 else impls,
                   default="fastrnn",
                   help="fastrnn.torch modules, torch.nn modules, or both one after the other "
                        "(each with the whole time budget)")
    p.add_argument("--seconds", type=float, default=seconds,
                   help="training time per implementation, evaluation excluded "
                        "(default %(default)s)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps even if time is left")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for both torch and fastrnn (default: all cores)")
    p.add_argument("--plot", default=None,
                   help="where to save the PNG of the learning curves (default NAME.png in "
                        "the working directory; 'none' saves nothing)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def recurrent(impl: str, kind: str):
    """The class ``kind`` ("RNN", "LSTM" or "GRU") of fastrnn.torch or of torch.nn."""
    if impl == "fastrnn":
        import fastrnn.torch as modules
    elif impl == "torch":
        from torch import nn as modules
    else:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return getattr(modules, kind)


def rnn_step(rnn, x_t, hx):
    """One time step of a recurrent module: fastrnn's compiled ``step`` when it has one, else
    its forward over a sequence of length 1. x_t (B, input_size)."""
    if hasattr(rnn, "step"):
        return rnn.step(x_t, hx)
    batch_first = getattr(rnn, "batch_first", False)
    y, hx = rnn(x_t.unsqueeze(1 if batch_first else 0), hx)
    return y.squeeze(1 if batch_first else 0), hx


class Batches:
    """Shuffled mini-batches of ``n`` items, epoch after epoch: ``batches(i)`` is the index
    tensor of step i (steps taken in order from 0, as ``train`` does). The order comes from a
    generator of its own seeded with ``seed``, so both implementations see the same batches
    whatever else draws random numbers; an epoch's last batch may be smaller."""

    def __init__(self, n: int, size: int, seed: int):
        import torch

        self.n, self.size = n, size
        self.per_epoch = -(-n // size)
        self._generator = torch.Generator().manual_seed(seed)
        self._order = None

    def __call__(self, step: int):
        import torch

        i = step % self.per_epoch
        if i == 0:
            self._order = torch.randperm(self.n, generator=self._generator)
        return self._order[i * self.size:(i + 1) * self.size]

    def steps(self, epochs: int, max_steps=None) -> int:
        """The steps of ``epochs`` epochs, or ``max_steps`` if that is fewer."""
        total = epochs * self.per_epoch
        return total if max_steps is None else min(total, max_steps)


@dataclass
class Curve:
    """What one training run recorded: the loss of every step and each evaluation, against
    the training time (evaluation excluded)."""
    impl: str
    step_seconds: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)
    eval_seconds: list = field(default_factory=list)
    eval_value: list = field(default_factory=list)
    first_step_seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.step_loss)

    @property
    def seconds(self) -> float:
        return self.step_seconds[-1] if self.step_seconds else 0.0

    def per_second(self, items_per_step) -> float:
        """Training throughput: items per second over the timed steps (all but the first)."""
        return items_per_step * (self.steps - 1) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Result:
    """One implementation's run: its curve, the final metric and extra key=value fields for
    the result line."""
    example: str
    curve: Curve
    metric: str
    value: float
    items_per_second: float
    items: str
    extra: dict = field(default_factory=dict)
    payload: object = None  # what the example shows besides the line (samples, forecasts)

    def line(self) -> str:
        fields = {"example": self.example, "impl": self.curve.impl, "metric": self.metric,
                  "value": f"{self.value:.6g}", "seconds": f"{self.curve.seconds:.1f}",
                  "steps": self.curve.steps,
                  **{k: (f"{v:.6g}" if isinstance(v, float) else v)
                     for k, v in self.extra.items()}}
        return "result: " + " ".join(f"{k}={v}" for k, v in fields.items())


def train(curve: Curve, step, *, seconds, max_steps=None, evaluate=None, eval_every=None,
          items_per_step=1, items="steps", quiet=False) -> Curve:
    """Call ``step(i) -> loss`` until ``seconds`` of training time (the first step's not
    counted) or ``max_steps`` steps, recording each loss in ``curve``; every ``eval_every``
    steps and at the end, record ``evaluate()`` (its time is not counted either). Shows a tqdm
    bar with the loss and the speed."""
    from tqdm import tqdm

    bar = tqdm(total=max_steps, desc=curve.impl, unit="step", disable=quiet, mininterval=1.0)
    elapsed = 0.0
    while elapsed < seconds and (max_steps is None or curve.steps < max_steps):
        start = time.perf_counter()
        loss = float(step(curve.steps))
        if curve.steps == 0:
            # The first step is not timed, for either implementation: on a fresh machine it
            # includes Numba's compilation of the kernels (cached on disk after).
            curve.first_step_seconds = time.perf_counter() - start
        else:
            elapsed += time.perf_counter() - start
        curve.step_seconds.append(elapsed)
        curve.step_loss.append(loss)
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.4f}, {curve.per_second(items_per_step):,.0f} "
                            f"{items}/s", refresh=False)
        if evaluate is not None and eval_every and curve.steps % eval_every == 0:
            _record(curve, evaluate, bar)
    if evaluate is not None and (not curve.eval_seconds or curve.eval_seconds[-1] != elapsed):
        _record(curve, evaluate, bar)
    bar.close()
    return curve


def _record(curve, evaluate, bar):
    value = float(evaluate())
    curve.eval_seconds.append(curve.seconds)
    curve.eval_value.append(value)
    bar.write(f"{curve.impl}: step {curve.steps}, {curve.seconds:.1f} s, eval {value:.4f}")


def plot(results, path, title, extra_panel=None):
    """Save the learning curves of ``results`` to ``path``: the training loss and the evaluated
    metric against training time, one line per implementation; ``extra_panel(ax)`` draws a
    third panel (the forecast against the truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if extra_panel else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    for r in results:
        c = r.curve
        axes[0].plot(c.step_seconds, _smooth(c.step_loss), label=c.impl)
        axes[1].plot(c.eval_seconds, c.eval_value, marker="o", label=c.impl)
    axes[0].set(xlabel="training seconds", ylabel="training loss (smoothed)")
    axes[1].set(xlabel="training seconds", ylabel=results[0].metric)
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend()
    if extra_panel:
        extra_panel(axes[2])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _smooth(values, width=20):
    """A running mean over the last ``width`` steps (mini-batch losses are noisy)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def main(name, run, args, title, extra_panel=None):
    """Run ``run(impl, args)`` for the chosen implementation(s), print the result lines, save
    the picture; returns the Results."""
    try:
        import torch
    except ImportError:  # the NumPy example runs without torch
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
    impls = IMPLS if args.impl == "both" else (args.impl,)
    results = []
    for impl in impls:
        if torch is not None:
            torch.manual_seed(args.seed)
        results.append(run(impl, args))
    for r in results:
        print(f"{r.curve.impl}: {r.items_per_second:,.0f} {r.items}/s over {r.curve.steps} "
              f"steps (the first, not timed, took {r.curve.first_step_seconds:.2f} s)")
    for r in results:
        print(r.line())
    path = args.plot or f"{name}.png"
    if path != "none":
        plot(results, path, title, extra_panel and (lambda ax: extra_panel(ax, results)))
        print(f"learning curves saved to {path}")
    return results

"""Sequence lengths as packed rows, so that padding costs no arithmetic.

A backend that sets ``FusedBackend.packs_lengths`` runs a call with lengths on the batch ordered
by length, longest first, and with its per-step arrays (x_proj, d_gx, what training keeps per
step) in the layout of PyTorch's PackedSequence data: step t holds only its n_t valid rows, one
after the other. Every GEMM above the recurrence then runs over sum(lengths) rows instead of
T*B, and within every step the valid rows of any range of the ordered batch are its first ones,
so the recurrent product of a block of rows runs over a prefix of it.

The order is a stable sort, so ties keep the caller's order and every run is the same.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np


class Steps(NamedTuple):
    """Which (step, row) pairs a recurrence computes, and where each one's row is.

    lengths  (B,) int64 in descending order: step t of batch row b is valid when t < lengths[b]
    rows     (T+1,) int64: the valid rows of step t, b = 0..rows[t+1]-rows[t]-1, are rows
             rows[t] + b of every per-step array; rows[T] is their number
    """

    lengths: np.ndarray
    rows: np.ndarray

    @staticmethod
    def full(T, B):
        """Every step of every row valid: the padded layout, rows[t] = t*B. Kept per (T, B):
        nothing writes a Steps' arrays."""
        return _full_steps(T, B)

    @staticmethod
    def of(lengths, T):
        """The steps of descending ``lengths`` (each in 0..T)."""
        valid = np.count_nonzero(np.arange(T)[:, None] < lengths[None, :], axis=1)
        return Steps(lengths, np.concatenate([[0], np.cumsum(valid)]).astype(np.int64))

    def window(self, t0, t1):
        """The steps t0..t1-1 alone, rows counted from the first of step t0."""
        return Steps((self.lengths - t0).clip(0, t1 - t0), self.rows[t0:t1 + 1] - self.rows[t0])

    def index(self):
        """(rows[T],) int64: where each packed row stands in a padded (T*B) array of the
        ordered batch, t*B + b."""
        T, B = len(self.rows) - 1, len(self.lengths)
        counts = np.diff(self.rows)
        first = np.repeat(self.rows[:-1], counts)
        return np.repeat(np.arange(T, dtype=np.int64) * B, counts) + (
            np.arange(self.rows[-1], dtype=np.int64) - first)

    def balanced(self, groups):
        """(groups+1,) bounds of ``groups`` consecutive ranges of batch rows with about equal
        sums of lengths (the work of a row group, which runs its rows through every step on its
        own), each range at least one row long when the batch has enough rows."""
        B = len(self.lengths)
        before = np.concatenate([[0], np.cumsum(self.lengths)])
        targets = before[-1] * np.arange(groups + 1) / groups
        bounds = np.searchsorted(before, targets, side="left")
        bounds[0], bounds[-1] = 0, B
        for r in range(1, groups):  # non-empty ranges: at least r rows before, groups-r after
            bounds[r] = min(max(bounds[r], bounds[r - 1] + 1), B - (groups - r))
        return bounds.astype(np.int64)


class Packing:
    """The batch order and packed layout of one call with lengths.

    order    (B,): the caller's row at each position of the ordered batch
    inverse  (B,): the position of each of the caller's rows in the ordered batch
    steps    Steps of the ordered batch
    source   (rows[T],): each packed row's row in the caller's (T*B) layout, t*B + order[b]
    """

    def __init__(self, lengths, T):
        lengths = np.asarray(lengths, np.int64)
        self.order = np.argsort(-lengths, kind="stable").astype(np.int64)
        self.inverse = np.argsort(self.order, kind="stable")
        self.steps = Steps.of(lengths[self.order], T)
        index = self.steps.index()
        B = len(lengths)
        self.source = index - index % B + self.order[index % B]

    @property
    def count(self):
        """The number of valid (step, row) pairs, sum(lengths)."""
        return int(self.steps.rows[-1])

    def pack(self, a, t0=0, t1=None):
        """The valid rows of steps t0..t1 of a (T, B, ...) array in the caller's order, packed:
        (rows[t1] - rows[t0], ...)."""
        rows = self.steps.rows
        t1 = len(rows) - 1 if t1 is None else t1
        return a.reshape((-1,) + a.shape[2:])[self.source[rows[t0]:rows[t1]]]

    def unpack(self, packed, T, B):
        """(T, B, ...) in the caller's order from packed rows: zeros at invalid steps."""
        out = np.zeros((T * B,) + packed.shape[1:], packed.dtype)
        out[self.source] = packed
        return out.reshape((T, B) + packed.shape[1:])

    def ordered(self, a, axis):
        """a with its batch axis in the packed order (a copy)."""
        return np.take(a, self.order, axis=axis)

    def restored(self, a, axis):
        """a with its batch axis back in the caller's order (a copy)."""
        return np.take(a, self.inverse, axis=axis)


@lru_cache(maxsize=64)
def _full_steps(T, B):
    return Steps(np.full(B, T, np.int64), np.arange(T + 1, dtype=np.int64) * B)

"""CUDA Graphs of the time loop: one direction's forward or backward loop, captured once per
shape and replayed by later calls, one graph launch instead of one or more launches per step.

Opt-in (``CupyBackend.cuda_graphs``, default ``tuning.cuda_graphs`` = False): its speed has not
been measured on a GPU, so the per-step launches stay the default.

A graph binds device pointers, so a replay runs on arrays this cache owns, never on a caller's:

- an entry holds a C-contiguous twin ("staged") of every array the loop reads (x_proj, W_hh,
  the states, lengths, the variant's parameters; in backward every array of the saved state)
  and of the array it fills (y, d_gx), and the Recurrence bound to them with its own buffers
  (bind_forward / bind_backward allocate everything, so the captured loop allocates nothing);
- each call copies its inputs into the twins, runs the loop (the first call of a shape runs it
  directly, which also loads the kernels and initialises cuBLAS before the capture; later calls
  launch the graph), copies the filled array into the caller's, and returns what the loop made
  (h_n, the saved state, the gradients) detached from the entry: the caller's own arrays where
  a result is a twin of one, otherwise copies. So a later call, which overwrites the entry,
  cannot change anything an earlier call returned.

The key is everything the captured launches depend on: the cell (variant included), the
direction of the loop, training, the launch configuration, the device and stream, and the
shape and dtype of every input (None where absent). A new key captures a new graph; at most
``size`` entries are kept, the least recently used dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import fields, is_dataclass, replace


class GraphCache:
    """The captured loops of one backend: ``run`` replays the entry of a key, capturing it the
    first time."""

    def __init__(self, device, size=8):
        self.device, self.xp, self.size = device, device.xp, size
        self.entries = OrderedDict()
        self.lock = threading.Lock()  # one call at a time fills an entry's twins

    def run(self, key, inputs, outputs, start):
        """The result of a loop over ``inputs`` (a dict of arrays, None, and Saved or dicts of
        them) that fills ``outputs`` (name -> the caller's array). ``start(staged, filled)``
        binds a new Recurrence to an entry's twins and returns its (loop, result) methods."""
        key = (key, self.device.capture_key(), self._signature(inputs),
               self._signature(outputs))
        with self.lock:
            entry = self.entries.pop(key, None)
            if entry is None:
                entry = self._capture(inputs, outputs, start)
            else:
                self.stage(entry, inputs)
                entry.graph.launch()
            self.entries[key] = entry  # the most recently used last
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
            for name, a in outputs.items():
                self.xp.copyto(a, entry.filled[name])
            originals = {id(twin): a for twin, a in zip(self._arrays(entry.staged),
                                                        self._arrays(inputs))}
            originals.update({id(entry.filled[name]): a for name, a in outputs.items()})
            return self._detached(entry.result(), originals)

    def _capture(self, inputs, outputs, start):
        xp = self.xp
        entry = _Entry()
        entry.staged = self._mapped(lambda a: xp.empty(a.shape, a.dtype), inputs)
        entry.filled = {name: xp.empty(a.shape, a.dtype) for name, a in outputs.items()}
        loop, entry.result = start(entry.staged, entry.filled)
        self.stage(entry, inputs)
        loop()  # this call's result, and the warm-up the capture needs
        entry.graph = self.device.capture(loop)
        return entry

    def stage(self, entry, inputs):
        """Copy the call's inputs into the entry's twins."""
        for twin, a in zip(self._arrays(entry.staged), self._arrays(inputs)):
            self.xp.copyto(twin, a)

    # ------------------------------------------------------------------------------------------
    # Nested inputs: dicts (in key order), Saved (in field order), lists and tuples

    def _items(self, value):
        if isinstance(value, dict):
            return sorted(value.items())
        if is_dataclass(value):
            return [(f.name, getattr(value, f.name)) for f in fields(value)]
        if isinstance(value, (list, tuple)):
            return list(enumerate(value))
        return None

    def _signature(self, value):
        """What an entry's twins depend on: the structure, each array's shape and dtype, and
        the other leaves (None, flags) as they are."""
        if isinstance(value, self.xp.ndarray):
            return ("array", value.shape, value.dtype.str)
        items = self._items(value)
        if items is None:
            return value
        return tuple((name, self._signature(v)) for name, v in items)

    def _arrays(self, value):
        """The arrays of ``value``, in the order of its signature."""
        if isinstance(value, self.xp.ndarray):
            return [value]
        return [a for _, v in self._items(value) or () for a in self._arrays(v)]

    def _mapped(self, f, value):
        """``value`` with every array a replaced by f(a)."""
        if isinstance(value, self.xp.ndarray):
            return f(value)
        if isinstance(value, dict):
            return {k: self._mapped(f, v) for k, v in value.items()}
        if is_dataclass(value):
            return replace(value, **{n: self._mapped(f, v) for n, v in self._items(value)})
        if isinstance(value, (list, tuple)):
            return type(value)(self._mapped(f, v) for v in value)
        return value

    def _detached(self, value, originals):
        """``value`` with no array of the entry in it: a twin becomes the caller's array it
        stands for, any other array (the entry's buffers, views of them) a copy."""
        def detach(a):
            original = originals.get(id(a))
            return a.copy() if original is None else original

        return self._mapped(detach, value)


class _Entry:
    """One captured loop: staged (the twins of the inputs), filled (of the outputs), the graph,
    and result (the bound Recurrence's method that reads what the loop made)."""

    staged = filled = graph = result = None

"""The cells `fastrnn bench --cells` and `fastrnn validate --cells` know by name: the five plain
cells (``cells.ALL_CELLS``) and named variants of them (``cells.Variant``, issue 16).

A named variant is a plain cell with some switches set. The projection's size depends on the
shape, proj_size = H // 2, so a name becomes a ``Cell`` only at a given H (``NamedCell.at``); at
H = 1 there is no projection to make, and ``why_not`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from ..cells import ALL_CELLS, Cell, Variant, cell_by_name

ZONEOUT = 0.25
# The tools' problems draw weights in +-1/sqrt(H) and x from N(0, 1), so gate inputs spread
# around +-1: a clip of 1 binds on a part of them and leaves the rest, exercising both sides.
CLIP = 1.0


@dataclass(frozen=True)
class NamedCell:
    """A cell as the tools name it: ``plain`` with ``variant`` (the plain cell by default), and
    with ``projected`` a projection of proj_size = H // 2."""

    name: str
    plain: Cell
    variant: Variant = Variant()
    projected: bool = False

    @property
    def is_variant(self) -> bool:
        return self.projected or bool(self.variant.switches)

    @property
    def switches(self) -> tuple:
        """The names of the variant switches it sets (cells.Variant.switches)."""
        return ("proj_size",) * self.projected + self.variant.switches

    def why_not(self, H: int) -> Optional[str]:
        """Why the cell cannot be made at hidden size H, or None when it can."""
        if self.projected and H // 2 < 1:
            return f"proj_size = H // 2 is 0 at H = {H}: no projection to make"
        return None

    def at(self, H: int) -> Cell:
        """The ``Cell`` at hidden size H."""
        reason = self.why_not(H)
        if reason:
            raise ValueError(f"{self.name}: {reason}")
        variant = replace(self.variant, proj_size=H // 2) if self.projected else self.variant
        return replace(self.plain, variant=variant)


def _named(name, plain, projected=False, **switches):
    return NamedCell(name, cell_by_name(plain), Variant(**switches), projected)


PLAIN_CELLS = tuple(NamedCell(cell.name, cell) for cell in ALL_CELLS)
VARIANT_CELLS = (
    _named("lstm_proj", "lstm", projected=True),
    _named("layernorm_lstm", "lstm", layer_norm=True),
    _named("layernorm_gru", "gru", layer_norm=True),
    _named("lstm_peepholes", "lstm", peepholes=True),
    _named("lstm_clip", "lstm", clip=CLIP),
    _named("gru_clip", "gru", clip=CLIP),
    _named("rnn_zoneout", "rnn_tanh", zoneout=ZONEOUT),
    _named("lstm_zoneout", "lstm", zoneout=ZONEOUT),
    _named("gru_zoneout", "gru", zoneout=ZONEOUT),
)
NAMED_CELLS = PLAIN_CELLS + VARIANT_CELLS
# Names that stand for several cells.
GROUPS = {"all": NAMED_CELLS, "plain": PLAIN_CELLS, "variants": VARIANT_CELLS}
NAMES = tuple(c.name for c in NAMED_CELLS) + tuple(GROUPS)


def as_named(cell) -> NamedCell:
    """``cell`` as a NamedCell: a NamedCell as it is; a ``Cell`` under its name, or its spec
    (name and switches, "lstm;clip=0.5") when it has a variant."""
    if isinstance(cell, NamedCell):
        return cell
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a fastrnn Cell or a NamedCell, got {type(cell).__name__}")
    name = cell.spec if cell.variant.switches else cell.name
    return NamedCell(name, replace(cell, variant=Variant()), cell.variant)


def named_cells(names) -> tuple:
    """The cells ``names`` (a comma-separated string or a sequence of names, "all", "plain" or
    "variants") stand for, in the order of NAMED_CELLS, each once."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    by_name = {c.name: c for c in NAMED_CELLS}
    chosen = set()
    for name in names:
        if name in GROUPS:
            chosen.update(c.name for c in GROUPS[name])
        elif name in by_name:
            chosen.add(name)
        else:
            raise ValueError(f"unknown cell {name!r}; expected one of {list(NAMES)}")
    return tuple(c for c in NAMED_CELLS if c.name in chosen)

"""The table of probe results: one :class:`ProbeRow` per (layer, step, kind) cell.

:class:`ProbeResults` writes and reads ``results.csv`` (with the layer table beside it as
``results.layers.json``) and gives grid views for figures.

Example:
    >>> results = ProbeResults.from_csv("runs/probe/results.csv")
    >>> layers, steps, acc = results.grid("cross")
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from probe.attention.layer_files import load_layer_table, save_layer_table
from probe.attention.layer_info import LayerInfo


@dataclass
class ProbeRow:
    """One (layer, step, kind) cell's probe result (``nan`` where a control was not run)."""

    layer: int
    step: int
    timestep: float
    kind: str
    probe: str
    acc_mean: float
    acc_std: float
    shuffled_acc: float
    random_model_acc: float
    selectivity: float
    chance: float
    n_samples: int
    n_features: int


@dataclass
class ProbeResults:
    """A table of :class:`ProbeRow`, one per cell, with CSV round-trip and grid views.

    Attributes:
        rows: the results.
        label: the label probed.
        layer_table: the layer table of the dataset probed, at its latent size (what a layer
            spec such as ``res<max`` resolves against when layers are chosen from these
            results); saved next to the CSV as ``<name>.layers.json``.
    """

    rows: list[ProbeRow] = field(default_factory=list)
    label: str = ""
    layer_table: list[LayerInfo] = field(default_factory=list)

    def __repr__(self) -> str:
        kinds = sorted({r.kind for r in self.rows})
        return f"ProbeResults(label={self.label!r}, {len(self.rows)} rows, kinds={kinds})"

    def __len__(self) -> int:
        return len(self.rows)

    def to_csv(self, path: str | Path) -> Path:
        """Write the table (plus a ``label`` column), and the layer table beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.layer_table:
            save_layer_table(table_path(path), self.layer_table)
        else:
            table_path(path).unlink(missing_ok=True)  # not the table of an earlier run
        names = ["label", *(f.name for f in fields(ProbeRow))]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({"label": self.label, **asdict(row)})
        return path

    @classmethod
    def from_csv(cls, path: str | Path) -> ProbeResults:
        """Read a table written by :meth:`to_csv` (with its layer table, when it is there).

        Raises:
            ValueError: the layer table beside the CSV cannot be read.
        """
        types = {f.name: f.type for f in fields(ProbeRow)}
        cast = {"int": int, "float": float, "str": str}
        rows, label = [], ""
        with open(path, newline="") as f:
            for raw in csv.DictReader(f):
                label = raw.pop("label", label)
                rows.append(ProbeRow(**{k: cast[str(types[k])](v) for k, v in raw.items()}))
        table = table_path(Path(path))
        return cls(rows, label, load_layer_table(table) if table.is_file() else [])

    def select(self, kind: str | None = None, probe: str | None = None) -> list[ProbeRow]:
        return [r for r in self.rows if (kind is None or r.kind == kind)
                and (probe is None or r.probe == probe)]  # fmt: skip

    def grid(self, kind: str, column: str = "acc_mean") -> tuple[list[int], list[int], np.ndarray]:
        """``(layers, steps, values [layers, steps])`` of one kind (``nan`` where missing)."""
        rows = self.select(kind)
        layers = sorted({r.layer for r in rows})
        steps = sorted({r.step for r in rows})
        values = np.full((len(layers), len(steps)), np.nan)
        for r in rows:
            values[layers.index(r.layer), steps.index(r.step)] = getattr(r, column)
        return layers, steps, values

    def best(self, kind: str, column: str = "acc_mean") -> ProbeRow:
        """The row of ``kind`` with the highest ``column``."""
        rows = self.select(kind)
        if not rows:
            raise KeyError(f"no {kind!r} rows; kinds here: {sorted({r.kind for r in self.rows})}")
        return max(rows, key=lambda r: getattr(r, column))


def table_path(csv_path: Path) -> Path:
    """Where :meth:`ProbeResults.to_csv` keeps the layer table: ``results.layers.json``."""
    return csv_path.with_suffix(".layers.json")

"""The sweep's table: one row per edit in ``sweep.csv``, and its means per layer range.

    rows = read_rows("runs/sweep/sweep.csv")
    summary = summarise_rows(rows)          # one dict per (kind, range, step fraction)
    print(format_summary(summary))

The columns are :data:`FIELDS`; :func:`row_key` says which edit a row is, so a sweep resumes
where it stopped. :mod:`editing.sweep.run` writes the table, :mod:`editing.sweep.plots` and
:mod:`editing.sweep.leaks` read it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from editing.scoring.toy_metrics import summarise

KEY = ("kind", "range", "step_fraction", "seed", "source", "target")
FIELDS = [
    *("kind", "range", "group", "layers", "step_fraction", "seed", "source", "target"),
    *("slot", "target_word", "judged", "success", "source_found", "edit_found"),
    *("iou", "shape_distance", "background_psnr", "background_diff", "source_shift"),
]
_BOOLS = ("success", "source_found", "edit_found")
_FLOATS = (
    *("step_fraction", "iou", "shape_distance", "background_psnr", "background_diff"),
    "source_shift",
)
# tables written before ``source_shift`` existed: read with NaN there, upgraded on resume
_OLD_FIELDS = FIELDS[:-1]


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """What identifies a sweep row (for resuming)."""
    values = {**row, "step_fraction": f"{float(row['step_fraction']):g}", "seed": str(row["seed"])}
    return tuple(str(values[k]) for k in KEY)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``sweep.csv``, typed (bools, floats, seed as int).

    Raises:
        ValueError: the file is not a sweep table.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames not in (FIELDS, _OLD_FIELDS):
            raise ValueError(
                f"{path} is not a sweep table of this version (columns {reader.fieldnames}); "
                "write the sweep to another --out folder"
            )
        rows: list[dict[str, Any]] = list(reader)
    for row in rows:
        row.setdefault("source_shift", "nan")
        row.update({k: row[k] == "True" for k in _BOOLS})
        row.update({k: float(row[k]) for k in _FLOATS})
        row["seed"] = int(row["seed"])
    return rows


def load_table(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path`` (none if it does not exist); an older table is rewritten in place
    with today's columns (:data:`FIELDS`).

    Raises:
        ValueError: the file is not a sweep table.
    """
    rows = read_rows(path) if path.is_file() else []
    if rows and _header(path) != FIELDS:
        tmp = path.with_suffix(".csv.tmp")
        tmp.unlink(missing_ok=True)
        append_rows(tmp, rows)
        tmp.replace(path)
    return rows


def shard_tables(path: Path) -> list[Path]:
    """The shard tables beside ``sweep.csv`` (``sweep.<i>-of-<n>.csv``), in shard order."""

    def order(p: Path) -> tuple[int, int]:
        index, count = p.name.split(".")[1].split("-of-")
        return int(count), int(index)

    return sorted(path.parent.glob(f"{path.stem}.*-of-*.csv"), key=order)


def load_all(path: Path) -> list[dict[str, Any]]:
    """The rows of ``sweep.csv`` and of every shard table beside it, each edit once."""
    rows, seen = [], set()
    for table in [path, *shard_tables(path)]:
        for row in load_table(table):
            if (key := row_key(row)) not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def merge_shard_tables(path: Path, order: Sequence[tuple[str, ...]]) -> list[dict[str, Any]]:
    """Fold the shard tables beside ``path`` into it and delete them: its own rows first, then
    the shards' in ``order`` (row keys; rows outside it after them, as read). The table is
    replaced in one rename, so a crash leaves either the old files or the merged table.

    Returns:
        Every row of the merged table.
    """
    shards = shard_tables(path)
    rows = load_all(path)
    if not shards:
        return rows
    own = len(load_table(path))
    rank = {key: i for i, key in enumerate(order)}
    rows[own:] = sorted(rows[own:], key=lambda r: rank.get(row_key(r), len(rank)))
    tmp = path.with_suffix(".csv.merging")
    tmp.unlink(missing_ok=True)
    append_rows(tmp, rows)
    tmp.replace(path)
    for shard in shards:
        shard.unlink(missing_ok=True)
    return rows


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the table at ``path`` (with a header if the file is new)."""
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def summarise_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means per (kind, range, step fraction), in the order the rows first name them.

    Returns:
        Dicts with kind, range, group, layers, step_fraction, and from
        :func:`editing.scoring.toy_metrics.summarise`: n, success, found, iou, shape_distance,
        background_psnr, background_diff.
    """
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["kind"], row["range"], float(row["step_fraction"]))
        groups.setdefault(key, []).append(row)
    out = []
    for (kind, name, fraction), members in groups.items():
        first = members[0]
        head = {"kind": kind, "range": name, "group": first["group"], "layers": first["layers"]}
        out.append({**head, "step_fraction": fraction, **summarise(members)})
    return out


def format_summary(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summarise_rows`."""
    head = (f"{'kind':<5} {'range':<12} {'frac':>4} {'n':>4} {'success':>7} {'iou':>5} "
            f"{'bgPSNR':>6} {'shift':>6}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for s in summary:
        psnr = s["background_psnr"]
        shift = s.get("source_shift", math.nan)
        lines.append(
            f"{s['kind']:<5} {s['range']:<12} {s['step_fraction']:>4g} {int(s['n']):>4} "
            f"{s['success']:>7.2f} {s['iou']:>5.2f} "
            f"{psnr if math.isnan(psnr) else round(psnr, 1):>6} "
            f"{'-' if math.isnan(shift) else f'{shift:.3f}':>6}"
        )
    return "\n".join(lines)

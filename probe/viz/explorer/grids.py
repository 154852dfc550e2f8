"""The explorer's grids: a dataset's probe accuracy grid, a sweep's edit grid.

probe_grid(ProbeResults.from_csv("runs/colour/probe/results.csv"))   # in the dataset's page
sweep_page("runs/sweep").save("sweep.html")   # a sweep's own page (probe.viz.explorer.sweep_page)
"""

from __future__ import annotations

import base64
import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from probe.probing.results import ProbeResults


def _num(value: Any) -> float | None:
    """A finite float, else ``None`` (JSON has no nan)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def probe_grid(results: ProbeResults) -> dict[str, Any]:
    """The probe accuracy grid as the page draws it: per kind, layers × steps, as the toolkit's
    heatmap (:func:`probe.viz.probe_figures.plot_accuracy_heatmap`) lays it out.

    Returns:
        ``{"label", "kinds": {kind: {"layers", "steps", "acc" [layers][steps], "shuffled",
        "chance"}}}``; a missing cell is ``None``.
    """
    kinds: dict[str, Any] = {}
    for kind in sorted({r.kind for r in results.rows}):
        layers, steps, acc = results.grid(kind)
        _, _, shuffled = results.grid(kind, "shuffled_acc")
        chance = [r.chance for r in results.select(kind)]
        kinds[kind] = {
            "layers": layers,
            "steps": steps,
            "acc": [[_num(v) for v in row] for row in acc.tolist()],
            "shuffled": [[_num(v) for v in row] for row in shuffled.tolist()],
            "chance": _num(chance[0]) if chance else None,
        }
    return {"label": results.label, "kinds": kinds}


def find_probe_results(dataset: Path) -> Path | None:
    """The results.csv of ``attnprobe probe --data DATASET`` (its default ``DATASET/probe``)."""
    path = dataset / "probe" / "results.csv"
    return path if path.is_file() else None


SCORES = ("success", "iou", "shape_distance", "background_psnr")


def sweep_grid(folder: str | Path, max_image_bytes: int = 4_000_000) -> dict[str, Any]:
    """A sweep's edit grid: rows the edits' settings (kind · range · step fraction), columns the
    pairs (source → target), each cell the mean over seeds of the scores, and its images (PNG
    data URIs, while they fit ``max_image_bytes``) when the sweep saved them (``--save-images``).

    Raises:
        FileNotFoundError: ``folder`` has no ``sweep.csv``.
    """
    folder = Path(folder)
    table = folder / "sweep.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{folder} has no sweep.csv: is it a sweep's --out folder?")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    ranges: list[str] = []
    pairs: list[str] = []
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        key = f"{r['kind']} · {r['range']} · {float(r['step_fraction']):g}"
        pair = f"{r['source']} → {r['target']}"
        if key not in ranges:
            ranges.append(key)
        if pair not in pairs:
            pairs.append(pair)
        groups[(key, pair)].append(r)
    cells: dict[str, Any] = {}
    budget = max_image_bytes
    left_out = 0
    for (key, pair), members in groups.items():
        first = members[0]
        cell: dict[str, Any] = {
            "range": key, "pair": pair, "layers": first.get("layers", ""), "seeds": len(members),
        }  # fmt: skip
        for name in SCORES:
            values = [v for m in members if (v := _num(_score(m.get(name)))) is not None]
            cell[name] = sum(values) / len(values) if values else None
        images = _cell_images(folder / "images", first)
        size = sum(len(uri) for _, uri in images)
        if images and size <= budget:
            budget -= size
            cell["images"] = images
        elif images:
            left_out += 1
        cells[f"{ranges.index(key)},{pairs.index(pair)}"] = cell
    settings = folder / "sweep.json"
    notes = []
    if left_out:
        notes.append(f"the images of {left_out} cells do not fit the page: their scores only")
    return {
        "title": folder.name,
        "settings": json.loads(settings.read_text()) if settings.is_file() else {},
        "ranges": ranges,
        "pairs": pairs,
        "cells": cells,
        "left_out": notes,
    }


def _score(value: str | None) -> Any:
    return {"True": 1.0, "False": 0.0}.get(value or "", value)


def _cell_images(images: Path, row: dict[str, str]) -> list[tuple[str, str]]:
    """The source and edited images a sweep saved for ``row`` (first seed), as data URIs."""
    if not images.is_dir():
        return []

    def name(prompt: str) -> str:
        return f"s{row['seed']}_" + "_".join(prompt.split())

    edits = images / f"{row['kind']}_{row['range']}_{float(row['step_fraction']):g}"
    found = [
        ("source", images / "source" / f"{name(row['source'])}.png"),
        ("edit", edits / f"{name(row['source'])}_to_{row['target_word']}.png"),
    ]
    if not found[1][1].is_file():  # the source alone is not this cell's edit
        return []
    return [(what, _data_uri(p)) for what, p in found if p.is_file()]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

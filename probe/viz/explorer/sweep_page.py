"""A sweep's own explorer page: its edit grid (:func:`probe.viz.explorer.grids.sweep_grid`) in
the page template (above both :mod:`~probe.viz.explorer.grids` and
:mod:`~probe.viz.explorer.page`, which imports the grids)."""

from __future__ import annotations

import html
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from probe.viz.explorer.grids import sweep_grid
from probe.viz.explorer.page import ExplorerPage


def sweep_page(folder: str | Path) -> Any:
    """A sweep's page: its edit grid (success coloured, IoU written), a click shows the cell's
    images if the sweep saved them, else its scores."""
    data = sweep_grid(folder)
    asset = files("probe.viz.explorer")
    page = (
        asset.joinpath("sweep.html").read_text(encoding="utf-8")
        .replace("__CSS__", asset.joinpath("explorer.css").read_text(encoding="utf-8"))
        .replace("__JS__", asset.joinpath("grids.js").read_text(encoding="utf-8"))
        .replace("__TITLE__", html.escape(f"attnprobe · sweep {data['title']}"))
        .replace("__DATA__", json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))
    )  # fmt: skip
    return ExplorerPage(page, list(data["left_out"]))

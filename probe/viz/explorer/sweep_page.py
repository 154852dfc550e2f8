"""A sweep's own explorer page: its edit grid (:func:`probe.viz.explorer.grids.sweep_grid`) in
the page's shell (above both :mod:`~probe.viz.explorer.grids` and
:mod:`~probe.viz.explorer.page`, which imports the grids)."""

from __future__ import annotations

from pathlib import Path

from probe.viz.explorer.grids import sweep_grid
from probe.viz.explorer.page import ExplorerPage, fill_page


def sweep_page(folder: str | Path) -> ExplorerPage:
    """A sweep's page: its edit grid (success coloured, IoU written), a click shows the cell's
    images if the sweep saved them, else its scores."""
    data = sweep_grid(folder)
    page = fill_page("sweep.html", "grids.js", f"sweep {data['title']}", data)
    return ExplorerPage(page, list(data["left_out"]))

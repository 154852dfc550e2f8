"""Figures of edits: a grid of methods × (source, targets), and the sweep's trade-off plots.

Every function draws on a new :class:`matplotlib.figure.Figure` (or the ``fig``/``ax`` given)
and returns it; pyplot's global state is left alone. The sweep plots live in
:mod:`editing.sweep.plots` and are re-exported here so that all edit figures have one home.

    results = {m: edit(pipe, "a red car", ["a blue car"], method=m) for m in ("none", "fpe")}
    edit_grid(results).savefig("grid.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from editing.editor import EditResult
from editing.sweep.plots import sweep_tradeoff, sweep_windows
from probe.viz.grid import image_grid

__all__ = ["edit_grid", "sweep_tradeoff", "sweep_windows"]


def edit_grid(
    results: Mapping[str, EditResult] | Sequence[EditResult],
    titles: Sequence[str] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """One row per edit (method, layer range, ...): its source, then each of its targets.

    Args:
        results: row label → :class:`EditResult` (or a list, labelled by each result's
            ``settings["method"]``). Every result needs the same number of targets.
        titles: column titles (default: the first result's source and target prompts).
        fig: figure to draw into (default: a new one).

    Returns:
        The figure; panel ``r * (1 + targets) + c`` shows row ``r``, column ``c``.

    Raises:
        ValueError: no results, or results with different numbers of targets.

    Example:
        >>> edit_grid({"none": plain, "fpe": fpe, "self, all layers": every}).savefig("g.png")
    """
    if isinstance(results, Mapping):
        labels, items = list(results), list(results.values())
    else:
        items = list(results)
        labels = [str(r.settings.get("method", i)) for i, r in enumerate(items)]
    if not items:
        raise ValueError("edit_grid needs at least one EditResult")
    width = {len(r.targets) for r in items}
    if len(width) != 1:
        raise ValueError(f"results have different numbers of targets {sorted(width)}: use one set")
    ncols = 1 + width.pop()
    first = items[0].settings
    if titles is None:
        titles = [first.get("source", "source"), *first.get("targets", [""] * (ncols - 1))]
    if len(titles) != ncols:
        raise ValueError(f"{len(titles)} column titles for {ncols} columns")
    images: list[Any] = [im for r in items for im in (r.source, *r.targets)]
    all_titles = [t if i < ncols else "" for i, t in enumerate(list(titles) * len(items))]
    return image_grid(images, all_titles, ncols=ncols, row_labels=labels, fig=fig)

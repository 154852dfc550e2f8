"""Image grids: images in rows, with titles and row labels, on a matplotlib figure.

    image_grid([source, edited], ["a red car", "a blue car"]).savefig("grid.png")
    image_grid(images, titles, ncols=3, row_labels=["none", "fpe"], size=1.5)

The one image grid of both packages: ``attnprobe edit``'s ``grid.png``, the edit grids of
:mod:`editing.experiment.edit_figures` and the toy evaluation's sample grid are all built on
:func:`image_grid`. It draws on a new :class:`~matplotlib.figure.Figure` (or the one given) and
leaves pyplot's global state alone.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from probe.viz.layout import as_image, panels


def image_grid(
    images: Sequence[Any],
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    row_labels: Sequence[str] | None = None,
    fig: Figure | None = None,
    size: float = 2.0,
) -> Figure:
    """Images in a grid with titles (row-major), e.g. a source and its edits.

    Args:
        images: PIL images or ``[H, W, 3]`` arrays; ``None`` leaves its panel empty (a missing
            cell of a table of images).
        titles: one per image (default: none); long titles wrap to the panel's width.
        ncols: images per row (default: all in one row).
        row_labels: a label per row, written left of its first image.
        fig: figure to draw into (default: a new one).
        size: panel width in inches (a new figure only).

    Returns:
        The figure; ``fig.axes[i].images[0]`` holds image ``i``.

    Raises:
        ValueError: as many titles as images are needed, and one label per row.

    Example:
        >>> image_grid([source, edited], ["a red car", "a blue car"]).savefig("grid.png")
    """
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images: give one per image")
    ncols = ncols or len(images)
    fig, axes = panels(len(images), fig, ncols, size=size)
    nrows = -(-len(images) // max(1, min(ncols, len(images))))
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(row_labels)} row labels for {nrows} rows: give one per row")
    width = max(10, int(size * 14))  # characters of an 8 pt title that fit the panel
    for i, (ax, image) in enumerate(zip(axes, images, strict=True)):
        if image is not None:
            ax.imshow(as_image(image))
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(textwrap.fill(titles[i], width), fontsize=8)
        if row_labels is not None and i % ncols == 0:
            ax.set_ylabel(row_labels[i // ncols], fontsize=9)
    return fig

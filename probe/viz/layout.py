"""Layout helpers shared by the figure modules: new axes, panel grids, images as arrays.

Figures are plain :class:`matplotlib.figure.Figure` objects; pyplot is never imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# curve legends go under the axes, where they cannot hide a line
# one colour per attention kind, in every figure of both packages
KIND_COLOURS = {"cross": "tab:blue", "self": "tab:orange"}
LEGEND_BELOW = {"fontsize": 7, "ncol": 3, "loc": "upper center", "bbox_to_anchor": (0.5, -0.2)}


def new_axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    """``ax``'s figure and ``ax``, or a new :class:`Figure` of ``size`` inches with one axes."""
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def panels(n: int, fig: Figure | None, ncols: int, size: float = 2.0) -> tuple[Figure, list[Axes]]:
    """``n`` axes in rows of ``ncols`` on ``fig`` (default: a new figure); spare axes hidden."""
    if n < 1:
        raise ValueError(f"nothing to draw: {n} panels")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = fig or Figure(figsize=(size * ncols, (size + 0.25) * nrows), layout="constrained")
    grid = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in grid[n:]:
        ax.set_visible(False)
    return fig, list(grid[:n])


def as_image(image: Any) -> np.ndarray:
    """A PIL image or array as ``[H, W, 3]`` (uint8 or float in ``[0, 1]``).

    Raises:
        ValueError: an array that is not ``[H, W, 3]``.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image of shape {img.shape} is not [H, W, 3] RGB")
    return img


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for notebooks: ``IPython.display.Image(figure_png(fig))``)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()

"""Token heat maps: where a word's cross-attention falls on the image.

Every function takes ``ax=None`` (or ``fig=None``), returns the figure and leaves pyplot's global
state alone: figures are built with ``matplotlib.figure.Figure``::

    heatmap(image, maps.word_map("car"))                 # one overlay, any [h, w] map
    token_heatmap(maps, image, "car")                    # a word, aggregated over layers/steps
    heatmaps_by_layer(maps, image, "car")                # one panel per layer
    heatmaps_by_step(maps, image, "car", layers=range(7, 16))    # one panel per denoising step
    word_heatmaps(maps, image, ["red", "car"])           # one panel per word

Self-attention SVD components (the paper's Figure 3) are in :mod:`probe.viz.svd`, probe accuracy
plots in :mod:`probe.viz.probe_figures`; :mod:`probe.viz` re-exports them all. Edit grids and
sweep trade-off plots take editing results, so they live on the editing side
(:mod:`editing.experiment.edit_figures`, :mod:`editing.sweep.plots`); image grids with titles
are :func:`probe.viz.grid.image_grid`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from probe.recording.maps import AttentionMaps
from probe.viz.layout import as_image, new_axes, panels

CMAP = "jet"


def upsample(heat: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``[h, w]`` map resized (bilinear) to ``size`` = (height, width): ``[H, W]`` float32."""
    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(f"a heat map is [h, w]; got shape {tuple(t.shape)}")
    up = F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def overlay(ax: Axes, image: Any, heat: torch.Tensor | np.ndarray, title: str = "") -> None:
    """Draw ``heat`` ``[h, w]`` upsampled over ``image`` ``[H, W, 3]`` on ``ax``.

    The heat map is the axes' second image (``ax.images[1]``), at the image's resolution.
    """
    img = as_image(image)
    ax.imshow(img)
    ax.imshow(upsample(heat, img.shape[:2]), cmap=CMAP, alpha=0.5)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def heatmap(
    image: Any, heat: torch.Tensor | np.ndarray, title: str = "", ax: Axes | None = None
) -> Figure:
    """One heat map ``[h, w]`` (any resolution) overlaid on ``image``.

    Args:
        image: PIL image or ``[H, W, 3]`` array.
        heat: the map, e.g. :meth:`AttentionMaps.word_map`; resized bilinearly to the image.
        title: the panel's title.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure.

    Example:
        >>> heatmap(image, maps.word_map("car"), "car").savefig("car.png")
    """
    fig, ax = new_axes(ax, (2.6, 2.8))
    overlay(ax, image, heat, title)
    return fig


def token_heatmap(
    maps: AttentionMaps,
    image: Any,
    word: str | int,
    sample: int = 0,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """A word's cross-attention, averaged over heads, layers and steps, over the image.

    Args:
        maps: a recording with cross-attention.
        image: the generated image.
        word: a word of the prompt (or a token position).
        sample, layers, steps: as :meth:`AttentionMaps.word_map`.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure.

    Example:
        >>> token_heatmap(maps, image, "car").savefig("car.png")
    """
    heat = maps.word_map(word, sample, layers, steps)
    return heatmap(image, heat, f"{word!s}", ax=ax)


def _spread(items: Sequence[int], n: int | None) -> list[int]:
    """At most ``n`` items evenly spread over ``items`` (all when ``n`` is None)."""
    if n is None or n >= len(items):
        return list(items)
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def heatmaps_by_layer(
    maps: AttentionMaps,
    image: Any,
    word: str | int,
    sample: int = 0,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    ncols: int = 8,
    fig: Figure | None = None,
) -> Figure:
    """One panel per cross-attention layer: the word's map (mean over ``steps``) over the image.

    Panels are titled ``L05 8x8`` (layer index and its query resolution).

    Args:
        maps: a recording with cross-attention.
        image: the generated image.
        word: a word of the prompt.
        sample: which recorded sample.
        layers: layers to show (default: every recorded cross layer).
        steps: steps to average (default: every recorded step).
        ncols: panels per row.
        fig: figure to draw into (default: a new one).

    Returns:
        The figure.

    Example:
        >>> heatmaps_by_layer(maps, image, "car").savefig("by_layer.png")
    """
    chosen = list(layers) if layers is not None else maps.recorded_layers("cross")
    fig, axes = panels(len(chosen), fig, ncols)
    for ax, layer in zip(axes, chosen, strict=True):
        h, w = maps.resolution(layer)
        heat = maps.word_map(word, sample, [layer], steps, size=(h, w))
        overlay(ax, image, heat, f"L{layer:02d} {h}x{w}")
    fig.suptitle(f"cross-attention of {word!r} by layer", fontsize=10)
    return fig


def heatmaps_by_step(
    maps: AttentionMaps,
    image: Any,
    word: str | int,
    sample: int = 0,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    max_panels: int | None = 8,
    ncols: int = 8,
    fig: Figure | None = None,
) -> Figure:
    """One panel per denoising step: the word's map (mean over ``layers``) over the image.

    Args:
        maps: a recording with cross-attention.
        image: the generated image.
        word: a word of the prompt.
        sample: which recorded sample.
        layers: layers to average (default: every recorded cross layer).
        steps: steps to show (default: every recorded step, thinned to ``max_panels``).
        max_panels: at most this many steps, evenly spread (``None``: all).
        ncols: panels per row.
        fig: figure to draw into (default: a new one).

    Returns:
        The figure; panels are titled ``step 3 (t=801)``.

    Example:
        >>> heatmaps_by_step(maps, image, "red", layers=range(7, 16)).savefig("by_step.png")
    """
    if isinstance(layers, str):
        raise TypeError(
            f"layers={layers!r}: pass layer indices, e.g. resolve_layers(pipe.unet, {layers!r})"
        )
    chosen = _spread(list(steps) if steps is not None else maps.steps, max_panels)
    fig, axes = panels(len(chosen), fig, ncols)
    layer_list = list(layers) if layers is not None else None
    for ax, step in zip(axes, chosen, strict=True):
        heat = maps.word_map(word, sample, layer_list, [step])
        t = maps.timesteps.get(step)
        overlay(ax, image, heat, f"step {step}" + (f" (t={t:.0f})" if t is not None else ""))
    fig.suptitle(f"cross-attention of {word!r} by denoising step", fontsize=10)
    return fig


def word_heatmaps(
    maps: AttentionMaps,
    image: Any,
    words: Sequence[str],
    sample: int = 0,
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """The image, then one cross-attention heat map per word over it.

    Args:
        maps: a recording with cross-attention.
        image: the generated image (PIL or ``[H, W, 3]`` array).
        words: words of the prompt.
        sample, layers, steps: as :meth:`AttentionMaps.word_map`.
        fig: figure to draw into (default: a new one).

    Returns:
        The figure (nothing is drawn into pyplot's current figure).

    Example:
        >>> word_heatmaps(maps, image, ["red", "car"]).savefig("heat.png")
    """
    img = as_image(image)
    fig, axes = panels(len(words) + 1, fig, len(words) + 1, size=2.2)
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=9)
    axes[0].axis("off")
    for ax, word in zip(axes[1:], words, strict=True):
        overlay(ax, img, maps.word_map(word, sample, layers, steps), word)
    return fig

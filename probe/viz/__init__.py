"""Figures: token heat maps, self-attention SVD components, probe accuracy, image grids.

    from probe.viz import token_heatmap, self_attention_components, plot_accuracy_heatmap

Every function returns a ``matplotlib.figure.Figure`` and leaves pyplot's global state alone.
"""

from probe.viz.grid import image_grid
from probe.viz.heatmaps import (
    heatmap,
    heatmaps_by_layer,
    heatmaps_by_step,
    overlay,
    token_heatmap,
    upsample,
    word_heatmaps,
)
from probe.viz.layout import figure_png
from probe.viz.probe_figures import (
    plot_accuracy_by_layer,
    plot_accuracy_by_step,
    plot_accuracy_heatmap,
    save_probe_figures,
)
from probe.viz.svd import plot_components, self_attention_components, svd_components

__all__ = [
    "figure_png",
    "heatmap",
    "heatmaps_by_layer",
    "heatmaps_by_step",
    "image_grid",
    "overlay",
    "plot_accuracy_by_layer",
    "plot_accuracy_by_step",
    "plot_accuracy_heatmap",
    "plot_components",
    "save_probe_figures",
    "self_attention_components",
    "svd_components",
    "token_heatmap",
    "upsample",
    "word_heatmaps",
]

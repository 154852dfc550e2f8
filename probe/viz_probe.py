"""Probe accuracy along the denoising steps (the heatmap and the by-layer curve are in
:mod:`probe.probe_plots`).

    plot_accuracy_by_step(ProbeResults.from_csv("runs/c/probe/results.csv")).savefig("s.png")
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from probe.classifiers import ProbeResults
from probe.viz_layout import LEGEND_BELOW, new_axes

KIND_COLOURS = {"cross": "tab:blue", "self": "tab:orange"}


def plot_accuracy_by_step(
    results: ProbeResults, layers: Iterable[int] | None = None, ax: Axes | None = None
) -> Figure:
    """Probe accuracy per denoising step (mean over ``layers``) for each kind, with the
    shuffled-label control (dotted) and chance.

    Args:
        results: probe results.
        layers: layers to average (default: every probed layer of each kind).
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure; line ``kind: accuracy`` holds the values ``[steps]``.

    Raises:
        KeyError: no results for ``layers``.

    Example:
        >>> plot_accuracy_by_step(results, layers=[12, 13, 14]).savefig("by_step.png")
    """
    fig, ax = new_axes(ax, (7.0, 3.5))
    wanted = set(layers) if layers is not None else None
    drawn = 0
    for kind in sorted({r.kind for r in results.rows}):
        colour = KIND_COLOURS.get(kind, "tab:gray")
        layer_ids, steps, acc = results.grid(kind, "acc_mean")
        _, _, shuf = results.grid(kind, "shuffled_acc")
        rows = [i for i, layer in enumerate(layer_ids) if wanted is None or layer in wanted]
        if not rows:
            continue
        ax.plot(steps, np.nanmean(acc[rows], axis=0), "-o", ms=3, color=colour,
                label=f"{kind}: accuracy")  # fmt: skip
        ax.plot(steps, np.nanmean(shuf[rows], axis=0), ":", color=colour,
                label=f"{kind}: shuffled-label control")  # fmt: skip
        drawn += 1
    if not drawn:
        raise KeyError(f"no probe results for layers {sorted(wanted or [])}")
    ax.axhline(results.rows[0].chance, color="grey", lw=0.8, label="chance")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("denoising step (0 = first, noisiest)")
    ax.set_ylabel("accuracy (mean over layers)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"probe accuracy by step ({results.label})")
    ax.legend(**LEGEND_BELOW)
    return fig

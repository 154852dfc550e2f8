"""Figures of probe results: accuracy heatmaps (layer × step), accuracy by layer and by step.

Every function draws on ``ax`` (or a new figure of its own) and returns the figure; pyplot's
global state is never touched, so they are safe in scripts, tests and notebooks alike.

Example:
    >>> fig = plot_accuracy_heatmap(ProbeResults.from_csv("runs/c/probe/results.csv"), "cross")
    >>> fig.savefig("cross.png")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from probe.probing.probes import ProbeResults
from probe.viz.layout import KIND_COLOURS, LEGEND_BELOW, new_axes

COLUMN_TITLES = {
    "acc_mean": "probe accuracy",
    "selectivity": "selectivity (accuracy − shuffled-label control)",
    "shuffled_acc": "shuffled-label control accuracy",
    "random_model_acc": "random-model control accuracy",
}


def plot_accuracy_heatmap(
    results: ProbeResults, kind: str, column: str = "acc_mean", ax: Axes | None = None
) -> Figure:
    """Heatmap of ``column`` over layers (rows) and denoising steps (columns) for one kind.

    Args:
        results: probe results.
        kind: ``"cross"`` or ``"self"``.
        column: a numeric column of :class:`probe.probing.probes.ProbeRow`.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure.
    """
    layers, steps, values = results.grid(kind, column)
    if not layers:
        raise KeyError(
            f"no {kind!r} results to plot; kinds: {sorted({r.kind for r in results.rows})}"
        )
    fig, ax = new_axes(ax, (0.3 * len(steps) + 2.5, 0.28 * len(layers) + 1.5))
    low = 0.0 if column != "selectivity" else min(0.0, float(np.nanmin(values)))
    image = ax.imshow(values, aspect="auto", origin="upper", cmap="viridis", vmin=low, vmax=1.0)
    ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    ticks = range(0, len(steps), max(1, len(steps) // 10))
    ax.set_xticks(list(ticks), [str(steps[i]) for i in ticks])
    ax.set_xlabel("denoising step (0 = first, noisiest)")
    ax.set_ylabel("layer (execution order)")
    ax.set_title(f"{kind}-attention: {COLUMN_TITLES.get(column, column)} ({results.label})")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_accuracy_by_layer(
    results: ProbeResults, ax: Axes | None = None, steps: slice | None = None
) -> Figure:
    """Accuracy per layer (mean over steps) for each kind, with both controls and chance.

    Args:
        results: probe results.
        ax: axes to draw on (default: a new figure).
        steps: a slice of the step axis to average (default: every step).

    Returns:
        The figure.
    """
    fig, ax = new_axes(ax, (7.0, 3.5))
    chance = None
    for kind, colour in (("cross", "tab:blue"), ("self", "tab:orange")):
        if not results.select(kind):
            continue
        for column, style in (
            ("acc_mean", "-o"),
            ("shuffled_acc", ":"),
            ("random_model_acc", "--"),
        ):
            layers, _, values = results.grid(kind, column)
            part = values[:, steps] if steps is not None else values
            if np.all(np.isnan(part)):
                continue
            label = f"{kind}: {COLUMN_TITLES[column].split(' (')[0]}"
            ax.plot(layers, np.nanmean(part, axis=1), style, color=colour, label=label, ms=3)
        chance = results.select(kind)[0].chance
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, label="chance")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("accuracy (mean over steps)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"probe accuracy by layer ({results.label})")
    ax.legend(**LEGEND_BELOW)
    return fig


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


def save_probe_figures(results: ProbeResults, out: str | Path, dpi: int = 120) -> list[Path]:
    """Write the heatmap of each kind and the by-layer plot as PNGs into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    figures: list[tuple[str, Any]] = [
        (f"heatmap_{kind}.png", plot_accuracy_heatmap(results, kind))
        for kind in sorted({r.kind for r in results.rows})
    ]
    figures.append(("accuracy_by_layer.png", plot_accuracy_by_layer(results)))
    for name, fig in figures:
        fig.savefig(out / name, dpi=dpi)
        paths.append(out / name)
    return paths

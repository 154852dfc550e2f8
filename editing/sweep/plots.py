"""The sweep's trade-off figure: structure kept (mask IoU) against edit success, per layer range.

Plots go on a ``matplotlib.figure.Figure`` (or the ``ax`` given); pyplot's global state is left
alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from editing.sweep.table import summarise_rows
from probe.viz.layout import KIND_COLOURS

GROUP_MARKERS = {"preset": "*", "selection": "P", "window": "o", "prefix": ">", "suffix": "<"}
KIND_NAMES = {"self": "self-attention replaced", "cross": "cross-attention replaced"}


def sweep_tradeoff(
    rows: Iterable[dict[str, Any]],
    ax: Axes | None = None,
    label_all: bool = True,
    zoom: bool = True,
) -> Figure:
    """Scatter of mean structure IoU (y) against edit success rate (x), one point per
    (kind, layer range, step fraction). Presets (none, fpe, paper, all) and probe selections
    are stars/crosses with bold labels; the best corner is top right.

    Args:
        rows: per-edit rows of :func:`editing.sweep.run.sweep` (or its ``sweep.csv``), or the
            summaries of :func:`editing.sweep.table.summarise_rows`.
        ax: axes to draw on (default: a new figure).
        label_all: label windows, prefixes and suffixes too (presets are always labelled).
        zoom: fit the axes to the points (at least 0.2 wide), so a cluster (say every range at
            success 1.0) can be told apart; ``False``: both axes from 0 to 1.

    Returns:
        The figure.

    Example:
        >>> fig = sweep_tradeoff(read_rows("sweep_out/sweep.csv"))
        >>> fig.savefig("tradeoff.png")
    """
    rows = list(rows)
    summary = rows if rows and "n" in rows[0] else summarise_rows(rows)
    if ax is None:
        fig = Figure(figsize=(7, 5.5))
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    # real checkpoints scored by CLIP have no masks: structure is the DINO distance instead
    by_iou = any(float(s["iou"]) == float(s["iou"]) for s in summary) or not summary
    ykey = "iou" if by_iou else "shape_distance"
    fractions = {s["step_fraction"] for s in summary}
    seen: set[str] = set()
    for s in summary:
        colour = KIND_COLOURS.get(s["kind"], "tab:gray")
        marker = GROUP_MARKERS.get(s["group"], "s")
        prominent = s["group"] in ("preset", "selection")
        legend = KIND_NAMES.get(s["kind"], s["kind"]) if s["kind"] not in seen else None
        seen.add(s["kind"])
        ax.scatter(s["success"], s[ykey], c=colour, marker=marker, s=160 if prominent else 40,
                   edgecolors="black" if prominent else "none", label=legend, zorder=3)  # fmt: skip
        if prominent or label_all:
            name = s["range"] if len(fractions) == 1 else f"{s['range']} @{s['step_fraction']:g}"
            ax.annotate(name, (s["success"], s[ykey]), xytext=(4, 3), textcoords="offset points",
                        fontsize=8 if prominent else 6, color=colour,
                        fontweight="bold" if prominent else "normal")  # fmt: skip
    ax.set_xlabel("edit success (target label judged on the edit)")
    xs = [float(s["success"]) for s in summary]
    ax.set_xlim(*_limits(xs, -0.03, 1.08, zoom))
    if by_iou:
        ax.set_ylabel("structure kept (mask IoU, source vs edit)")
        ax.set_ylim(*_limits([float(s["iou"]) for s in summary], -0.03, 1.05, zoom))
    else:
        ax.set_ylabel("structure distance to the source (DINO; lower = kept)")
        ax.invert_yaxis()  # structure kept stays at the top
    _ticks_within_rates(ax, y=by_iou)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Layer-range sweep: structure vs edit success")
    return fig


def _limits(values: list[float], low: float, high: float, zoom: bool) -> tuple[float, float]:
    """Axis limits: ``(low, high)``, or with ``zoom`` the values' span padded (≥ 0.2 wide),
    moved inside ``(low, high)``."""
    finite = [v for v in values if v == v]
    if not zoom or not finite:
        return low, high
    lo, hi = min(finite), max(finite)
    span = min(high - low, max(0.2, hi - lo + 0.1))
    start = min(max(low, (lo + hi) / 2 - span / 2), high - span)
    return start, start + span


def _ticks_within_rates(ax: Axes, y: bool = True) -> None:
    """Keep tick labels on [0, 1]: rates above 1 or below 0 mean nothing."""
    for axis in (ax.xaxis, ax.yaxis) if y else (ax.xaxis,):
        ticks = [t for t in axis.get_majorticklocs() if -1e-9 <= t <= 1 + 1e-9]
        axis.set_ticks(ticks)


def sweep_windows(rows: Iterable[dict[str, Any]], ax: Axes | None = None) -> Figure:
    """Edit success (solid) and structure IoU (dashed) of each sliding window of layers, at
    the window's centre layer, one colour per kind: where along the UNet replacement blocks
    the edit and where it keeps the layout.

    Args:
        rows: per-edit rows or summaries of a sweep (only ``window`` ranges are drawn; with
            several step fractions, the first one).
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure.

    Example:
        >>> sweep_windows(read_rows("sweep_out/sweep.csv")).savefig("windows.png")
    """
    rows = list(rows)
    summary = rows if rows and "n" in rows[0] else summarise_rows(rows)
    windows = [s for s in summary if s["group"] == "window"]
    if ax is None:
        fig = Figure(figsize=(7, 4))
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    if windows:
        fraction = windows[0]["step_fraction"]
        windows = [s for s in windows if s["step_fraction"] == fraction]
    for kind in dict.fromkeys(s["kind"] for s in windows):
        points = sorted(
            (sum(map(int, s["range"].split("-"))) / 2, s["success"], s["iou"])
            for s in windows
            if s["kind"] == kind
        )
        x, success, iou = zip(*points, strict=True)
        colour = KIND_COLOURS.get(kind, "tab:gray")
        ax.plot(x, success, "-o", color=colour, label=f"{kind}: edit success")
        ax.plot(x, iou, "--s", color=colour, label=f"{kind}: structure IoU", alpha=0.7)
    ax.set_xlabel("centre of the replaced window (layer index, down → mid → up)")
    ax.set_ylabel("rate / IoU")
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3)
    if windows:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no window ranges in this sweep (--ranges windows)",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
    ax.set_title("Sliding windows of replaced layers")
    return fig


def shift_by_layer(
    rows: Iterable[dict[str, Any]],
    probe_scores: dict[int, float],
    score_name: str = "self-attention colour probe selectivity",
    ax: Axes | None = None,
) -> Figure:
    """Source shift of single-layer replacements against a per-layer probe score.

    Does the probe predict where the source's colour leaks? One point per single-layer range
    of the sweep (``--ranges 0 1 2 ... 15``), its mean ``source_shift`` against the layer's
    probe score (e.g. ``selection.json``'s ``evidence.per_layer[i].self_selectivity``). The
    title gives Spearman's rank correlation; the dashed line is the plain target's shift.

    Raises:
        ValueError: the rows hold no single-layer range with a probe score, or no shift.

    Example:
        >>> per_layer = json.load(open("layers.json"))["evidence"]["per_layer"]
        >>> scores = {int(k): v["self_selectivity"] for k, v in per_layer.items()}
        >>> shift_by_layer(read_rows("sweep_layers/sweep.csv"), scores).savefig("leak.png")
    """
    import numpy as np
    from scipy.stats import spearmanr

    summary = summarise_rows(rows)
    points = [
        (int(s["range"]), probe_scores[int(s["range"])], float(s["source_shift"]), s["success"])
        for s in summary
        if s["range"].isdigit() and int(s["range"]) in probe_scores
    ]
    points = [p for p in points if p[2] == p[2]]
    if len(points) < 2:
        raise ValueError(
            "shift_by_layer needs single-layer ranges (--ranges 0 1 2 ...) of colour edits whose "
            f"layers have probe scores; found {len(points)}"
        )
    if ax is None:
        fig = Figure(figsize=(7, 4.5))
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    layer, score, shift, success = (np.array(v) for v in zip(*points, strict=True))
    dots = ax.scatter(score, shift, c=success, cmap="viridis_r", vmin=min(0.8, success.min()),
                      vmax=1.0, s=50, edgecolors="black", zorder=3)  # fmt: skip
    for i, x, y in zip(layer, score, shift, strict=True):
        ax.annotate(f"L{i}", (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8)
    plain = [s for s in summary if s["range"] == "none"]
    if plain and plain[0]["source_shift"] == plain[0]["source_shift"]:
        ax.axhline(plain[0]["source_shift"], ls="--", c="gray", lw=1, label="no replacement")
        ax.legend(loc="upper left", fontsize=8)
    fig.colorbar(dots, ax=ax, label="edit success")
    rho = spearmanr(score, shift)
    ax.set_xlabel(score_name)
    ax.set_ylabel("source shift (0 = target colour, 1 = source's)")
    ax.set_title(
        f"Self-attention replaced in one layer: leak vs probe (Spearman ρ = {rho.statistic:.2f},"
        f" p = {rho.pvalue:.3f}, {len(points)} layers)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    return fig

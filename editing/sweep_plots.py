"""The sweep's trade-off figure: structure kept (mask IoU) against edit success, per layer range.

Plots go on a ``matplotlib.figure.Figure`` (or the ``ax`` given); pyplot's global state is left
alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

KIND_COLOURS = {"self": "tab:blue", "cross": "tab:red"}
GROUP_MARKERS = {"preset": "*", "selection": "P", "window": "o", "prefix": ">", "suffix": "<"}
KIND_NAMES = {"self": "self-attention replaced", "cross": "cross-attention replaced"}


def sweep_tradeoff(
    rows: Iterable[dict[str, Any]], ax: Axes | None = None, label_all: bool = True
) -> Figure:
    """Scatter of mean structure IoU (y) against edit success rate (x), one point per
    (kind, layer range, step fraction). Presets (none, fpe, paper, all) and probe selections
    are stars/crosses with bold labels; the best corner is top right.

    Args:
        rows: per-edit rows of :func:`editing.sweep.sweep` (or its ``sweep.csv``), or the
            summaries of :func:`editing.sweep.summarise_rows`.
        ax: axes to draw on (default: a new figure).
        label_all: label windows, prefixes and suffixes too (presets are always labelled).

    Returns:
        The figure.

    Example:
        >>> fig = sweep_tradeoff(read_rows("sweep_out/sweep.csv"))
        >>> fig.savefig("tradeoff.png")
    """
    from editing.sweep import summarise_rows

    rows = list(rows)
    summary = rows if rows and "n" in rows[0] else summarise_rows(rows)
    if ax is None:
        fig = Figure(figsize=(7, 5.5))
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    fractions = {s["step_fraction"] for s in summary}
    seen: set[str] = set()
    for s in summary:
        colour = KIND_COLOURS.get(s["kind"], "tab:gray")
        marker = GROUP_MARKERS.get(s["group"], "s")
        prominent = s["group"] in ("preset", "selection")
        legend = KIND_NAMES.get(s["kind"], s["kind"]) if s["kind"] not in seen else None
        seen.add(s["kind"])
        ax.scatter(s["success"], s["iou"], c=colour, marker=marker, s=160 if prominent else 40,
                   edgecolors="black" if prominent else "none", label=legend, zorder=3)  # fmt: skip
        if prominent or label_all:
            name = s["range"] if len(fractions) == 1 else f"{s['range']} @{s['step_fraction']:g}"
            ax.annotate(name, (s["success"], s["iou"]), xytext=(4, 3), textcoords="offset points",
                        fontsize=8 if prominent else 6, color=colour,
                        fontweight="bold" if prominent else "normal")  # fmt: skip
    ax.set_xlabel("edit success (target label judged on the edit)")
    ax.set_ylabel("structure kept (mask IoU, source vs edit)")
    ax.set_xlim(-0.03, 1.08)
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Layer-range sweep: structure vs edit success")
    return fig


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
    from editing.sweep import summarise_rows

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

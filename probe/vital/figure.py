"""The vitality bar figure: one bar per block (mean ± spread over seeds), vital blocks marked.

    plot_vitality(report, vital=[0, 1, 4], threshold=0.1).savefig("vital.png")

Returns the figure and leaves pyplot's global state alone, as every attnprobe figure does.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from probe.vital.vitality import VitalityReport
from probe.viz.layout import new_axes

PLACE_COLOURS = {
    "joint": "tab:blue", "single": "tab:orange", "down": "tab:green", "mid": "tab:purple",
    "up": "tab:red", "block": "tab:gray",
}  # fmt: skip


def plot_vitality(
    report: VitalityReport,
    vital: Sequence[int] = (),
    threshold: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bars of every bypassed layer's vitality, error bars its spread over seeds.

    Args:
        report: a measured :class:`~probe.vital.vitality.VitalityReport`.
        vital: layers to mark as vital (hatched, bold tick labels).
        threshold: drawn as a dashed line when the rule was a threshold.
        ax: draw here (default: a new figure).

    Example:
        >>> fig = plot_vitality(report, vital_layers(report.means(), top_k=4))
    """
    values = report.vitality()
    layers = list(values)
    fig, ax = new_axes(ax, (max(4.0, 0.45 * len(layers) + 1.5), 3.2))
    places = [str(report.layers[i]["place"]) for i in layers]
    bars = ax.bar(
        range(len(layers)), [values[i][0] for i in layers], yerr=[values[i][1] for i in layers],
        color=[PLACE_COLOURS.get(p, "tab:gray") for p in places], capsize=2,
    )  # fmt: skip
    for bar, layer in zip(bars, layers, strict=True):
        if layer in vital:
            bar.set_hatch("//")
            bar.set_edgecolor("black")
    ax.set_xticks(range(len(layers)), [str(i) for i in layers], fontsize=8)
    for label, layer in zip(ax.get_xticklabels(), layers, strict=True):
        label.set_fontweight("bold" if layer in vital else "normal")
    if threshold is not None:
        ax.axhline(threshold, color="black", linestyle="--", linewidth=0.8, label="threshold")
    colours = {p: PLACE_COLOURS.get(p, "tab:gray") for p in places}
    handles = [Patch(color=colour, label=place) for place, colour in colours.items()]
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *handles], fontsize=7, frameon=False)
    ax.set_xlabel("bypassed layer (attnprobe index; hatched: vital)")
    ax.set_ylabel(f"vitality (1 − similarity, {report.score})")
    n = len({r.seed for r in report.rows})
    ax.set_title(f"{report.settings.get('model', '')}: mean ± std over {n} seeds", fontsize=9)
    return fig

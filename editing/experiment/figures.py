"""The figures of ``attnprobe reproduce``: one recorded prompt's heat maps and SVD components,
the probes' accuracy along steps, and an edit grid. Written as PNGs with a manifest
(``figures/figures.json``: file, section, title, caption) that the report reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from probe.attention.layer_info import LayerInfo
from probe.families import family_of

SAMPLE_PROMPT, SAMPLE_WORDS = "a red car", ("red", "car")
EDIT_SOURCE, EDIT_TARGETS = "a red car", ("a blue car", "a green car")
MANIFEST = "figures.json"
EXPLORER = "explorer.html"  # the sample recording's interactive explorer (probe.viz.explorer)


def svd_layers(layers: list[LayerInfo], latent_hw: tuple[int, int]) -> list[int]:
    """The first decoder layer at each of the two finest resolutions (where layout is drawn)."""
    up = [layer for layer in layers if layer.place == "up"] or layers
    by_res: dict[tuple[int, int], int] = {}
    for layer in up:
        by_res.setdefault(layer.resolution_at(*latent_hw), layer.index)
    finest = sorted(by_res, key=lambda hw: -hw[0] * hw[1])[:2]
    return [by_res[hw] for hw in finest]


class FigureWriter:
    """Saves figures into ``folder`` and keeps the manifest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict[str, str]] = []

    def add(
        self, fig: Figure, name: str, section: str, title: str, caption: str, explorer: str = ""
    ) -> None:
        """Save ``fig`` as ``name``; ``explorer``: the explorer page of its maps, if any (the
        report links the figure to it)."""
        fig.savefig(self.folder / name, dpi=110)
        entry = {"file": name, "section": section, "title": title, "caption": caption}
        self.entries.append(entry | ({"explorer": explorer} if explorer else {}))

    def close(self) -> None:
        (self.folder / MANIFEST).write_text(json.dumps(self.entries, indent=2))


def attention_figures(pipe: Any, figs: FigureWriter, num_steps: int) -> None:
    """Record ``a red car`` (seed 0) and draw its heat maps and SVD components.

    Self-attention is recorded whole where every step fits the default budget (toy, tiny), else
    as its top 8 SVD components (``auto``: SDXL at 1024 px and 50 steps needs ~21 GiB whole).
    The recording's explorer page (``figures/explorer.html``, at most 5 MB) is linked from each
    of these figures in the report.
    """
    from probe.models.defaults import generation_defaults
    from probe.recording.recorder import record_attention
    from probe.viz import heatmaps_by_layer, heatmaps_by_step, word_heatmaps
    from probe.viz.explorer import explorer_page
    from probe.viz.svd import self_attention_components

    defaults = generation_defaults(pipe)
    guidance = defaults["guidance_scale"]
    with record_attention(pipe, self_reduce="auto") as maps:
        image = pipe(
            SAMPLE_PROMPT, num_inference_steps=num_steps, height=defaults["height"],
            width=defaults["width"], generator=torch.Generator().manual_seed(0),
            **family_of(pipe).pipe_kwargs(pipe, [SAMPLE_PROMPT], guidance),
        ).images[0]  # fmt: skip
    image.save(figs.folder / "sample.png")
    explorer_page(maps, image).save(figs.folder / EXPLORER)
    section = "attention"
    words = ", ".join(repr(w) for w in SAMPLE_WORDS)
    figs.add(word_heatmaps(maps, image, SAMPLE_WORDS), "token_heatmaps.png", section,
             f"Token heat maps of '{SAMPLE_PROMPT}'",
             f"Cross-attention of {words}, averaged over heads, all layers and all steps, "
             "over the generated image (seed 0).", EXPLORER)  # fmt: skip
    figs.add(heatmaps_by_layer(maps, image, "car"), "heatmaps_by_layer.png", section,
             "'car' by layer", "The word's cross-attention in each layer (mean over steps); "
             "titles give the layer index and its query resolution.", EXPLORER)  # fmt: skip
    figs.add(heatmaps_by_step(maps, image, "car"), "heatmaps_by_step.png", section,
             "'car' by denoising step", "The word's cross-attention at evenly spread steps "
             "(mean over layers): the object's place is settled early.", EXPLORER)  # fmt: skip
    mid = maps.steps[len(maps.steps) // 2]
    whole = maps.settings.get("self_reduce") == "full"
    rows = "rows centred" if whole else "the recorded svd:8, not centred"
    for layer in svd_layers(maps.layers, maps.latent_hw):
        h, w = maps.resolution(layer)
        fig = self_attention_components(maps, layer, mid, image=image)
        figs.add(fig, f"svd_L{layer:02d}.png", section,
                 f"Self-attention components, layer {layer} ({h}x{w}), step {mid}",
                 "The paper's Figure 3: the top singular vectors of the layer's self-attention "
                 f"({rows}), reshaped to its latent grid. Red and blue are the two signs; "
                 "the object's silhouette and the ground separate.", EXPLORER)  # fmt: skip


def probe_step_figures(out: Path, figs: FigureWriter) -> None:
    """Accuracy along the steps for every probed set."""
    from probe.probing.probes import ProbeResults
    from probe.viz.probe_figures import plot_accuracy_by_step

    for csv in sorted((out / "probe").glob("*/results.csv")):
        results = ProbeResults.from_csv(csv)
        figs.add(plot_accuracy_by_step(results), f"probe_{csv.parent.name}_by_step.png", "probe",
                 f"{results.label}: accuracy by step",
                 "Mean over layers per step, for each kind, with the shuffled-label control "
                 "(dotted) and chance.")  # fmt: skip


def edit_figure(pipe: Any, out: Path, figs: FigureWriter, num_steps: int) -> None:
    """One source, two targets, edited with each method the sweep compares."""
    from editing.editor import edit
    from editing.experiment.edit_figures import edit_grid

    selection = out / "selection.json"
    methods: dict[str, dict[str, Any]] = {
        "none (target alone)": {"method": "none"},
        "FPE, fpe layers": {"method": "fpe", "layers": "fpe"},
        "FPE, probe selection": {"method": "fpe", "layers": str(selection)},
        "self, all layers": {"method": "fpe", "layers": "all"},
        "cross, all layers": {"method": "cross", "layers": "all"},
    }
    if not selection.is_file():
        methods.pop("FPE, probe selection")
    if family_of(pipe).joint_attention:  # no cross-attention replacement on a DiT
        methods.pop("cross, all layers")
    results = {
        name: edit(pipe, EDIT_SOURCE, list(EDIT_TARGETS), seed=0, num_steps=num_steps, **kw)
        for name, kw in methods.items()
    }
    figs.add(edit_grid(results), "edit_grid.png", "edit",
             f"Edits of '{EDIT_SOURCE}'",
             "Each row: the source (seed 0) and its edits by one method. FPE replaces the "
             "target's self-attention with the source's in the given layers for the first 80% "
             "of steps; 'cross' replaces cross-attention instead (UNets only).")  # fmt: skip


def make_figures(pipe: Any, out: Path, num_steps: int) -> list[dict[str, str]]:
    """Write every figure of the run into ``out/figures`` and return the manifest."""
    figs = FigureWriter(out / "figures")
    attention_figures(pipe, figs, num_steps)
    probe_step_figures(out, figs)
    edit_figure(pipe, out, figs, num_steps)
    figs.close()
    return figs.entries

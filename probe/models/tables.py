"""Layer tables of a model: of a run (at the size it generates) or from its config alone.

run_layer_table(pipe, 768, 768)     # the table a run of pipe at 768 px resolves specs with
layer_table("~/models/sd15")        # without loading weights (meta device)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from probe.attention.layer_info import LayerInfo
from probe.families import FAMILIES, family_of, family_of_folder
from probe.models.defaults import generation_defaults, saved_defaults, vae_scale
from probe.models.loading import resolve_folder
from probe.models.tiny import tiny_vae


def run_layer_table(
    pipe: Any, height: int | None = None, width: int | None = None
) -> list[LayerInfo]:
    """The layer table of a run of ``pipe`` that generates ``height × width`` pixels.

    A layer table belongs to a run: resolution rules (``res<=16``, ``res<max``) mean query
    positions at the latent size generated. This is the table to resolve a spec with before the
    run's first denoiser call (a dataset's memory plan, a sweep's ranges); from that call on the
    hooks hold the same table (``hooks.layers``).

    Args:
        pipe: the pipeline.
        height, width: image size in pixels (default: the model's,
            see :func:`~probe.models.defaults.generation_defaults`).

    Example:
        >>> [layer.resolution for layer in run_layer_table(load_pipeline("tiny"), 128)][:1]
        [(16, 8)]
    """
    defaults = generation_defaults(pipe)
    scale = pipe.vae_scale_factor
    h, w = height or defaults["height"], width or defaults["width"]
    family = family_of(pipe)
    return family.layers(family.denoiser(pipe), h // scale, w // scale)


def layer_table(
    spec: str | Path = "toy", height: int | None = None, width: int | None = None
) -> list[LayerInfo]:
    """The attention-layer table of a model without loading its weights: its denoiser is built
    from its config on the meta device (0.07 s for SD 1.5's config on this CPU).

    For commands with no run (``attnprobe layers``); a run's own table is
    :func:`run_layer_table` (or ``hooks.layers``, ``maps.layers``, ``ProbeResults.layer_table``).

    Args:
        spec: as :func:`~probe.models.loading.load_pipeline`.
        height, width: image size in pixels (default: the model's own size).

    Raises:
        FileNotFoundError: as :func:`~probe.models.loading.load_pipeline`.

    Example:
        >>> resolve_layers(layer_table("~/models/sd15"), "fpe")
        [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    """
    built = next((f for f in FAMILIES if str(spec) in f.built_in_denoisers), None)
    if built is not None:
        family, denoiser = built, built.built_in_denoisers[str(spec)]()
        scale, saved = vae_scale(tiny_vae().config), {}
    else:
        folder = resolve_folder(spec)
        family = family_of_folder(folder)
        denoiser = family.empty_denoiser(folder)
        vae = folder / "vae" / "config.json"
        scale = vae_scale(json.loads(vae.read_text()) if vae.is_file() else None)
        saved = saved_defaults(folder)
    size = family.native_latent(denoiser)[0] * scale
    h = height or saved.get("height", size)
    w = width or saved.get("width", size)
    return family.layers(denoiser, h // scale, w // scale)

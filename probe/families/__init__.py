"""Model families: one module each, one object each, one look-up.

    family = family_of(pipe)            # also a bare denoiser, a folder path, or a family name
    family.name, family.title           # 'sdxl', 'SDXL'
    family.layers(family.denoiser(pipe))

=========  ===========================  ==========================================================
name       module                       what it is
=========  ===========================  ==========================================================
``sd``     :mod:`probe.families.sd`     SD 1.x/2.x (and the toys): UNet, one CLIP encoder, DDIM
``sdxl``   :mod:`probe.families.sdxl`   SDXL: UNet, two CLIP encoders, text-time conditioning
``sd3``    :mod:`probe.families.sd3`    SD3/SD3.5: joint-attention DiT, flow-match Euler
``flux``   :mod:`probe.families.flux`   FLUX.1: double- and single-stream DiT, distilled guidance
``pixart`` :mod:`probe.families.pixart` PixArt-Σ: DiT with self- and cross-attention, T5, DDIM
=========  ===========================  ==========================================================

Everything above this package (hooks, recorder, probes, editors, the edit loop, the sweep, the
command line) asks the family object. Adding a family is one module here and one line in
:data:`FAMILIES` (docs/families.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probe.families.base import (
    PRESET_NAMES,
    Conditioning,
    MicroConditioning,
    ModelFamily,
    read_model_index,
)
from probe.families.flux import FLUX
from probe.families.pixart import PIXART
from probe.families.sd import SD
from probe.families.sd3 import SD3
from probe.families.sdxl import SDXL

FAMILIES: tuple[ModelFamily, ...] = (FLUX, SD3, PIXART, SDXL, SD)
"""Every family, in the order a denoiser's config is matched (the most specific first)."""

NOT_LOADED = ("Flux", "PixArtAlpha", "Sana", "HunyuanDiT", "AuraFlow", "Lumina", "CogView")
"""Pipeline class prefixes of transformer families attnprobe does not load (yet); of Flux's,
only ``FluxPipeline`` folders load (Kontext, Fill, Control variants take other inputs)."""

__all__ = [
    "FAMILIES",
    "PRESET_NAMES",
    "Conditioning",
    "MicroConditioning",
    "ModelFamily",
    "family_named",
    "family_of",
    "family_of_folder",
    "family_of_table",
]


def family_named(name: str) -> ModelFamily:
    """The family called ``name`` (``LayerInfo.family``).

    Raises:
        ValueError: no such family; the message lists them.
    """
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(
        f"unknown model family {name!r}: attnprobe knows {', '.join(f.name for f in FAMILIES)}"
    )


def family_of(model: Any) -> ModelFamily:
    """The family of a pipeline, a bare denoiser (read from its config), a diffusers folder
    (read from its model_index.json) or a family name.

    Raises:
        ValueError: a denoiser no family recognises.

    Example:
        >>> family_of(load_pipeline("tiny-xl")).name, family_of("~/models/sd15").name
        ('sdxl', 'sd')
    """
    if isinstance(model, str) and model in {f.name for f in FAMILIES}:
        return family_named(model)
    if isinstance(model, str) and any(model in f.built_in for f in FAMILIES):
        return next(f for f in FAMILIES if model in f.built_in)
    if isinstance(model, (str, Path)):
        return family_of_folder(Path(model).expanduser())
    denoiser = next(
        (d for d in (getattr(model, "unet", None), getattr(model, "transformer", None)) if d),
        model,
    )
    config = getattr(denoiser, "config", None)
    for family in FAMILIES:
        if config is not None and family.recognises(config):
            return family
    raise ValueError(
        f"{type(model).__name__} is not a denoiser attnprobe knows: pass a pipeline, a UNet or "
        f"a transformer of one of {', '.join(f.title for f in FAMILIES)}"
    )


def family_of_folder(folder: Path) -> ModelFamily:
    """The family of a diffusers folder from its model_index.json ``_class_name``; a class no
    family claims loads as SD 1.x/2.x, as before families existed.

    Raises:
        NotImplementedError: a transformer family attnprobe does not load (:data:`NOT_LOADED`;
            the message says what to use instead).
    """
    pipeline_class = str(read_model_index(folder).get("_class_name"))
    for family in FAMILIES:
        if family.recognises_folder(pipeline_class):
            return family
    if pipeline_class.startswith(NOT_LOADED):
        raise NotImplementedError(
            f"{folder} is a {pipeline_class} folder (model_index.json): attnprobe loads "
            f"{', '.join(f.title for f in reversed(FAMILIES))} folders so far "
            f"({', '.join(f.pipeline_class for f in reversed(FAMILIES))}); use one of those, "
            "or --model toy"
        )
    return SD


def family_of_table(layers: Sequence[Any]) -> ModelFamily:
    """The family of a layer table; a table read from a file written before families were
    stored (``family`` None) is SD's: attnprobe loaded SD 1.x/2.x only then."""
    name = layers[0].family if layers else None
    return family_named(name or SD.name)

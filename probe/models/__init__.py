"""Models: the embedded ``toy`` models, the random ``tiny`` ones, or a diffusers folder of any
family attnprobe knows (:mod:`probe.families`) on disk.

pipe = load_pipeline("toy")              # or "tiny", "tiny-xl", "/models/stable-diffusion-v1-5"
layers = layer_table("toy")              # the layer table from the config alone
family_of(pipe).name                     # "sd", "sdxl", "sd3", "flux" or "pixart"

The names load their module on first use: the family modules import the tiny builders of this
package, and this package's loaders import the families.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "FAMILIES": "probe.families",
    "Conditioning": "probe.families",
    "MicroConditioning": "probe.families",
    "family_of": "probe.families",
    "defaults_origin": "probe.models.defaults",
    "generation_defaults": "probe.models.defaults",
    "resolve_device": "probe.models.devices",
    "TOY_DIR": "probe.models.loading",
    "load_pipeline": "probe.models.loading",
    "layer_table": "probe.models.tables",
    "run_layer_table": "probe.models.tables",
    "assemble_pipeline": "probe.models.tiny",
    "build_tiny_pipeline": "probe.models.tiny",
    "sd_ddim_scheduler": "probe.models.tiny",
}

__all__ = [
    "FAMILIES",
    "TOY_DIR",
    "Conditioning",
    "MicroConditioning",
    "assemble_pipeline",
    "build_tiny_pipeline",
    "defaults_origin",
    "family_of",
    "generation_defaults",
    "layer_table",
    "load_pipeline",
    "resolve_device",
    "run_layer_table",
    "sd_ddim_scheduler",
]

if TYPE_CHECKING:
    from probe.families import FAMILIES, Conditioning, MicroConditioning, family_of
    from probe.models.defaults import defaults_origin, generation_defaults
    from probe.models.devices import resolve_device
    from probe.models.loading import TOY_DIR, load_pipeline
    from probe.models.tables import layer_table, run_layer_table
    from probe.models.tiny import assemble_pipeline, build_tiny_pipeline, sd_ddim_scheduler


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'probe.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

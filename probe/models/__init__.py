"""Models: the embedded ``toy``, the random ``tiny``, ``tiny-xl``, ``tiny-sd3`` and ``tiny-flux``,
or a diffusers SD 1.x/2.x, SDXL, SD3 or Flux folder on disk; what differs per family is in
:mod:`probe.models.family`.

pipe = load_pipeline("toy")              # or "tiny", "tiny-xl", "/models/stable-diffusion-v1-5"
layers = layer_table("toy")              # the layer table from the config alone
family_of(pipe).name                     # "sd", "sdxl", "sd3" or "flux"
"""

from probe.models.family import FAMILIES, Conditioning, MicroConditioning, family_of
from probe.models.loading import (
    TOY_DIR,
    assemble_pipeline,
    build_tiny_pipeline,
    defaults_origin,
    generation_defaults,
    layer_table,
    load_pipeline,
    resolve_device,
    run_layer_table,
    sd_ddim_scheduler,
)

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

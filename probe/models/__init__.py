"""Models: the embedded ``toy``, the random ``tiny``, or a diffusers folder on disk.

pipe = load_pipeline("toy")              # or "tiny", or "/models/stable-diffusion-v1-5"
layers = layer_table("toy")              # the layer table from the config alone
"""

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
    "TOY_DIR",
    "assemble_pipeline",
    "build_tiny_pipeline",
    "defaults_origin",
    "generation_defaults",
    "layer_table",
    "load_pipeline",
    "resolve_device",
    "run_layer_table",
    "sd_ddim_scheduler",
]

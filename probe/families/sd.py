"""SD 1.x/2.x: one CLIP text encoder, a UNet of 16 transformer blocks, DDIM editing.

    family_of(load_pipeline("toy")).name          # 'sd'
    load_pipeline("~/models/sd15")                # a StableDiffusionPipeline, safety checker off

Presets: ``paper`` is the FPE paper's "layers 4-14" of SD 1.5's 16; ``masactrl`` MasaCtrl's
default start layer 10 (``masactrl.py``, ``start_layer=10``): layers 10-15. Generation: the
official FPE, Prompt-to-Prompt and MasaCtrl settings (50 DDIM steps, guidance 7.5), at the
UNet's native size. The toy models (``toy``, ``toy-v2``) are folders of this family.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionPipeline

from probe.families.conditioning import Conditioning, MicroConditioning
from probe.families.unet import UNetFamily
from probe.models.placement import execution_device, pretrained_options
from probe.models.tiny import build_tiny_pipeline, tiny_unet


class SDFamily(UNetFamily):
    """SD 1.x/2.x (see the module)."""

    name = "sd"
    title = "SD 1.x/2.x"
    pipeline_class = "StableDiffusionPipeline"
    generation_defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
    }
    presets: ClassVar[dict[str, str | None]] = {"all": "all", "paper": "4-14", "masactrl": "10-15"}
    built_in: ClassVar[dict[str, Any]] = {"tiny": build_tiny_pipeline}
    built_in_denoisers: ClassVar[dict[str, Any]] = {"tiny": tiny_unet}

    def recognises_folder(self, pipeline_class: str) -> bool:
        return pipeline_class.startswith("StableDiffusion") and not pipeline_class.startswith(
            ("StableDiffusionXL", "StableDiffusion3")
        )

    def load(self, folder: Path, dtype: torch.dtype | None = None) -> Any:
        # The safety checker is never loaded: safety_checker=None drops it (SD 1.x folders list
        # it, SD 2.x list [null, null]), and requires_safety_checker=False keeps diffusers from
        # warning that it is missing; images come back unfiltered. The feature extractor loads.
        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder), local_files_only=True, safety_checker=None,
            requires_safety_checker=False, **pretrained_options(folder, dtype),
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def encode(
        self, pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
        micro: MicroConditioning,
    ) -> Conditioning:  # fmt: skip
        cond, uncond = pipe.encode_prompt(list(prompts), execution_device(pipe), 1, guidance)
        return Conditioning(torch.cat([uncond, cond]) if guidance else cond)

    def no_preset(self, preset: str, n_layers: int) -> str:
        return (
            f"layer preset {preset!r} has no meaning on this SD UNet of {n_layers} layers: use "
            "'fpe', 'all', a range, or a selection from `attnprobe select`"
        )


SD = SDFamily()

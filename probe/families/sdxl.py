"""SDXL: two CLIP text encoders, added text-time conditioning, a UNet of 70 transformer blocks.

    family_of(load_pipeline("tiny-xl")).name      # 'sdxl'
    cond = family.encode(xl, ["a red car"], True, (1024, 1024), MicroConditioning())
    cond.added["time_ids"]                        # [rows, 6]; cond.added["text_embeds"]

============================  ==================================================================
text side                     two CLIP encoders, penultimate layers concatenated (768+1280); one
                              vocabulary, so one word look-up (``pipe.tokenizer``) for both
added conditioning per row    ``text_embeds`` (pooled, second encoder) and ``time_ids``
                              (micro-conditioning, 6 numbers)
unconditional rows            zeros when the folder says ``force_zeros_for_empty_prompt``
presets                       ``masactrl``: the authors' SDXL script (TencentARC/MasaCtrl,
                              ``run_synthesis_sdxl.py``: ``LAYER_LIST = [44, 54, 64]`` of 70,
                              noted there as possibly not optimal) starts at 44, the first of
                              the three: ``up_blocks.0.attentions.1`` to the last layer, named
                              by block so that it means the same blocks on ``tiny-xl``.
                              ``paper`` refused: the FPE paper has no SDXL experiment.
generation                    MasaCtrl's SDXL script: DDIM, 50 steps, guidance 7.5 (diffusers'
                              own SDXL call defaults to 5.0), at 1024 px
============================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionXLPipeline

from probe.families.conditioning import Conditioning, MicroConditioning
from probe.families.unet import UNetFamily
from probe.models.placement import execution_device, pretrained_options
from probe.models.tiny import build_tiny_xl_pipeline, tiny_xl_unet


class SDXLFamily(UNetFamily):
    """SDXL base (see the module)."""

    name = "sdxl"
    title = "SDXL"
    pipeline_class = "StableDiffusionXLPipeline"
    addition_embed_type: ClassVar[str | None] = "text_time"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    added_conditioning: ClassVar[tuple[str, ...]] = ("text_embeds", "time_ids")
    generation_defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
    }
    presets: ClassVar[dict[str, str | None]] = {
        "all": "all", "paper": None, "masactrl": "up_blocks.0.attentions.1-",
    }  # fmt: skip
    built_in: ClassVar[dict[str, Any]] = {"tiny-xl": build_tiny_xl_pipeline}
    built_in_denoisers: ClassVar[dict[str, Any]] = {"tiny-xl": tiny_xl_unet}

    def recognises_folder(self, pipeline_class: str) -> bool:
        return pipeline_class.startswith("StableDiffusionXL")

    def load(self, folder: Path, dtype: torch.dtype | None = None) -> Any:
        """No invisible watermark: it would change every image decoded after the VAE, and
        attnprobe compares images (recording leaves them unchanged, identity edits)."""
        pipe = StableDiffusionXLPipeline.from_pretrained(
            str(folder), local_files_only=True, add_watermarker=False,
            **pretrained_options(folder, dtype),
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pipeline_options(self, pipe: Any, components: dict[str, Any]) -> dict[str, Any]:
        """Zeros for the empty prompt as the folder says; no watermark (see :meth:`load`)."""
        zeros = pipe.config.get("force_zeros_for_empty_prompt", True)
        return {"force_zeros_for_empty_prompt": zeros, "add_watermarker": False}

    def encode(
        self, pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
        micro: MicroConditioning,
    ) -> Conditioning:  # fmt: skip
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompt=list(prompts), device=execution_device(pipe), num_images_per_prompt=1,
            do_classifier_free_guidance=guidance,
        )  # fmt: skip
        rows = 2 * len(prompts) if guidance else len(prompts)
        ids = torch.tensor([micro.time_ids(*size)], dtype=cond.dtype, device=cond.device)
        embeddings = torch.cat([uncond, cond]) if guidance else cond
        text_embeds = torch.cat([uncond_pooled, pooled]) if guidance else pooled
        added = {"text_embeds": text_embeds, "time_ids": ids.repeat(rows, 1)}
        return Conditioning(embeddings, added)

    def no_preset(self, preset: str, n_layers: int) -> str:
        return (
            f"layer preset {preset!r} is the FPE paper's 'layers 4-14' of SD 1.5's 16 layers and "
            f"has no published meaning on this SDXL UNet of {n_layers} layers: use "
            "'fpe' (the official code's rule, query maps of <= 32x32 positions), a rule such as "
            "'res<max' or 'positions<=1024', or a selection from `attnprobe sweep`"
        )


SDXL = SDXLFamily()

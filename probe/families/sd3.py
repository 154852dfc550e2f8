"""SD3 and SD3.5: a transformer of joint-attention blocks, three text encoders, flow matching.

    family_of(load_pipeline("tiny-sd3")).name         # 'sd3'
    load_pipeline("~/models/sd3-medium")              # StableDiffusion3Pipeline, float32

The denoiser is ``pipe.transformer`` (``SD3Transformer2DModel``); a layer is one joint block
(:mod:`probe.families.joint_dit`), its one softmax over [image; text] tokens split into four
kinds (:mod:`probe.attention.joint`). The text side is CLIP-L and CLIP-G penultimate states
concatenated (768+1280, zero-padded to T5's 4096) over 77 tokens, followed by T5's
``max_sequence_length`` (256) tokens, zeros when the folder has no T5; words are looked up with
the CLIP tokenizer (``pipe.tokenizer``), so they name columns 0-76 of the text part; every row
also needs ``pooled_projections`` (the two CLIP pooled embeddings, 768+1280); unconditional rows
are the empty prompt's; a step is one iteration of the flow-match Euler loop. Generation:
diffusers' ``StableDiffusion3Pipeline`` defaults (28 steps, guidance 7.0, as on the SD3 medium
model card), at 1024 px. Presets: ``fpe`` = every block, ``paper`` and ``masactrl`` refused.

SD3.5 Large loads as SD3 (38 joint blocks, q/k RMS norms). SD3.5 Medium's first 13 blocks
(``dual_attention_layers`` in its config) add a second attention, ``attn2``: image tokens only,
after the joint one. It is hooked as a kind of its own, ``image_only`` (``[queries, queries]``
as ``self``; diffusers runs it with ``JointAttnProcessor2_0`` and no text tokens, which is plain
attention with q/k norms: attnprobe's :class:`~probe.attention.processor.HookedAttnProcessor`),
recorded with ``kinds=("image_only",)`` and left alone by the DiT FPE, which edits the joint
attention only (docs/joint_attention.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from torch import Tensor

from probe.attention.joint import JOINT_KINDS, HookedSD3AttnProcessor
from probe.attention.layer_info import Kind
from probe.attention.processor import HookedAttnProcessor
from probe.families.base import meta_model, read_model_index
from probe.families.conditioning import Conditioning, MicroConditioning
from probe.families.joint_dit import JointDiTFamily
from probe.families.sampler import FlowSampler, flow_shift
from probe.models.placement import execution_device, pretrained_options
from probe.models.tiny_dit import build_tiny_sd3_pipeline, tiny_sd3_transformer

SD3_T5_TOKENS = 256
"""T5 tokens of SD3's joint text sequence: diffusers' ``max_sequence_length`` default (zeros
when the folder has no T5); they follow the 77 CLIP tokens."""
IMAGE_ONLY: tuple[Kind, ...] = ("image_only",)
"""The kind of SD3.5 Medium's ``attn2``: image queries reading image keys, its own softmax."""


class SD3Family(JointDiTFamily):
    """SD3 (see the module)."""

    name = "sd3"
    title = "SD3"
    pipeline_class = "StableDiffusion3Pipeline"
    processor_class = HookedSD3AttnProcessor
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "text_encoder_3")
    added_conditioning: ClassVar[tuple[str, ...]] = ("pooled_projections",)
    text_keys: ClassVar[int] = 77 + SD3_T5_TOKENS
    kinds: ClassVar[tuple[Kind, ...]] = (*JOINT_KINDS, *IMAGE_ONLY)
    generation_defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 28,
        "guidance_scale": 7.0,
    }
    built_in: ClassVar[dict[str, Any]] = {"tiny-sd3": build_tiny_sd3_pipeline}
    built_in_denoisers: ClassVar[dict[str, Any]] = {"tiny-sd3": tiny_sd3_transformer}

    def recognises_folder(self, pipeline_class: str) -> bool:
        return pipeline_class.startswith("StableDiffusion3")

    def recognises(self, config: Any) -> bool:
        return config.get("joint_attention_dim") is not None and "num_single_layers" not in config

    def attention_modules(self, denoiser: Any) -> dict[str, tuple[int, tuple[Kind, ...]]]:
        """Every block's joint ``attn`` (the four joint kinds), each followed, in a dual-attention
        block (SD3.5 Medium's first 13), by its image-only ``attn2`` (``image_only``)."""
        modules: dict[str, tuple[int, tuple[Kind, ...]]] = {}
        for name, (index, kinds) in super().attention_modules(denoiser).items():
            modules[name] = (index, kinds)
            if getattr(denoiser.transformer_blocks[index], "attn2", None) is not None:
                modules[f"transformer_blocks.{index}.attn2.processor"] = (index, IMAGE_ONLY)
        return modules

    def hooked_processors(self, hooks: Any, denoiser: Any, saved: dict[str, Any]) -> dict:
        """:class:`HookedSD3AttnProcessor` on every joint ``attn``; on every ``attn2`` the plain
        :class:`HookedAttnProcessor` of kind ``image_only`` (what diffusers'
        ``JointAttnProcessor2_0`` computes when called without text tokens)."""
        hooked = {}
        for name, (index, kinds) in self.attention_modules(denoiser).items():
            layer, fallback = hooks.layers[index], saved[name]
            if kinds == IMAGE_ONLY:
                hooked[name] = HookedAttnProcessor(hooks, layer, "image_only", fallback)
            else:
                hooked[name] = self.processor_class(hooks, layer, "self", fallback)
        return hooked

    def load(self, folder: Path, dtype: torch.dtype | None = None) -> Any:
        """In float32 unless asked (its configs record float16); a folder without T5
        (``text_encoder_3`` null in model_index.json) loads without it, and its T5 tokens are
        zeros, as diffusers does."""
        index = read_model_index(folder)
        absent = {  # diffusers refuses a null T5 in model_index.json unless passed as None
            name: None
            for name in ("text_encoder_3", "tokenizer_3")
            if (index.get(name) or [None])[0] is None or not (folder / name).is_dir()
        }
        pipe = StableDiffusion3Pipeline.from_pretrained(
            str(folder), local_files_only=True, **pretrained_options(folder, dtype), **absent
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def empty_denoiser(self, folder: Path) -> Any:
        return meta_model(SD3Transformer2DModel, folder / "transformer")

    def encode(
        self, pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
        micro: MicroConditioning,
    ) -> Conditioning:  # fmt: skip
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=execution_device(pipe),
            num_images_per_prompt=1, do_classifier_free_guidance=guidance,
        )  # fmt: skip
        embeddings = torch.cat([uncond, cond]) if guidance else cond
        pooled_rows = torch.cat([uncond_pooled, pooled]) if guidance else pooled
        return Conditioning(embeddings, {"pooled_projections": pooled_rows})

    def predict(
        self, pipe: Any, model_in: Tensor, t: Tensor, cond: Conditioning, **extra: Any
    ) -> Tensor:
        return pipe.transformer(
            hidden_states=model_in, timestep=t.expand(model_in.shape[0]), return_dict=False,
            **cond.transformer_kwargs(),
        )[0]  # fmt: skip

    def sampler(self, pipe: Any, num_steps: int, latent_hw: tuple[int, int]) -> FlowSampler:
        """The folder's flow-match Euler; with ``use_dynamic_shifting`` the shift ``mu`` is
        computed as diffusers' SD3 pipeline does."""
        config = pipe.scheduler.config
        mu = None
        if config.get("use_dynamic_shifting"):
            mu = flow_shift(config, self.image_tokens(pipe.transformer, latent_hw), 1.16)
        return FlowSampler(self, pipe, num_steps, latent_hw, mu=mu)


SD3 = SD3Family()

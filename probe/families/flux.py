"""Flux (FLUX.1): double- and single-stream joint blocks, T5 text, guidance distilled.

    family_of(load_pipeline("tiny-flux")).name        # 'flux'
    load_pipeline("~/models/flux-dev")                # FluxPipeline, float32

The denoiser is ``pipe.transformer`` (``FluxTransformer2DModel``): 19 double- and 38
single-stream blocks on FLUX.1, read by :mod:`probe.families.flux_attention`. The joint text is
T5's 512 tokens, so words are looked up with T5's tokenizer (``pipe.tokenizer_2``); every row
needs ``pooled_projections`` (CLIP's pooled output). FLUX.1-dev is guidance-distilled: no
unconditional rows, the guidance scale is a transformer input (default 3.5, 28 steps, 1024 px;
a Flux without a guidance embedding, such as the toy Flux trained with caption dropout, guides
with unconditional rows instead: :meth:`FluxFamily.guides_with_rows`).

The sampler is ``FluxPipeline``'s loop, step for step: latents ``[samples, 16, h, w]`` packed
2×2 into 64-channel tokens, image ids ``(0, row, col)`` per token and zero text ids, sigmas
``linspace(1, 1/N, N)`` shifted by the image's token count (``mu``), the transformer called
with ``timestep / 1000``. Controllers' ``after_step`` see unpacked latents. Only
``FluxPipeline`` folders load (Kontext, Fill and Control take other inputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.utils import logging as diffusers_logging
from torch import Tensor

from probe.attention.layer_info import LayerInfo, Place
from probe.families.base import DenoiserCall, GuidanceWatch, meta_model
from probe.families.conditioning import Conditioning, MicroConditioning
from probe.families.flux_attention import HookedFluxAttnProcessor
from probe.families.joint_dit import JointDiTFamily
from probe.families.sampler import FlowSampler, flow_shift
from probe.models.placement import execution_device, pretrained_options
from probe.models.tiny_dit import build_tiny_flux_pipeline, tiny_flux_transformer

FLUX_T5_TOKENS = 512
"""T5 tokens of Flux's joint text sequence: ``FluxPipeline``'s ``max_sequence_length`` default."""

FLUX_DEV_VITAL_BLOCKS = (0, 1, 17, 18, 25, 28, 53, 54, 56)
"""Stable Flow's vital blocks of FLUX.1-dev (snap-research/stable-flow, run_stable_flow.py:
double-stream 0, 1, 17, 18; single-stream 28, 53, 54, 56, 25 minus 19), counted 0-56 over all
blocks, which is attnprobe's layer numbering of Flux (double blocks, then single blocks)."""

FLUX_DEV_BLOCKS = (19, 38)
"""FLUX.1-dev's (and schnell's) double- and single-stream block counts."""

FLUX_NATIVE_LATENT = 128
"""The latent side Flux is sampled at by default (diffusers' ``FluxPipeline.default_sample_size``:
1024 px); a Flux transformer's config has no ``sample_size`` (``tiny-flux`` registers one)."""


class FluxFamily(JointDiTFamily):
    """Flux (see the module)."""

    name = "flux"
    title = "Flux"
    pipeline_class = "FluxPipeline"
    processor_class = HookedFluxAttnProcessor
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    added_conditioning: ClassVar[tuple[str, ...]] = ("pooled_projections",)
    words: ClassVar[tuple[str, str]] = ("tokenizer_2", "text_encoder_2")
    text_keys: ClassVar[int] = FLUX_T5_TOKENS
    batch_guidance: ClassVar[bool] = False
    generation_defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
    }
    built_in: ClassVar[dict[str, Any]] = {"tiny-flux": build_tiny_flux_pipeline}
    built_in_denoisers: ClassVar[dict[str, Any]] = {"tiny-flux": tiny_flux_transformer}

    def recognises(self, config: Any) -> bool:
        return config.get("num_single_layers") is not None

    def load(self, folder: Path, dtype: torch.dtype | None = None) -> Any:
        with _quiet_sample_size():
            pipe = FluxPipeline.from_pretrained(
                str(folder), local_files_only=True, **pretrained_options(folder, dtype)
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def empty_denoiser(self, folder: Path) -> Any:
        with _quiet_sample_size():
            return meta_model(FluxTransformer2DModel, folder / "transformer")

    def native_latent(self, denoiser: Any) -> tuple[int, int]:
        size = denoiser.config.get("sample_size") or FLUX_NATIVE_LATENT
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def patch(self, denoiser: Any) -> int:
        return 2  # Flux packs 2x2 latents into one token

    def blocks(self, denoiser: Any) -> list[tuple[str, Place, Any]]:
        """The double-stream ``transformer_blocks`` ("joint"), then the single-stream
        ``single_transformer_blocks`` ("single")."""
        singles = [
            (f"single_transformer_blocks.{i}", "single", b.attn)
            for i, b in enumerate(denoiser.single_transformer_blocks)
        ]
        return [*super().blocks(denoiser), *singles]  # type: ignore[list-item]

    def call_inputs(self, args: tuple, kwargs: dict) -> DenoiserCall:
        """Its packed tokens carry no grid; their ``img_ids`` do (``(0, row, col)`` per
        2×2-packed token)."""
        call = super().call_inputs(args, kwargs)
        ids = kwargs.get("img_ids")
        if ids is None:
            raise RuntimeError(
                "a Flux transformer call without img_ids: call it as FluxPipeline does"
            )
        ids = ids[0] if ids.ndim == 3 else ids
        latent = 2 * (int(ids[:, 1].max()) + 1), 2 * (int(ids[:, 2].max()) + 1)
        return DenoiserCall(call.batch, call.timestep, call.context, latent)

    def encode(
        self, pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
        micro: MicroConditioning,
    ) -> Conditioning:  # fmt: skip
        if guidance and not self.guides_with_rows(pipe):
            raise ValueError(
                "FLUX.1 is guidance-distilled: its guidance_scale is an input of the transformer, "
                "not a second, unconditional batch half; encode with guidance=False"
            )
        texts = [""] * len(prompts) * guidance + list(prompts)  # unconditional rows first
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=texts, prompt_2=None, device=execution_device(pipe), num_images_per_prompt=1,
            max_sequence_length=self.text_key_count(pipe),
        )  # fmt: skip
        return Conditioning(embeds, {"pooled_projections": pooled})

    def guides_with_rows(self, pipe: Any) -> bool:
        """A guidance-distilled Flux (FLUX.1-dev: ``guidance_embeds``) takes its guidance scale
        as a transformer input; one without a guidance embedding (the toy Flux, trained with
        caption dropout) guides with unconditional rows, true classifier-free guidance, when the
        guidance scale is above 1 (FLUX.1-schnell, timestep-distilled, is sampled at guidance 1
        or below: pass ``guidance_scale=1``)."""
        return not bool(self.denoiser(pipe).config.get("guidance_embeds", False))

    def watch_guidance(self, pipe: Any) -> GuidanceWatch:
        """FluxPipeline's true CFG runs the unconditional rows as a second transformer call
        per step (under ``transformer.cache_context("uncond")``): the watch tells that call
        from the conditional one."""
        return _PassWatch(pipe)

    def pipe_kwargs(self, pipe: Any, prompts: Sequence[str], guidance_scale: float) -> dict:
        """FLUX.1-dev takes ``guidance_scale`` as a transformer input; a Flux without a
        guidance embedding (the toy) guides by true CFG: ``true_cfg_scale`` with an empty
        ``negative_prompt`` (FluxPipeline then calls the transformer twice per step). Both
        get the T5 length of :meth:`text_key_count` where it is below 512."""
        kwargs: dict[str, Any] = {**self.call_kwargs, "guidance_scale": guidance_scale}
        if self.guides_with_rows(pipe) and guidance_scale > 1:
            kwargs |= {"true_cfg_scale": guidance_scale, "negative_prompt": [""] * len(prompts)}
        length = self.text_key_count(pipe)
        if length < FLUX_T5_TOKENS:
            kwargs["max_sequence_length"] = length
        return kwargs

    def text_key_count(self, pipe: Any) -> int:
        """T5 tokens of the joint text: the pipeline's ``max_sequence_length`` default (512),
        or fewer where the T5 tokenizer says so (the toy Flux: 16)."""
        tokenizer = getattr(pipe, "tokenizer_2", None)
        length = int(getattr(tokenizer, "model_max_length", FLUX_T5_TOKENS))
        return min(length, FLUX_T5_TOKENS)

    def latent_channels(self, pipe: Any) -> int:
        return int(pipe.transformer.config.in_channels) // 4

    def vital_rule(self, layers: Sequence[LayerInfo]) -> str:
        """Stable Flow's published vital blocks (:data:`FLUX_DEV_VITAL_BLOCKS`) on a table of
        FLUX.1-dev's layout (19 double + 38 single blocks).

        Raises:
            ValueError: another layout (the toy Flux), with the way out.
        """
        counts = (sum(x.place == "joint" for x in layers), sum(x.place == "single" for x in layers))
        if counts != FLUX_DEV_BLOCKS:
            return super().vital_rule(layers)
        return ",".join(str(i) for i in FLUX_DEV_VITAL_BLOCKS)

    def predict(
        self, pipe: Any, model_in: Tensor, t: Tensor, cond: Conditioning, **extra: Any
    ) -> Tensor:
        """The velocity of unpacked latents ``[n, 16, h, w]``, packed for the call and back."""
        n, channels, h, w = model_in.shape
        packed = pipe._pack_latents(model_in, n, channels, h, w)
        img_ids = pipe._prepare_latent_image_ids(n, h // 2, w // 2, model_in.device, model_in.dtype)
        txt_ids = torch.zeros(
            cond.embeddings.shape[1], 3, device=model_in.device, dtype=model_in.dtype
        )
        guidance = None
        if pipe.transformer.config.guidance_embeds:  # one scale, or one per row (both halves)
            scale = extra.get("guidance_scale", self.generation_defaults["guidance_scale"])
            guidance = torch.as_tensor(scale, device=model_in.device, dtype=torch.float32)
            guidance = guidance.reshape(-1).repeat(n // guidance.numel())
        velocity = pipe.transformer(
            hidden_states=packed, timestep=t.expand(n).to(packed.dtype) / 1000,
            guidance=guidance, txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
            **cond.transformer_kwargs(),
        )[0]  # fmt: skip
        scale = pipe.vae_scale_factor
        return pipe._unpack_latents(velocity, h * scale, w * scale, scale)

    def sampler(self, pipe: Any, num_steps: int, latent_hw: tuple[int, int]) -> FlowSampler:
        config = pipe.scheduler.config
        mu = flow_shift(config, self.image_tokens(pipe.transformer, latent_hw), 1.15)
        sigmas = (
            None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)
        )
        return FlowSampler(self, pipe, num_steps, latent_hw, mu=mu, sigmas=sigmas)


@contextlib.contextmanager
def _quiet_sample_size() -> Iterator[None]:
    """A transformer config with ``sample_size`` (the toy Flux's native latent, read by
    :meth:`FluxFamily.native_latent`; ``FluxTransformer2DModel`` takes no such argument and
    keeps it in its config) loads without diffusers' "not expected" warning."""
    logger = diffusers_logging.get_logger("diffusers.configuration_utils")
    level = logger.level
    logger.setLevel(diffusers_logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _PassWatch(GuidanceWatch):
    """Which of FluxPipeline's transformer calls is under way: it names them with
    ``transformer.cache_context("cond" | "uncond")``, which the watch wraps while the hooks
    are open."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self.name: str | None = None
        transformer = pipe.transformer
        original = transformer.cache_context

        @contextlib.contextmanager
        def cache_context(name: str, **kwargs: Any) -> Iterator[None]:
            self.name = name
            try:
                with original(name, **kwargs):
                    yield
            finally:
                self.name = None

        transformer.cache_context = cache_context

    def unconditional_pass(self) -> bool:
        return self.name == "uncond"

    def detach(self) -> None:
        self.pipe.transformer.__dict__.pop("cache_context", None)  # the class's method again


FLUX = FluxFamily()

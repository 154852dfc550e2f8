"""The edit loop of a DiT (SD3): flow-match Euler with controllers on the hooks.

    final = denoise_flow(pipe, cond, noise, BatchLayout.for_edit(1, True), controllers, 28, 7.0)
    images = decode_flow(pipe, final)

UNet edits run DDIM at eta 0 (:mod:`editing.scheduler`), as every published editing method does.
SD3 is trained for rectified flow, and its Euler sampler is already deterministic, so an SD3 edit
runs the folder's own ``FlowMatchEulerDiscreteScheduler`` (a new instance from its config; with
``use_dynamic_shifting`` the shift ``mu`` is computed as diffusers' SD3 pipeline does). Every row
gets its text tokens and ``pooled_projections``
(:meth:`probe.models.family.Conditioning.transformer_kwargs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from torch import Tensor

from editing.methods.replace import bind_all
from probe.attention.batch import BatchLayout
from probe.attention.clock import denoising_steps
from probe.attention.controller import Controller
from probe.attention.dit_layers import is_flux
from probe.attention.hooks import AttentionHooks
from probe.models.family import Conditioning
from probe.models.schedulers import scheduler_settings


def flow_scheduler(pipe: Any, num_steps: int, latent_hw: tuple[int, int]) -> Any:
    """A new flow-match Euler scheduler from the pipeline's config, its timesteps set."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    kwargs: dict[str, Any] = {}
    config = scheduler.config
    if config.get("use_dynamic_shifting"):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
        )

        patch = pipe.transformer.config.patch_size
        seq = (latent_hw[0] // patch) * (latent_hw[1] // patch)
        kwargs["mu"] = calculate_shift(
            seq, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.16),
        )  # fmt: skip
    scheduler.set_timesteps(num_steps, device=pipe.device, **kwargs)
    return scheduler


@torch.no_grad()
def denoise_flow(
    pipe: Any,
    cond: Conditioning,
    latents: Tensor,
    layout: BatchLayout,
    controllers: Sequence[Controller],
    num_steps: int,
    guidance_scale: float,
) -> Tensor:
    """Run SD3's flow-match Euler loop on ``latents`` ``[samples, 16, h, w]`` with controllers
    (Flux's: :func:`editing.flux_sampling.denoise_flux`).

    Args:
        pipe: an SD3 or Flux pipeline.
        cond: the rows' conditioning (:func:`editing.sampling.encode_prompts`), unconditional
            rows first under guidance.
        latents: the initial noise, one row per sample.
        layout: the batch roles of the transformer's rows.
        controllers: editors and observers for the hooks.
        num_steps, guidance_scale: as the pipeline's call.

    Returns:
        Final latents ``[samples, 16, h, w]``.
    """
    if is_flux(pipe.transformer):
        from editing.flux_sampling import denoise_flux

        return denoise_flux(pipe, cond, latents, layout, controllers, num_steps, guidance_scale)
    latent_hw = (int(latents.shape[-2]), int(latents.shape[-1]))
    scheduler = flow_scheduler(pipe, num_steps, latent_hw)
    hooks = AttentionHooks(pipe, list(controllers), layout=layout, latent_hw=latent_hw)
    hooks.num_steps = num_steps
    bind_all(controllers, hooks.layers)
    guided = layout.has_guidance
    kwargs = cond.transformer_kwargs()
    with hooks:
        for i, t in denoising_steps(pipe, scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if guided else latents
            velocity = pipe.transformer(
                hidden_states=model_in, timestep=t.expand(model_in.shape[0]), return_dict=False,
                **kwargs,
            )[0]  # fmt: skip
            if guided:
                uncond, text = velocity.chunk(2)
                velocity = uncond + guidance_scale * (text - uncond)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            for c in controllers:
                latents = c.after_step(i, latents, layout)
    return latents


def flow_noise(pipe: Any, seed: int, latent_hw: tuple[int, int], n: int) -> Tensor:
    """The shared initial noise of an SD3 or Flux edit: one draw ``[1, 16, h, w]`` for ``seed``,
    repeated ``n`` times (flow matching starts at sigma 1: no scaling; Flux packs it later)."""
    channels = pipe.transformer.config.in_channels // (4 if is_flux(pipe.transformer) else 1)
    noise = torch.randn(1, channels, *latent_hw, generator=torch.Generator().manual_seed(seed))
    noise = noise.to(device=pipe.device, dtype=pipe.transformer.dtype)
    return noise.repeat(n, 1, 1, 1)


@torch.no_grad()
def decode_flow(pipe: Any, latents: Tensor) -> list[Image.Image]:
    """SD3 or Flux latents ``[n, 16, h, w]`` → PIL images (unscaled and shifted as diffusers
    does)."""
    config = pipe.vae.config
    images = pipe.vae.decode(latents / config.scaling_factor + config.shift_factor).sample
    return pipe.image_processor.postprocess(images, output_type="pil")


def flow_scheduler_settings(pipe: Any) -> dict[str, Any]:
    """What an SD3 or Flux edit's settings say about its scheduler (the folder's own, eta
    ``None``)."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return {**scheduler_settings(scheduler, None), "built_from": type(pipe.scheduler).__name__}

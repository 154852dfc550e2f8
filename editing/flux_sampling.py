"""The edit loop of Flux (FLUX.1): flow-match Euler on packed latents, controllers on the hooks.

    final = denoise_flux(pipe, cond, noise, BatchLayout.for_edit(1, False), controllers, 28, 3.5)

It is ``FluxPipeline``'s loop, step for step: latents ``[samples, 16, h, w]`` packed 2×2 into
64-channel tokens, image ids ``(0, row, col)`` per token and zero text ids, sigmas
``linspace(1, 1/N, N)`` shifted by the image's token count (``mu``), the transformer called
with ``timestep / 1000``. FLUX.1-dev is guidance-distilled: ``guidance_scale`` is the
transformer's guidance input (its default 3.5) and there is no unconditional batch half, so
every row is conditional (``BatchLayout.for_edit(n, guidance=False)``); FLUX.1-schnell, without
a guidance embedding, ignores it. Controllers' ``after_step`` see unpacked latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from torch import Tensor

from editing.methods.replace import bind_all
from probe.attention.batch import BatchLayout
from probe.attention.clock import denoising_steps
from probe.attention.controller import Controller
from probe.attention.hooks import AttentionHooks
from probe.models.family import Conditioning


def flux_scheduler(pipe: Any, num_steps: int, tokens: int) -> Any:
    """A new scheduler from the pipeline's config with ``FluxPipeline``'s sigmas and shift."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    config = scheduler.config
    mu = calculate_shift(
        tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5), config.get("max_shift", 1.15),
    )  # fmt: skip
    sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)
    scheduler.set_timesteps(num_steps, device=pipe.device, sigmas=sigmas, mu=mu)
    return scheduler


@torch.no_grad()
def denoise_flux(
    pipe: Any,
    cond: Conditioning,
    latents: Tensor,
    layout: BatchLayout,
    controllers: Sequence[Controller],
    num_steps: int,
    guidance_scale: float,
) -> Tensor:
    """Run Flux's loop on ``latents`` ``[samples, 16, h, w]`` with controllers on the hooks.

    Raises:
        ValueError: a layout with unconditional rows (FLUX.1 has none: see the module).

    Returns:
        Final latents ``[samples, 16, h, w]``.
    """
    if layout.has_guidance:
        raise ValueError(
            "FLUX.1 is guidance-distilled: lay the batch out without unconditional rows "
            "(BatchLayout.for_edit(n, guidance=False)); guidance_scale is its guidance input"
        )
    n, channels, h, w = latents.shape
    packed = pipe._pack_latents(latents, n, channels, h, w)
    img_ids = pipe._prepare_latent_image_ids(n, h // 2, w // 2, latents.device, latents.dtype)
    txt_ids = torch.zeros(cond.embeddings.shape[1], 3, device=latents.device, dtype=latents.dtype)
    scheduler = flux_scheduler(pipe, num_steps, packed.shape[1])
    hooks = AttentionHooks(pipe, list(controllers), layout=layout, latent_hw=(h, w))
    hooks.num_steps = num_steps
    bind_all(controllers, hooks.layers)
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full([n], guidance_scale, device=latents.device, dtype=torch.float32)
    size = (h * pipe.vae_scale_factor, w * pipe.vae_scale_factor)
    with hooks:
        for i, t in denoising_steps(pipe, scheduler.timesteps):
            velocity = pipe.transformer(
                hidden_states=packed, timestep=t.expand(n).to(packed.dtype) / 1000,
                guidance=guidance, txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
                **cond.transformer_kwargs(),
            )[0]  # fmt: skip
            packed = scheduler.step(velocity, t, packed, return_dict=False)[0]
            if controllers:
                unpacked = pipe._unpack_latents(packed, *size, pipe.vae_scale_factor)
                for c in controllers:
                    unpacked = c.after_step(i, unpacked, layout)
                packed = pipe._pack_latents(unpacked, n, channels, h, w)
    return pipe._unpack_latents(packed, *size, pipe.vae_scale_factor)

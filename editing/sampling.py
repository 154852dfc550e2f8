"""The DDIM sampling loop with controllers on the hooks, shared by editing and inversion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from editing.methods.replace import bind_all
from probe.attention.batch import BatchLayout
from probe.attention.controller import Controller
from probe.attention.hooks import AttentionHooks


def _check_prompts(tokenizer: Any, prompts: Sequence[str]) -> None:
    limit = tokenizer.model_max_length
    for prompt in prompts:
        n = len(tokenizer.tokenize(prompt)) + 2
        if n > limit:
            raise ValueError(
                f"prompt {prompt[:50]!r}... has {n} tokens; the text encoder reads {limit}: "
                "shorten it (an edit would silently lose the words past the cut)"
            )


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str], guidance: bool) -> Tensor:
    """Text embeddings ``[(uncond rows +) cond rows, tokens, dim]``, unconditional first."""
    _check_prompts(pipe.tokenizer, prompts)
    cond, uncond = pipe.encode_prompt(list(prompts), pipe.device, 1, guidance)
    return torch.cat([uncond, cond]) if guidance else cond


@torch.no_grad()
def denoise(
    pipe: Any,
    embeddings: Tensor,
    latents: Tensor,
    layout: BatchLayout,
    controllers: Sequence[Controller],
    num_steps: int,
    guidance_scale: float,
    source_trajectory: Sequence[Tensor] | None = None,
    uncond_embeddings: Sequence[Tensor] | None = None,
) -> Tensor:
    """Run the DDIM loop on ``latents`` ``[samples, 4, h, w]`` with controllers on the hooks.

    Args:
        source_trajectory: for real images, the inverted latents ``[1, 4, h, w]`` of every
            step (noisiest first, then ``z_0``): the source row follows them instead of being
            denoised (the official FPE real-image path).
        uncond_embeddings: per step, the unconditional embedding ``[1, tokens, dim]`` for
            every unconditional row (null-text inversion).

    Returns:
        Final latents ``[samples, 4, h, w]``.
    """
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=latents.device)
    hooks = AttentionHooks(pipe, list(controllers), layout=layout)
    hooks.num_steps = num_steps
    bind_all(controllers, hooks.layers)
    guided = layout.has_guidance
    with hooks:
        for i, t in enumerate(scheduler.timesteps):
            if source_trajectory is not None:
                latents[0] = source_trajectory[i][0]
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            if uncond_embeddings is not None:
                n = len(layout.indices(guidance="uncond"))
                embeddings = torch.cat([uncond_embeddings[i].expand(n, -1, -1), embeddings[n:]])
            noise = pipe.unet(model_in, t, encoder_hidden_states=embeddings).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents).prev_sample
    if source_trajectory is not None:
        latents[0] = source_trajectory[-1][0]
    return latents


@torch.no_grad()
def decode(pipe: Any, latents: Tensor) -> list[Image.Image]:
    """Latents ``[n, 4, h, w]`` → PIL images."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(images, output_type="pil")

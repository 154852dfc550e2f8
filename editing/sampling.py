"""The DDIM sampling loop with controllers on the hooks, shared by editing and inversion.

It always runs DDIM (eta 0) built from the model's own scheduler config
(:func:`editing.scheduler.editing_scheduler`), whatever scheduler the folder ships;
``pipe.scheduler`` is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from editing.methods.replace import bind_all
from editing.scheduler import EDIT_ETA, editing_scheduler
from probe.attention.batch import BatchLayout
from probe.attention.clock import denoising_steps
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
    source_branch: str = "forced",
) -> Tensor:
    """Run the DDIM loop on ``latents`` ``[samples, 4, h, w]`` with controllers on the hooks.

    The loop runs on :func:`~editing.scheduler.editing_scheduler` (DDIM from the model's
    scheduler config, eta 0); each iteration is one step of the hooks' clock. After each
    scheduler step every controller's ``after_step`` may change the latents (LocalBlend).

    Args:
        source_trajectory: for real images, the inverted latents ``[1, 4, h, w]`` of every
            step (noisiest first, then ``z_0``), which row 0 (the source) is put onto after
            every step (before ``after_step``), so that it follows them instead of drifting.
        uncond_embeddings: per step, the unconditional embedding ``[1, tokens, dim]`` for
            every unconditional row (null-text inversion).
        source_branch: with ``source_trajectory``: ``"forced"`` (the official FPE real-image
            path) or ``"direct"`` (Ju et al.'s direct-inversion variant: the source's
            correction, inverted latent minus its denoised one, is added to every other row
            too). A free source branch is a call without ``source_trajectory``.

    Returns:
        Final latents ``[samples, 4, h, w]``.
    """
    scheduler = editing_scheduler(pipe)
    scheduler.set_timesteps(num_steps, device=latents.device)
    latent_hw = (int(latents.shape[-2]), int(latents.shape[-1]))  # the run's layer table
    hooks = AttentionHooks(pipe, list(controllers), layout=layout, latent_hw=latent_hw)
    hooks.num_steps = num_steps
    bind_all(controllers, hooks.layers)
    guided = layout.has_guidance
    if source_trajectory is not None:
        _check_trajectory(source_trajectory, num_steps, source_branch)
        latents[0] = source_trajectory[0][0]
    with hooks:
        for i, t in denoising_steps(pipe, scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            if uncond_embeddings is not None:
                n = len(layout.indices(guidance="uncond"))
                embeddings = torch.cat([uncond_embeddings[i].expand(n, -1, -1), embeddings[n:]])
            noise = pipe.unet(model_in, t, encoder_hidden_states=embeddings).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, eta=EDIT_ETA).prev_sample
            if source_trajectory is not None:
                _follow_inversion(latents, source_trajectory[i + 1], source_branch == "direct")
            for c in controllers:  # e.g. Prompt-to-Prompt's LocalBlend
                latents = c.after_step(i, latents, layout)
    return latents


def _check_trajectory(trajectory: Sequence[Tensor], num_steps: int, source_branch: str) -> None:
    if source_branch not in ("forced", "direct"):
        raise ValueError(f"source_branch={source_branch!r}: use 'forced' or 'direct'")
    if len(trajectory) != num_steps + 1:
        raise ValueError(
            f"the inversion has {len(trajectory)} latents, {num_steps} steps need "
            f"{num_steps + 1}: invert with num_steps={num_steps}"
        )


def _follow_inversion(latents: Tensor, inverted: Tensor, correct_targets: bool) -> None:
    """Put the source row (0) onto the inverted latent ``[1, 4, h, w]`` of this step, in place;
    with ``correct_targets`` add the same correction to every other row (direct inversion)."""
    correction = inverted[0] - latents[0]
    latents[0] = inverted[0]
    if correct_targets:
        latents[1:] += correction


@torch.no_grad()
def decode(pipe: Any, latents: Tensor) -> list[Image.Image]:
    """Latents ``[n, 4, h, w]`` → PIL images."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(images, output_type="pil")

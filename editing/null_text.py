"""Null-text inversion (Mokady et al. 2023), Prompt-to-Prompt's way to edit real images.

After a DDIM inversion with the source prompt (the pivot), the unconditional embedding is
optimised step by step so that guided sampling from the noisiest latent retraces the pivot.
It costs ``inner_steps`` UNet passes with backward per DDIM step.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from editing.inversion import Inversion


def null_text_invert(
    pipe: Any,
    pivot: Inversion,
    prompt: str,
    guidance_scale: float | None = None,
    inner_steps: int = 10,
    lr: float = 1e-2,
    tolerance: float = 1e-5,
) -> Inversion:
    """Optimise one unconditional embedding per step along a DDIM inversion.

    Args:
        pipe: the pipeline.
        pivot: a DDIM inversion of the image (ideally with ``prompt``, guidance 1).
        prompt: the source prompt used while editing.
        guidance_scale: the guidance the edit will use (default the model's).
        inner_steps: Adam steps per DDIM step (the paper: 10).
        lr: Adam learning rate (the paper: 1e-2).
        tolerance: stop a step's optimisation once the loss is below this.

    Returns:
        The pivot's trajectory with ``null_embeddings`` set.

    Example:
        >>> inv = null_text_invert(pipe, ddim_invert(pipe, "car.png", "a red car"), "a red car")
        >>> edit(pipe, "a red car", ["a blue car"], method="p2p", inversion=inv)
    """
    from editing.sampling import encode_prompts
    from probe.models import generation_defaults

    scale = guidance_scale or generation_defaults(pipe)["guidance_scale"]
    uncond, cond = encode_prompts(pipe, [prompt], True).chunk(2)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(pivot.num_steps, device=pipe.device)
    latent = pivot.trajectory[0].clone()
    found = []
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="null-text inversion", leave=False)):
        target = pivot.trajectory[i + 1]
        with torch.no_grad():
            noise_cond = pipe.unet(latent, t, encoder_hidden_states=cond).sample
        uncond = _optimise_step(
            pipe, latent, t, uncond, noise_cond, target, scale, inner_steps, lr, tolerance
        )
        found.append(uncond.detach().clone())
        with torch.no_grad():
            noise_uncond = pipe.unet(latent, t, encoder_hidden_states=uncond).sample
            noise = noise_uncond + scale * (noise_cond - noise_uncond)
            latent = scheduler.step(noise, t, latent).prev_sample
    return Inversion(pivot.trajectory, prompt, pivot.num_steps, null_embeddings=found)


def _optimise_step(
    pipe: Any, latent: Any, t: Any, uncond: Any, noise_cond: Any, target: Any,
    scale: float, inner_steps: int, lr: float, tolerance: float,
) -> Any:  # fmt: skip
    uncond = uncond.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([uncond], lr=lr)
    for _ in range(inner_steps):
        noise_uncond = pipe.unet(latent, t, encoder_hidden_states=uncond).sample
        noise = noise_uncond + scale * (noise_cond - noise_uncond)
        prev = pipe.scheduler.step(noise, t, latent).prev_sample
        loss = torch.nn.functional.mse_loss(prev, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if loss.item() < tolerance:
            break
    return uncond

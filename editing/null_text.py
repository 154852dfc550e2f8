"""Null-text inversion (Mokady et al., CVPR 2023), Prompt-to-Prompt's way to edit real images.

    pivot = ddim_invert(pipe, "car.png", prompt="a red car")     # the source prompt, guidance 1
    inv = null_text_invert(pipe, pivot, "a red car")               # the published schedules
    edit(pipe, "a red car", ["a blue car"], method="p2p", inversion=inv)

As the authors' ``NullInversion`` (google/prompt-to-prompt, ``null_text_w_ptp.ipynb``): the pivot
is a DDIM inversion of the image with the *source prompt* and no guidance; then, from the
noisiest pivot latent, for each DDIM step ``i`` the unconditional embedding (warm-started from
step ``i − 1``'s result, the empty prompt's at step 0) gets up to 10 Adam iterations with
learning rate ``1e-2 · (1 − i/100)``, minimising the MSE between the guided DDIM step (guidance
7.5 on SD) and the pivot's next latent, and stops early once a loss is below
``1e-5 + i · 2e-5``; the guided step with the optimised embedding gives the next latent. Each
iteration costs a UNet pass with backward.

It runs on the same DDIM scheduler as the edit (:func:`probe.families.sampler.ddim_scheduler`),
never on ``pipe.scheduler``; under open hooks each DDIM step, inner iterations included, is one
step of the clock.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from editing.inversion import Inversion
from probe.attention.clock import denoising_steps
from probe.families import Conditioning, family_of
from probe.families.sampler import EDIT_ETA
from probe.models.placement import execution_device


def null_text_invert(
    pipe: Any,
    pivot: Inversion,
    prompt: str,
    guidance_scale: float | None = None,
    inner_steps: int = 10,
    lr: float = 1e-2,
    lr_decay: float = 0.01,
    tolerance: float = 1e-5,
    tolerance_growth: float = 2e-5,
    trace: list[dict[str, float]] | None = None,
) -> Inversion:
    """Optimise one unconditional embedding per DDIM step along a pivot inversion.

    Args:
        pipe: the pipeline.
        pivot: a DDIM inversion of the image; as published, with ``prompt`` and no guidance:
            ``ddim_invert(pipe, image, prompt=prompt)``.
        prompt: the source prompt used while editing.
        guidance_scale: the guidance the edit will use (default the model's: 7.5 on SD, the
            authors' ``GUIDANCE_SCALE``).
        inner_steps: at most this many Adam iterations per DDIM step (the authors: 10).
        lr: Adam's learning rate at step 0 (the authors: 1e-2).
        lr_decay: step ``i`` uses ``lr · (1 − lr_decay · i)`` (the authors: ``i / 100``).
        tolerance: step ``i`` stops once a loss is below ``tolerance + tolerance_growth · i``
            (the authors: ``1e-5 + i · 2e-5``).
        tolerance_growth: see ``tolerance``.
        trace: if given, one dict per DDIM step is appended: ``step``, ``lr``, ``tolerance``,
            ``iterations`` (Adam iterations run) and ``loss`` (the last one).

    Returns:
        The pivot's trajectory with ``null_embeddings`` set (``[1, tokens, dim]`` per step).

    Raises:
        ValueError: ``inner_steps < 1``, or a learning rate schedule that turns negative
            before the last step (more than ``1 + 1/lr_decay`` steps).

    Example:
        >>> pivot = ddim_invert(pipe, "car.png", prompt="a red car")
        >>> inv = null_text_invert(pipe, pivot, "a red car")
        >>> edit(pipe, "a red car", ["a blue car"], method="p2p", inversion=inv)
    """
    from editing.sampling import encode_prompts
    from probe.models import generation_defaults

    family_of(pipe).refuse("null-text inversion")  # SD3, Flux: DDIM steps do not apply
    if inner_steps < 1:
        raise ValueError(f"inner_steps={inner_steps}: use at least 1 (the authors: 10)")
    if lr * (1 - lr_decay * (pivot.num_steps - 1)) < 0:
        raise ValueError(
            f"lr {lr:g}·(1 − {lr_decay:g}·i) is negative at step {pivot.num_steps - 1}: use fewer "
            f"steps or lr_decay <= {1 / max(pivot.num_steps - 1, 1):g}"
        )
    scale = guidance_scale
    if scale is None:
        scale = generation_defaults(pipe)["guidance_scale"]
    both = encode_prompts(pipe, [prompt], True, pivot.pixel_size(pipe.vae_scale_factor))
    null_rows, cond = both.rows([0]), both.rows([1])  # SDXL: the uncond pooled/time ids stay
    uncond = null_rows.embeddings
    scheduler = family_of(pipe).ddim_scheduler(pipe)
    scheduler.set_timesteps(pivot.num_steps, device=execution_device(pipe))
    latent = pivot.trajectory[0].clone()
    found = []
    steps = denoising_steps(pipe, scheduler.timesteps)
    for i, t in tqdm(steps, total=pivot.num_steps, desc="null-text inversion", leave=False):
        with torch.no_grad():
            noise_cond = family_of(pipe).predict(pipe, latent, t, cond)
        step = _InnerStep(pipe, scheduler, latent, t, noise_cond, pivot.trajectory[i + 1], scale)
        step.null_rows = null_rows
        uncond, record = step.optimise(
            uncond, inner_steps, lr * (1 - lr_decay * i), tolerance + tolerance_growth * i
        )
        if trace is not None:
            trace.append({"step": i, **record})
        found.append(uncond.detach().clone())
        with torch.no_grad():
            latent = step.prev(step.noise_uncond(uncond))
    return Inversion(pivot.trajectory, prompt, pivot.num_steps, null_embeddings=found)


class _InnerStep:
    """One DDIM step of null-text inversion: the guided step and its optimisation."""

    def __init__(
        self, pipe: Any, scheduler: Any, latent: Any, t: Any, noise_cond: Any, target: Any,
        scale: float,
    ) -> None:  # fmt: skip
        self.pipe, self.scheduler, self.latent, self.t = pipe, scheduler, latent, t
        self.noise_cond, self.target, self.scale = noise_cond, target, scale
        self.null_rows: Conditioning | None = None  # the uncond row's added conditioning (SDXL)

    def noise_uncond(self, uncond: Any) -> Any:
        """The UNet's prediction with the unconditional text embedding ``uncond``."""
        rows = Conditioning(uncond)
        if self.null_rows is not None:
            rows = self.null_rows.with_embeddings(uncond)
        return family_of(self.pipe).predict(self.pipe, self.latent, self.t, rows)

    def prev(self, noise_uncond: Any) -> Any:
        """The guided DDIM step from ``latent`` with this unconditional prediction."""
        noise = noise_uncond + self.scale * (self.noise_cond - noise_uncond)
        return self.scheduler.step(noise, self.t, self.latent, eta=EDIT_ETA).prev_sample

    def optimise(
        self, uncond: Any, inner_steps: int, lr: float, tolerance: float
    ) -> tuple[Any, dict[str, float]]:
        """Adam on a copy of ``uncond`` (a fresh optimiser, as the authors'); returns the
        embedding after the last update and the step's record."""
        uncond = uncond.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([uncond], lr=lr)
        loss_value, done = float("nan"), 0
        while done < inner_steps:
            done += 1
            noise_uncond = self.noise_uncond(uncond)
            loss = torch.nn.functional.mse_loss(self.prev(noise_uncond), self.target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            loss_value = loss.item()
            if loss_value < tolerance:  # checked after the update, as the authors do
                break
        record = {"lr": lr, "tolerance": tolerance, "iterations": done, "loss": loss_value}
        return uncond, record

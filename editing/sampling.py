"""The DDIM sampling loop with controllers on the hooks, shared by editing and inversion.

It always runs DDIM (eta 0) built from the model's own scheduler config
(:func:`editing.scheduler.editing_scheduler`), whatever scheduler the folder ships;
``pipe.scheduler`` is left as it is. Every UNet row gets its family's conditioning
(:class:`probe.models.family.Conditioning`): the text embeddings, and on SDXL the pooled
embedding and time ids, doubled with the rows under guidance.
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
from probe.models import generation_defaults
from probe.models.family import Conditioning, MicroConditioning, encode_conditioning, family_of


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
def encode_prompts(
    pipe: Any,
    prompts: Sequence[str],
    guidance: bool,
    size: tuple[int, int] | None = None,
    micro_conditioning: MicroConditioning | None = None,
) -> Conditioning:
    """What the UNet rows of these prompts are conditioned on, unconditional rows first.

    Args:
        pipe: an SD 1.x/2.x or SDXL pipeline.
        prompts: one per sample.
        guidance: add the unconditional rows.
        size: (height, width) in pixels generated (SDXL's time ids; default the model's).
        micro_conditioning: SDXL's original size, crop and target size (default: the size
            generated, crop (0, 0), as diffusers).

    Returns:
        ``embeddings`` ``[(uncond rows +) cond rows, tokens, dim]`` and, on SDXL, ``added``
        ``text_embeds`` and ``time_ids`` for the same rows
        (:func:`probe.models.family.encode_conditioning`).

    Raises:
        ValueError: a prompt longer than the text encoder reads.
    """
    _check_prompts(pipe.tokenizer, prompts)
    if size is None:
        defaults = generation_defaults(pipe)
        size = (defaults["height"], defaults["width"])
    return encode_conditioning(pipe, prompts, guidance, size, micro_conditioning)


def as_conditioning(pipe: Any, embeddings: Conditioning | Tensor) -> Conditioning:
    """A :class:`Conditioning`; bare text embeddings only for a family that needs nothing else.

    Raises:
        ValueError: bare embeddings for SDXL (its rows need ``text_embeds`` and ``time_ids``).
    """
    if isinstance(embeddings, Conditioning):
        return embeddings
    family = family_of(pipe)
    if family.added_conditioning:
        raise ValueError(
            f"{family.title} needs {', '.join(family.added_conditioning)} for every UNet row, "
            "not bare text embeddings: pass encode_prompts(pipe, prompts, guidance)"
        )
    return Conditioning(embeddings)


@torch.no_grad()
def denoise(
    pipe: Any,
    embeddings: Conditioning | Tensor,
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
        embeddings: the rows' conditioning from :func:`encode_prompts` (bare text embeddings
            ``[rows, tokens, dim]`` do for SD 1.x/2.x).
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
    rows = as_conditioning(pipe, embeddings)
    if source_trajectory is not None:
        _check_trajectory(source_trajectory, num_steps, source_branch)
        latents[0] = source_trajectory[0][0]
    with hooks:
        for i, t in denoising_steps(pipe, scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            if uncond_embeddings is not None:
                rows = _with_null_text(rows, uncond_embeddings[i], layout)
            noise = pipe.unet(model_in, t, **rows.unet_kwargs()).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, eta=EDIT_ETA).prev_sample
            if source_trajectory is not None:
                _follow_inversion(latents, source_trajectory[i + 1], source_branch == "direct")
            for c in controllers:  # e.g. Prompt-to-Prompt's LocalBlend
                latents = c.after_step(i, latents, layout)
    return latents


def _with_null_text(cond: Conditioning, uncond: Tensor, layout: BatchLayout) -> Conditioning:
    """The unconditional rows' text embeddings replaced by a null-text embedding
    ``[1, tokens, dim]`` (their added conditioning stays)."""
    n = len(layout.indices(guidance="uncond"))
    embeddings = cond.embeddings
    return cond.with_embeddings(torch.cat([uncond.expand(n, -1, -1), embeddings[n:]]))


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

"""The one edit loop: any family's sampler, with controllers on the hooks.

    cond = encode_prompts(pipe, ["a red car", "a blue car"], guidance=True)
    final = denoise(pipe, cond, noise, BatchLayout.for_edit(1, True), controllers, 50, 7.5)
    images = decode(pipe, final)

The model's family (:mod:`probe.families`) gives the sampler: DDIM at eta 0 built from the
folder's scheduler config for UNets and PixArt, as every published editing method samples;
the folder's own flow-match Euler for SD3 and Flux. ``pipe.scheduler`` is left as it is. Every
row gets its family's conditioning (:class:`probe.families.Conditioning`): the text
embeddings, and SDXL's pooled embedding and time ids, SD3's and Flux's pooled projections,
doubled with the rows under guidance. This is the one module of ``editing`` that builds
:class:`~probe.attention.hooks.AttentionHooks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from PIL import Image
from torch import Tensor

from probe.attention.batch import BatchLayout
from probe.attention.clock import denoising_steps
from probe.attention.controller import Controller
from probe.attention.hooks import AttentionHooks
from probe.families import Conditioning, MicroConditioning, family_of
from probe.families.sampler import decode_latents
from probe.models import defaults_origin, generation_defaults


class StepRule(Protocol):
    """How one sampling step moves the latents, where an inversion samples otherwise than its
    family's plain step (RF-Inversion's controlled reverse, RF-Solver's second order): given
    the sampler, the step index ``i`` and its timestep ``t``, the latents ``[n, C, h, w]``, the
    rows' conditioning, guidance on or off and its scale, the latents one step later. The
    default is ``sampler.denoise_step`` (:func:`plain_step`)."""

    def __call__(
        self, sampler: Any, i: int, t: Tensor, latents: Tensor, cond: Conditioning,
        guided: bool, guidance_scale: float | Tensor,
    ) -> Tensor: ...  # fmt: skip


def plain_step(
    sampler: Any, i: int, t: Tensor, latents: Tensor, cond: Conditioning, guided: bool,
    guidance_scale: float | Tensor,
) -> Tensor:  # fmt: skip
    """The family's own step: the guided model output, then the scheduler's step."""
    return sampler.denoise_step(t, latents, cond, guided, guidance_scale)


def check_prompts(pipe: Any, prompts: Sequence[str]) -> None:
    """Refuse a prompt longer than the word tokenizer's encoder reads.

    Raises:
        ValueError: the prompt, its token count and the limit.
    """
    family = family_of(pipe)
    tokenizer = getattr(pipe, family.words[0])
    limit = family.prompt_limit(pipe)
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
    """What the denoiser rows of these prompts are conditioned on, unconditional rows first.

    Args:
        pipe: a pipeline of any family.
        prompts: one per sample.
        guidance: add the unconditional rows.
        size: (height, width) in pixels generated (SDXL's time ids; default the model's).
        micro_conditioning: SDXL's original size, crop and target size (default: the size
            generated, crop (0, 0), as diffusers).

    Returns:
        ``embeddings`` ``[(uncond rows +) cond rows, tokens, dim]`` and the family's ``added``
        inputs for the same rows.

    Raises:
        ValueError: a prompt longer than the text encoder reads.
    """
    check_prompts(pipe, prompts)
    if size is None:
        defaults = generation_defaults(pipe)
        size = (defaults["height"], defaults["width"])
    family = family_of(pipe)
    return family.encode(pipe, prompts, guidance, size, micro_conditioning or MicroConditioning())


def as_conditioning(pipe: Any, embeddings: Conditioning | Tensor) -> Conditioning:
    """A :class:`Conditioning`; bare text embeddings only for a family that needs nothing else.

    Raises:
        ValueError: bare embeddings for a family whose rows need more (SDXL's ``text_embeds``
            and ``time_ids``, SD3's ``pooled_projections``, ...).
    """
    if isinstance(embeddings, Conditioning):
        return embeddings
    family = family_of(pipe)
    if family.added_conditioning:
        raise ValueError(
            f"{family.title} needs {', '.join(family.added_conditioning)} for every row, "
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
    guidance_scale: float | Tensor,
    source_trajectory: Sequence[Tensor] | None = None,
    uncond_embeddings: Sequence[Tensor] | None = None,
    source_branch: str = "forced",
    step_rule: StepRule | None = None,
) -> Tensor:
    """Run the family's sampler on ``latents`` ``[samples, C, h, w]`` with controllers on the
    hooks; each iteration is one step of the hooks' clock. After each step every controller's
    ``after_step`` may change the latents (LocalBlend).

    Args:
        embeddings: the rows' conditioning from :func:`encode_prompts` (bare text embeddings
            ``[rows, tokens, dim]`` do for SD 1.x/2.x).
        source_trajectory: for real images, the inverted latents ``[1, C, h, w]`` of every
            step (noisiest first, then ``z_0``), which row 0 (the source) is put onto after
            every step (before ``after_step``), so that it follows them instead of drifting.
        uncond_embeddings: per step, the unconditional embedding ``[1, tokens, dim]`` for
            every unconditional row (null-text inversion).
        source_branch: with ``source_trajectory``: ``"forced"`` (the official FPE real-image
            path) or ``"direct"`` (Ju et al.'s direct-inversion variant: the source's
            correction, inverted latent minus its denoised one, is added to every other row
            too). A free source branch is a call without ``source_trajectory``.
        step_rule: how each step moves the latents (default :func:`plain_step`; an inversion's
            own, :meth:`editing.inversion.Inversion.step_rule`).

    Returns:
        Final latents ``[samples, C, h, w]``.

    Raises:
        ValueError: a layout with unconditional rows for a family without them (FLUX.1 is
            guidance-distilled), a trajectory of the wrong length, a bad layer spec.
    """
    family = family_of(pipe)
    if layout.has_guidance and not family.guides_with_rows(pipe):
        raise ValueError(
            f"{family.title} is guidance-distilled: lay the batch out without unconditional rows "
            "(BatchLayout.for_edit(n, guidance=False)); guidance_scale is its guidance input"
        )
    latent_hw = (int(latents.shape[-2]), int(latents.shape[-1]))  # the run's layer table
    sampler = family.sampler(pipe, num_steps, latent_hw)
    hooks = loop_hooks(pipe, controllers, layout, num_steps, latent_hw)
    rows = as_conditioning(pipe, embeddings)
    if source_trajectory is not None:
        _check_trajectory(source_trajectory, num_steps, source_branch)
        latents[0] = source_trajectory[0][0]
    guided = layout.has_guidance
    step = step_rule or plain_step
    with hooks:
        for i, t in denoising_steps(pipe, sampler.timesteps):
            if uncond_embeddings is not None:
                rows = _with_null_text(rows, uncond_embeddings[i], layout)
            latents = step(sampler, i, t, latents, rows, guided, guidance_scale)
            if source_trajectory is not None:
                _follow_inversion(latents, source_trajectory[i + 1], source_branch == "direct")
            for c in controllers:  # e.g. Prompt-to-Prompt's LocalBlend
                latents = c.after_step(i, latents, layout)
    return latents


def loop_hooks(
    pipe: Any,
    controllers: Sequence[Controller],
    layout: BatchLayout,
    num_steps: int,
    latent_hw: tuple[int, int],
) -> AttentionHooks:
    """The hooks of a hand-written loop of ``num_steps`` steps at ``latent_hw`` (not yet
    open), its controllers bound: a layer spec that does not fit fails here, before any step.
    :func:`denoise` and the inversions that run controllers (RF-Solver's value store) use it."""
    hooks = AttentionHooks(pipe, list(controllers), layout=layout, latent_hw=latent_hw)
    hooks.num_steps = num_steps
    hooks.bind()
    return hooks


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
    """Put the source row (0) onto the inverted latent ``[1, C, h, w]`` of this step, in place;
    with ``correct_targets`` add the same correction to every other row (direct inversion)."""
    correction = inverted[0] - latents[0]
    latents[0] = inverted[0]
    if correct_targets:
        latents[1:] += correction


def decode(pipe: Any, latents: Tensor) -> list[Image.Image]:
    """Latents ``[n, C, h, w]`` → PIL images (the family's VAE scaling and shift)."""
    return decode_latents(pipe, latents)


def sampling_settings(
    pipe: Any, num_steps: int | None = None, guidance_scale: float | None = None
) -> dict[str, Any]:
    """Everything an edit samples with, defaults resolved: for ``sweep.json`` and the like.

    Returns:
        ``num_steps``, ``guidance_scale``, ``height``, ``width``, ``defaults`` (where the
        defaults came from, :func:`probe.models.defaults_origin`) and ``scheduler`` (the
        family's edit sampler: class, key config, eta, the folder's own class it was built
        from).

    Example:
        >>> sampling_settings(load_pipeline("toy"))["num_steps"]
        20
    """
    gen = generation_defaults(pipe)
    steps = num_steps or gen["num_inference_steps"]
    scale = pipe.vae_scale_factor
    latent_hw = (gen["height"] // scale, gen["width"] // scale)
    return {
        "num_steps": steps,
        "guidance_scale": gen["guidance_scale"] if guidance_scale is None else guidance_scale,
        "height": gen["height"],
        "width": gen["width"],
        "defaults": defaults_origin(pipe),
        "scheduler": family_of(pipe).sampler(pipe, steps, latent_hw).settings(),
    }

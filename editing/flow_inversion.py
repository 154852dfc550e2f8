"""Real images on flow models (SD3, Flux): inverse Euler on the flow's own ODE.

    inv = flow_invert(pipe, "car.png", prompt="a red car", nudge=1.15)   # Stable Flow's settings
    reconstruct(pipe, inv)                                              # denoised back, free
    edit(pipe, "a red car", ["a blue car"], inversion=inv)             # source row forced

As Stable Flow inverts a real image (Avrahami et al., CVPR 2025; snap-research/stable-flow,
``run_stable_flow.py``: ``image2latent`` and ``invert_and_save``; the ``invert_image`` branch of
its ``src/diffusers/pipelines/flux/pipeline_flux.py``; ``step_forward`` in its
``src/diffusers/schedulers/scheduling_flow_match_euler_discrete.py``):

1. encode: the VAE posterior mean, ``(mean − shift_factor) · scaling_factor`` as the pipelines
   encode (:func:`editing.inversion.encode_image`), times ``nudge`` (their *latent nudging*:
   1.15; 1 leaves the latent alone);
2. the family's edit sampler for ``num_steps`` (:class:`~probe.families.sampler.FlowSampler`:
   sigmas ``σ_0 = 1 > σ_1 > … > σ_N = 0``, Flux's shifted by the image's token count) is run
   backwards: from ``x_N`` (the encoded latent, at ``σ_N = 0``) for ``k = N−1 … 0``,
   ``x_k = x_{k+1} + (σ_k − σ_{k+1}) · v(x_{k+1}, t_k)``: the velocity of the latent in hand at
   the *next* (noisier) step's timestep ``t_k``, the timestep sampling step ``k`` will use, as
   their ``step_forward`` does (its step index counts down from the last timestep);
3. the prompt (theirs: the source prompt; here ``""`` unless told) at ``guidance_scale`` (theirs:
   1; FLUX.1-dev takes it as its guidance input, SD3 and a Flux without a guidance embedding as
   classifier-free guidance with the empty prompt's rows above 1).

The :class:`FlowInversion` keeps ``x_0 … x_N``, noisiest first, as a DDIM
:class:`~editing.inversion.Inversion` does, so :func:`editing.editor.edit` starts every row from
``x_0`` and (source branch ``forced``, FPE's default) puts the source row back onto ``x_{i+1}``
after sampling step ``i``, and :func:`editing.inversion.reconstruct` denoises ``x_0`` freely.
Stable Flow's own code puts its reference row onto ``inverted_latent_list[-i]`` after step ``i``,
which is the latent two sigmas noisier than the row (and, at step 0, the least noisy one); here
the row is put onto the latent of its own sigma. The trajectory ends on the *nudged* latent: the
source row of a forced edit ends there (decode it divided by ``nudge`` for the image itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from editing.inversion import Inversion, encode_image, load_image
from probe.attention.clock import denoising_steps
from probe.families import family_of
from probe.families.joint_dit import JointDiTFamily
from probe.families.sampler import FlowSampler
from probe.models import generation_defaults
from probe.models.vocabulary import check_known_words

STABLE_FLOW_NUDGE = 1.15
"""Stable Flow's latent nudging scalar (``image2latent(..., latent_nudging_scalar=1.15)``)."""
STABLE_FLOW_INVERSION_STEPS = 50
"""Stable Flow's inversion and edit steps on FLUX.1-dev (``num_inference_steps=50``)."""


@dataclass
class FlowInversion(Inversion):
    """An inverse-Euler inversion of a flow model (see the module).

    Attributes:
        trajectory: latents ``[1, C, h, w]`` noisiest first (``σ_0 = 1``), the nudged encoded
            image last (``σ_N = 0``); entry ``i`` is the latent at sampling step ``i``'s sigma.
        prompt: the prompt used to invert.
        num_steps: Euler steps.
        nudge: the factor the encoded latent was multiplied by (Stable Flow: 1.15).
        guidance_scale: the guidance the velocities were taken at.
    """

    nudge: float = 1.0
    guidance_scale: float = 1.0

    @property
    def kind(self) -> str:
        return "euler"

    def check_pipeline(self, pipe: Any) -> None:
        """Raise where ``pipe`` is not a flow model (a UNet is DDIM-inverted).

        Raises:
            NotImplementedError: the family's sampler is not a flow; the message names
                ``ddim_invert``.
        """
        flow_sampler(pipe, self.num_steps, tuple(self.trajectory[0].shape[-2:]), "a flow inversion")


def flow_sampler(pipe: Any, num_steps: int, latent_hw: tuple[int, ...], what: str) -> FlowSampler:
    """The family's flow-match Euler sampler, its timesteps set for ``num_steps``.

    Args:
        pipe: the pipeline.
        num_steps: sampling steps.
        latent_hw: the latent (height, width) (Flux's shift depends on it).
        what: what needs it, for the message.

    Raises:
        NotImplementedError: a family sampled otherwise (SD 1.x/2.x, SDXL, PixArt: DDIM), with
            the way out.
    """
    family = family_of(pipe)
    sampler = family.sampler(pipe, num_steps, (int(latent_hw[0]), int(latent_hw[1])))
    if not isinstance(sampler, FlowSampler):
        raise NotImplementedError(
            f"{what} needs a flow model (SD3, Flux); {family.title} is sampled with "
            f"{type(sampler).__name__}: invert it with editing.inversion.ddim_invert(pipe, image) "
            "and edit with edit(pipe, source, targets, inversion=inv)"
        )
    return sampler


@torch.no_grad()
def flow_invert(
    pipe: Any,
    image: str | Path | Image.Image | np.ndarray,
    prompt: str = "",
    num_steps: int | None = None,
    guidance_scale: float = 1.0,
    nudge: float = 1.0,
    height: int | None = None,
    width: int | None = None,
) -> FlowInversion:
    """Invert an image by running the flow's Euler sampler backwards (see the module).

    Args:
        pipe: an SD3 or Flux pipeline.
        image: a file, a PIL image or a uint8 array ``[H, W, 3]`` of exactly the size inverted.
        prompt: the prompt to invert with (Stable Flow: the source prompt).
        num_steps: Euler steps (default: the model's; Stable Flow:
            :data:`STABLE_FLOW_INVERSION_STEPS`). An edit from it samples as many.
        guidance_scale: guidance of the velocities (Stable Flow: 1, none).
        nudge: multiply the encoded latent by this first (Stable Flow: :data:`STABLE_FLOW_NUDGE`).
        height, width: the image's size in pixels (default: the model's).

    Returns:
        :class:`FlowInversion` of ``num_steps + 1`` latents ``[1, C, h, w]``.

    Raises:
        NotImplementedError: a UNet or PixArt pipeline (use ``ddim_invert``).
        ValueError: an image of another size or mode, a size the latent cannot be patched at,
            a non-positive ``nudge``.

    Example:
        >>> inv = flow_invert(pipe, "car.png", "a red car", num_steps=50, nudge=1.15)
        >>> edit(pipe, "a red car", ["a blue car"], inversion=inv).targets[0].save("blue.png")
    """
    from editing.sampling import encode_prompts

    if nudge <= 0:
        raise ValueError(f"nudge={nudge}: use a positive factor (1: none; Stable Flow: 1.15)")
    num_steps = num_steps or int(generation_defaults(pipe)["num_inference_steps"])
    size, latent_hw = flow_size(pipe, height, width)
    sampler = flow_sampler(pipe, num_steps, latent_hw, "flow_invert")
    check_known_words(pipe, [prompt])  # the toy's closed vocabulary
    latent = encode_flow_image(pipe, image, size) * nudge
    guided = guidance_scale > 1.0 and family_of(pipe).guides_with_rows(pipe)
    cond = encode_prompts(pipe, [prompt], guided, size)
    sigmas = sampler.scheduler.sigmas
    dtype = family_of(pipe).denoiser(pipe).dtype
    backwards = list(reversed(range(num_steps)))  # k = N-1 ... 0: sigma_{k+1} -> sigma_k
    path = [latent]
    for _, k in denoising_steps(pipe, backwards):
        t = sampler.timesteps[k]
        velocity = sampler.predict(t, latent.to(dtype), cond, guided, guidance_scale)
        latent = latent + float(sigmas[k] - sigmas[k + 1]) * velocity.float()
        path.append(latent)
    trajectory = [x.to(dtype) for x in reversed(path)]
    return FlowInversion(trajectory, prompt, num_steps, nudge=nudge, guidance_scale=guidance_scale)


def flow_size(
    pipe: Any, height: int | None, width: int | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (height, width) in pixels an image is read at (default: the model's) and its latent's."""
    defaults = generation_defaults(pipe)
    size = (height or int(defaults["height"]), width or int(defaults["width"]))
    scale = pipe.vae_scale_factor
    return size, (size[0] // scale, size[1] // scale)


def encode_flow_image(pipe: Any, image: Any, size: tuple[int, int]) -> Tensor:
    """An image of exactly ``size`` (height, width) checked for the flow model's patches and
    encoded as its pipeline does, float32 ``[1, C, h, w]``."""
    check_flow_size(pipe, size)
    return encode_image(pipe, load_image(image, (size[1], size[0]))).float()


def check_flow_size(pipe: Any, size: tuple[int, int]) -> tuple[int, int]:
    """The latent (height, width) of an image of ``size`` (height, width) pixels.

    Raises:
        ValueError: a side the VAE and the transformer's patches do not divide, with the crop
            that fixes it (FlowEdit's ``run_script.py`` crops to multiples of 16).
    """
    family = family_of(pipe)
    patch = family.patch(family.denoiser(pipe)) if isinstance(family, JointDiTFamily) else 1
    step = pipe.vae_scale_factor * patch
    if size[0] % step or size[1] % step:
        h, w = size
        raise ValueError(
            f"an image of {w}x{h} px: {family.title} needs sides divisible by {step} (VAE factor "
            f"{pipe.vae_scale_factor} × patch {step // pipe.vae_scale_factor}); crop it first: "
            f"image.crop((0, 0, {w - w % step}, {h - h % step}))"
        )
    return size[0] // pipe.vae_scale_factor, size[1] // pipe.vae_scale_factor

"""Real images: encode, DDIM-invert (empty prompt by default), reconstruct.

    inv = ddim_invert(pipe, "car.png")                     # the empty prompt, as the FPE code
    reconstruct(pipe, inv)                                 # denoised back, nothing forced
    edit(pipe, "a red car", ["a blue car"], inversion=inv) # FPE: the source row forced

The official FPE real-image path: the image's DDIM inversion with the empty prompt gives a latent
for every step; while sampling, the source row runs on the empty prompt and is put back onto
those latents at every step, and only the targets are really denoised (see
:func:`editing.editor.edit`: ``source_branch`` and ``source_branch_prompt``, and the registry's
per-method defaults). :func:`reconstruct` measures the inversion itself: the image denoised from
the inverted noise without being forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from probe.attention.batch import BatchLayout
from probe.attention.clock import denoising_steps
from probe.families import family_of
from probe.families.sampler import inverse_scheduler
from probe.models import generation_defaults
from probe.models.placement import execution_device


@dataclass
class Inversion:
    """A DDIM inversion.

    Attributes:
        trajectory: latents ``[1, 4, h, w]`` noisiest first, ``z_0`` (the encoded image) last;
            entry ``i`` is the latent at the timestep of sampling step ``i``.
        prompt: the prompt used to invert.
        num_steps: DDIM steps.
        null_embeddings: per step, the optimised unconditional embedding ``[1, tokens, dim]``
            (null-text inversion), or ``None``.
    """

    trajectory: list[Tensor]
    prompt: str
    num_steps: int
    null_embeddings: list[Tensor] | None = None

    @property
    def kind(self) -> str:
        return "ddim" if self.null_embeddings is None else "null-text"

    def check_pipeline(self, pipe: Any) -> None:
        """Raise where ``pipe``'s family cannot edit from this kind of inversion.

        Raises:
            NotImplementedError: the family's reason (SD3, Flux: ``"ddim inversion"``), with
                the way out.
        """
        family_of(pipe).refuse(f"{self.kind} inversion")

    def step_rule(self) -> Any:
        """How an edit from this inversion samples each step
        (:class:`editing.sampling.StepRule`), or ``None``: the family's plain step (DDIM,
        Euler). RF-Inversion and RF-Solver sample with their own."""
        return None

    def pixel_size(self, vae_scale_factor: int) -> tuple[int, int]:
        """(height, width) in pixels of the image inverted."""
        h, w = self.trajectory[0].shape[-2:]
        return int(h) * vae_scale_factor, int(w) * vae_scale_factor


def load_image(image: str | Path | Image.Image | np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Read an RGB image of exactly ``size`` (width, height).

    Raises:
        ValueError: a file that is not an image, another mode (e.g. RGBA, L) or another size;
            the message says how to fix it.
        FileNotFoundError: no such file.
    """
    if isinstance(image, (str, Path)):
        image = _read_image_file(Path(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image array of dtype {image.dtype} and shape {image.shape}: "
                "expected uint8 [H, W, 3]"
            )
        image = Image.fromarray(image)
    if image.mode != "RGB":
        raise ValueError(
            f"image mode is {image.mode}, not RGB: convert it first (image.convert('RGB'))"
        )
    if image.size != size:
        raise ValueError(
            f"image is {image.size[0]}x{image.size[1]} px but the model works at "
            f"{size[0]}x{size[1]}: resize it (image.resize({size})) or crop it"
        )
    return image


def _read_image_file(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(
            f"{path} is not an image PIL can read ({type(err).__name__}): pass a PNG or JPEG file"
        ) from None
    return image


@torch.no_grad()
def encode_image(pipe: Any, image: Image.Image) -> Tensor:
    """The VAE posterior mean, minus the VAE's shift factor where it has one (SD3, Flux), times
    its scaling factor, as the pipelines encode: ``[1, C, h, w]`` (C: 4 on SD, 16 on SD3, Flux)."""
    pixels = pipe.image_processor.preprocess(image).to(
        device=execution_device(pipe), dtype=pipe.vae.dtype
    )
    config = pipe.vae.config
    shift = config.get("shift_factor") or 0.0
    return (pipe.vae.encode(pixels).latent_dist.mean - shift) * config.scaling_factor


@torch.no_grad()
def ddim_invert(
    pipe: Any,
    image: str | Path | Image.Image | np.ndarray,
    prompt: str = "",
    num_steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> Inversion:
    """DDIM-invert an image with ``prompt`` (empty by default) and no guidance.

    The inversion runs on DDIM built from the model's scheduler config
    (:func:`probe.families.sampler.ddim_scheduler`), whatever scheduler the folder ships, so
    that its latents line up with the DDIM steps the edit samples with.

    Args:
        pipe: a pipeline of a family that DDIM-inverts (SD 1.x/2.x, SDXL, PixArt).
        image: a file, a PIL image or a uint8 array ``[H, W, 3]`` of exactly the size inverted.
        prompt: the prompt to invert with (the FPE and MasaCtrl code: ``""``).
        num_steps: DDIM steps (default: the model's).
        height, width: the image's size in pixels (default: the model's); the edit then runs
            at this size.

    Raises:
        NotImplementedError: a flow model (SD3, Flux: invert it with
            :func:`editing.flow_inversion.flow_invert`; the family's reason).

    Example:
        >>> inv = ddim_invert(pipe, "car.png")
        >>> edit(pipe, "a red car", ["a blue car"], inversion=inv)
    """
    from editing.sampling import encode_prompts

    family = family_of(pipe)
    family.refuse("ddim inversion")  # SD3, Flux: flow models, inverted by flow_invert
    defaults = generation_defaults(pipe)
    num_steps = num_steps or defaults["num_inference_steps"]
    size = (height or defaults["height"], width or defaults["width"])
    img = load_image(image, (size[1], size[0]))
    latent = encode_image(pipe, img)
    cond = encode_prompts(pipe, [prompt], False, size)  # SDXL: with its pooled text and time ids
    inverse = inverse_scheduler(family.ddim_scheduler(pipe))
    inverse.set_timesteps(num_steps, device=execution_device(pipe))
    path = [latent]
    for _, t in denoising_steps(pipe, inverse.timesteps):
        noise = family.predict(pipe, inverse.scale_model_input(latent, t), t, cond)
        latent = inverse.step(noise, t, latent).prev_sample
        path.append(latent)
    # the inverse loop gives [z_0, z_1, ..., z_N]; sampling step i starts from z_{N-i}
    return Inversion(trajectory=path[::-1], prompt=prompt, num_steps=num_steps)


@torch.no_grad()
def reconstruct(
    pipe: Any, inversion: Inversion, guidance_scale: float = 1.0, prompt: str | None = None
) -> Image.Image:
    """Denoise the inversion's noisiest latent, nothing forced: how well the image comes back
    measures the inversion (compare with the VAE round trip ``decode(encode(image))``, its
    ceiling). A null-text inversion's unconditional embeddings are used.

    Args:
        pipe: the pipeline.
        inversion: from :func:`ddim_invert`, :func:`editing.null_text.null_text_invert` or
            (SD3, Flux) :func:`editing.flow_inversion.flow_invert`.
        guidance_scale: classifier-free guidance (1: none; with the empty prompt guidance
            changes nothing, its conditional and unconditional rows being the same); on a
            guidance-distilled Flux (FLUX.1-dev) the transformer's guidance input.
        prompt: the prompt to denoise with (default: the one it was inverted with).

    Raises:
        ValueError: a null-text inversion at guidance 1 (its embeddings would go unused).

    Example:
        >>> psnr(decode(pipe, inv.trajectory[-1])[0], reconstruct(pipe, inv, 7.5, "a red car"))
    """
    from editing.sampling import decode, denoise, encode_prompts

    # FLUX.1 is guidance-distilled: its guidance is a transformer input, no unconditional rows
    guided = guidance_scale > 1.0 and family_of(pipe).guides_with_rows(pipe)
    if inversion.null_embeddings is not None and not guided:
        raise ValueError("null-text inversion only matters with guidance: set guidance_scale > 1")
    text = inversion.prompt if prompt is None else prompt
    embeddings = encode_prompts(pipe, [text], guided, inversion.pixel_size(pipe.vae_scale_factor))
    latents = inversion.trajectory[0].clone()
    final = denoise(
        pipe, embeddings, latents, BatchLayout.for_samples(1, guided), [], inversion.num_steps,
        guidance_scale, uncond_embeddings=inversion.null_embeddings,
        step_rule=inversion.step_rule(),
    )  # fmt: skip
    return decode(pipe, final)[0]

"""Real images: encode, DDIM-invert (empty prompt by default), reconstruct.

The official FPE real-image path: the image's DDIM inversion gives a latent for every step; while
sampling, the source row follows those latents and only the targets are denoised (see
:func:`editing.edit.edit` with ``inversion=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMInverseScheduler
from PIL import Image
from torch import Tensor

from probe.attention.batch import BatchLayout
from probe.models import generation_defaults


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


def load_image(image: str | Path | Image.Image | np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Read an RGB image of exactly ``size`` (width, height).

    Raises:
        ValueError: another mode (e.g. RGBA, L) or another size; the message says how to fix it.
        FileNotFoundError: no such file.
    """
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
        image = Image.open(image)
        image.load()
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


@torch.no_grad()
def encode_image(pipe: Any, image: Image.Image) -> Tensor:
    """The VAE posterior mean times the scaling factor: ``[1, 4, h, w]``."""
    pixels = pipe.image_processor.preprocess(image).to(device=pipe.device, dtype=pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def ddim_invert(
    pipe: Any,
    image: str | Path | Image.Image | np.ndarray,
    prompt: str = "",
    num_steps: int | None = None,
) -> Inversion:
    """DDIM-invert an image with ``prompt`` (empty by default) and no guidance.

    Example:
        >>> inv = ddim_invert(pipe, "car.png")
        >>> edit(pipe, "a red car", ["a blue car"], inversion=inv)
    """
    defaults = generation_defaults(pipe)
    num_steps = num_steps or defaults["num_inference_steps"]
    img = load_image(image, (defaults["width"], defaults["height"]))
    latent = encode_image(pipe, img)
    cond, _ = pipe.encode_prompt([prompt], pipe.device, 1, False)
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(num_steps, device=pipe.device)
    path = [latent]
    for t in inverse.timesteps:
        noise = pipe.unet(
            inverse.scale_model_input(latent, t), t, encoder_hidden_states=cond
        ).sample
        latent = inverse.step(noise, t, latent).prev_sample
        path.append(latent)
    # the inverse loop gives [z_0, z_1, ..., z_N]; sampling step i starts from z_{N-i}
    return Inversion(trajectory=path[::-1], prompt=prompt, num_steps=num_steps)


@torch.no_grad()
def reconstruct(pipe: Any, inversion: Inversion, guidance_scale: float = 1.0) -> Image.Image:
    """Denoise the inversion's noisiest latent with its prompt: the image should come back."""
    from editing.sampling import decode, denoise, encode_prompts

    guided = guidance_scale > 1.0
    embeddings = encode_prompts(pipe, [inversion.prompt], guided)
    latents = inversion.trajectory[0].clone()
    final = denoise(
        pipe, embeddings, latents, BatchLayout.for_samples(1, guided), [], inversion.num_steps,
        guidance_scale,
    )  # fmt: skip
    return decode(pipe, final)[0]


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)

"""The edit loop: one source and one or more targets denoised side by side, sharing the initial
noise and one source branch, with editing controllers on the hooks.

    result = edit(pipe, "a red car", ["a blue car", "a green car"], method="fpe")
    result.source, result.targets      # PIL images
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from editing.inversion import Inversion
from editing.methods.p2p import prompt_to_prompt
from editing.methods.replace import CrossAttentionReplace, MutualSelfAttention, SelfAttentionReplace
from editing.sampling import decode, denoise, encode_prompts
from probe.attention.batch import BatchLayout
from probe.attention.controller import Controller
from probe.attention.layers import LayerSpec
from probe.models import generation_defaults

METHODS = ("fpe", "p2p", "masactrl", "cross", "none")
METHOD_OPTIONS = {
    "p2p": ("mode", "self_fraction", "weights"),
    "masactrl": ("start_step", "start_layer"),
}


@dataclass
class EditResult:
    """Images of an edit and the settings that made them.

    Attributes:
        source: the source image (for a real image: its reconstruction).
        targets: one image per target prompt.
        settings: method, layers, steps, seed, guidance, prompts, ... (JSON-serialisable).
        latents: final latents ``[1 + targets, 4, h, w]``.
    """

    source: Image.Image
    targets: list[Image.Image]
    settings: dict[str, Any] = field(default_factory=dict)
    latents: Tensor | None = None


def make_controller(
    method: str,
    layers: LayerSpec = None,
    step_fraction: float = 0.8,
    **options: Any,
) -> list[Controller]:
    """The controllers of an editing method.

    Args:
        method: ``fpe`` (self-attention replacement), ``cross`` (cross-attention replacement),
            ``p2p`` (Prompt-to-Prompt word swap: cross-attention for ``step_fraction`` of the
            steps plus self-attention at the coarsest layers), ``masactrl`` or ``none``.
        layers: layer spec (default per method: ``fpe`` → the official rule, ``cross`` → all).
        step_fraction: the first fraction of steps to edit (FPE's default 0.8).
        options: ``start_step`` / ``start_layer`` for MasaCtrl; ``self_fraction`` for p2p.

    Raises:
        ValueError: an unknown method, or an option the method does not take.
    """
    for key in options:
        if key not in METHOD_OPTIONS.get(method, ()):
            takes = ", ".join(METHOD_OPTIONS.get(method, ())) or "none"
            raise ValueError(f"option {key!r} does not apply to {method} (it takes: {takes})")
    if method == "fpe":
        return [SelfAttentionReplace(layers if layers is not None else "fpe", step_fraction)]
    if method == "cross":
        return [CrossAttentionReplace(layers if layers is not None else "all", step_fraction)]
    if method == "p2p":
        return list(
            prompt_to_prompt(
                mode=options.get("mode", "replace"),
                cross_fraction=step_fraction,
                self_fraction=float(options.get("self_fraction", 0.4)),
                cross_layers=layers if layers is not None else "all",
                weights=options.get("weights"),
            )
        )
    if method == "masactrl":
        return [MutualSelfAttention(options.get("start_step", 4), options.get("start_layer", 10))]
    if method == "none":
        return []
    raise ValueError(f"unknown edit method {method!r}: use one of {', '.join(METHODS)}")


def edit(
    pipe: Any,
    source: str,
    targets: Sequence[str],
    method: str = "fpe",
    layers: LayerSpec = None,
    step_fraction: float = 0.8,
    seed: int = 0,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    controllers: Sequence[Controller] | None = None,
    inversion: Inversion | None = None,
    **options: Any,
) -> EditResult:
    """Edit a generated (or, with ``inversion``, a real) image from ``source`` to each of
    ``targets``, sharing the initial noise and one source branch.

    Args:
        pipe: a Stable Diffusion pipeline.
        source: the source prompt.
        targets: one or more target prompts.
        method: see :func:`make_controller` (ignored when ``controllers`` is given).
        layers: layer spec or a saved selection file for the method.
        step_fraction: first fraction of steps to edit.
        seed: seed of the shared initial noise.
        num_steps, guidance_scale: default: the model's (see ``generation_defaults``).
        controllers: explicit controllers instead of ``method``.
        inversion: a real image's inversion (:func:`editing.inversion.ddim_invert`): the
            source row follows its latents (the official FPE path); with null-text
            embeddings (:func:`editing.null_text.null_text_invert`) every row starts from its
            noisiest latent and the unconditional rows use the optimised embeddings.

    Returns:
        :class:`EditResult`.

    Raises:
        ValueError: no target, an unknown method, a prompt over the text encoder's length, or a
            layer spec that does not fit the UNet.

    Example:
        >>> r = edit(pipe, "a red car", ["a blue car"], method="fpe", layers="fpe")
        >>> r.targets[0].save("blue.png")
    """
    if isinstance(targets, str) or not targets:
        raise ValueError("targets must be a non-empty list of prompts, e.g. ['a blue car']")
    defaults = generation_defaults(pipe)
    num_steps = num_steps or defaults["num_inference_steps"]
    guidance_scale = guidance_scale if guidance_scale is not None else defaults["guidance_scale"]
    chosen = (
        list(controllers)
        if controllers is not None
        else make_controller(method, layers, step_fraction, **options)
    )
    guided = guidance_scale > 1.0
    prompts = [source, *targets]
    for c in chosen:
        if hasattr(c, "prepare"):
            c.prepare(pipe.tokenizer, source, targets)
    embeddings = encode_prompts(pipe, prompts, guided)
    layout = BatchLayout.for_edit(len(targets), guided)
    if inversion is None:
        latents = _shared_noise(pipe, defaults, seed, len(prompts))
        final = denoise(pipe, embeddings, latents, layout, chosen, num_steps, guidance_scale)
    else:
        final = _edit_inverted(pipe, inversion, embeddings, layout, chosen, guidance_scale)
        num_steps = inversion.num_steps
    images = decode(pipe, final)
    settings = {
        "source": source,
        "targets": list(targets),
        "method": method if controllers is None else "custom",
        "controllers": [repr(c) for c in chosen],
        "step_fraction": step_fraction,
        "seed": seed,
        "num_steps": num_steps,
        "guidance_scale": guidance_scale,
        "real_image": inversion is not None,
        "inversion": None if inversion is None else inversion.kind,
    }
    return EditResult(images[0], images[1:], settings, final)


def _shared_noise(pipe: Any, defaults: dict[str, Any], seed: int, n: int) -> Tensor:
    h = defaults["height"] // pipe.vae_scale_factor
    w = defaults["width"] // pipe.vae_scale_factor
    channels = pipe.unet.config.in_channels
    noise = torch.randn(1, channels, h, w, generator=torch.Generator().manual_seed(seed))
    noise = noise.to(device=pipe.device, dtype=pipe.unet.dtype) * pipe.scheduler.init_noise_sigma
    return noise.repeat(n, 1, 1, 1)


def _edit_inverted(
    pipe: Any,
    inversion: Inversion,
    embeddings: Tensor,
    layout: BatchLayout,
    controllers: Sequence[Controller],
    guidance_scale: float,
) -> Tensor:
    start = inversion.trajectory[0].repeat(layout.num_samples, 1, 1, 1).clone()
    if inversion.null_embeddings is not None:
        if not layout.has_guidance:
            raise ValueError(
                "null-text inversion only matters with guidance: set guidance_scale > 1"
            )
        return denoise(
            pipe, embeddings, start, layout, controllers, inversion.num_steps, guidance_scale,
            uncond_embeddings=inversion.null_embeddings,
        )  # fmt: skip
    return denoise(
        pipe, embeddings, start, layout, controllers, inversion.num_steps, guidance_scale,
        source_trajectory=inversion.trajectory,
    )  # fmt: skip

"""The edit loop: one source and one or more targets denoised side by side, sharing the initial
noise and one source branch, with editing controllers on the hooks.

    result = edit(pipe, "a red car", ["a blue car", "a green car"], method="fpe")
    result.source, result.targets      # PIL images
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from editing.inversion import Inversion
from editing.methods.joint_fpe import for_joint_attention
from editing.methods.registry import SOURCE_BRANCHES, SOURCE_PROMPTS, get_method
from editing.sampling import decode, denoise, encode_prompts
from probe.attention.batch import BatchLayout
from probe.attention.controller import Controller
from probe.attention.layer_info import LayerSpec
from probe.families import Conditioning, MicroConditioning, family_of
from probe.models import defaults_origin, generation_defaults
from probe.models.vocabulary import check_known_words


@dataclass
class EditResult:
    """Images of an edit and the settings that made them.

    Attributes:
        source: the source image (for a real image: its reconstruction).
        targets: one image per target prompt.
        settings: method, layers, step fraction, the method's options, seed, guidance,
            prompts, ... (JSON-serialisable).
        latents: final latents ``[1 + targets, C, h, w]`` (C: the family's latent channels,
            4 on SD, 16 on SD3 and Flux).
    """

    source: Image.Image
    targets: list[Image.Image]
    settings: dict[str, Any] = field(default_factory=dict)
    latents: Tensor | None = None


def make_controller(
    method: str,
    layers: LayerSpec = None,
    step_fraction: float | None = None,
    **options: Any,
) -> list[Controller]:
    """The controllers of an editing method, from the registry
    (:mod:`editing.methods.registry`).

    Args:
        method: ``fpe`` (self-attention replacement), ``cross`` (cross-attention replacement),
            ``p2p`` (Prompt-to-Prompt), ``masactrl`` or ``none``; see ``method_names()``.
        layers: layer spec (``None``: the method's default, e.g. ``fpe`` → the official rule).
        step_fraction: the first fraction of steps to edit (``None``: the method's default,
            0.8; an int 1 means every step).
        options: the method's own options, e.g. ``mode``, ``self_fraction``, ``weights`` for
            ``p2p``; ``start_step``, ``start_layer`` for ``masactrl``.

    Raises:
        ValueError: an unknown method, or a layer spec, step fraction or option the method does
            not take (masactrl and none take no layers and no step fraction).

    Example:
        >>> make_controller("p2p", mode="reweight", weights={"car": 2.0})
    """
    return get_method(method).controllers(layers, step_fraction, **options)


def edit(
    pipe: Any,
    source: str,
    targets: Sequence[str],
    method: str | None = None,
    layers: LayerSpec = None,
    step_fraction: float | None = None,
    seed: int = 0,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    controllers: Sequence[Controller] | None = None,
    inversion: Inversion | None = None,
    height: int | None = None,
    width: int | None = None,
    source_branch: str | None = None,
    source_branch_prompt: str | None = None,
    micro_conditioning: MicroConditioning | None = None,
    source_guidance_scale: float | None = None,
    **options: Any,
) -> EditResult:
    """Edit a generated (or, with ``inversion``, a real) image from ``source`` to each of
    ``targets``, sharing the initial noise and one source branch.

    The edit samples with its family's sampler (:mod:`probe.families.sampler`): DDIM at eta 0,
    built from the model's own scheduler config whatever scheduler the folder ships (SD 1.5:
    PNDM, SD 2.x: Euler, PixArt-Σ: DPM-Solver), on UNets and PixArt; the folder's own
    flow-match Euler on SD3 and Flux. ``pipe.scheduler`` is left as it is.
    ``settings["scheduler"]`` says which scheduler ran, with its key config and eta.

    Args:
        pipe: a Stable Diffusion pipeline.
        source: the source prompt.
        targets: one or more target prompts.
        method: a registered method (:mod:`editing.methods.registry`; default ``fpe``).
        layers: layer spec or a saved selection file for the method (default: the method's).
        step_fraction: first fraction of steps to edit (default: the method's, 0.8; an int 1
            means every step).
        seed: seed of the shared initial noise.
        num_steps, guidance_scale: default: the model's (see ``generation_defaults``).
        controllers: explicit controllers instead of ``method``, ``layers``,
            ``step_fraction`` and the method's options (giving both is refused).
        inversion: a real image's inversion (:func:`editing.inversion.ddim_invert`, or
            :func:`editing.null_text.null_text_invert`, whose optimised embeddings the
            unconditional rows then use; on SD3 and Flux
            :func:`editing.flow_inversion.flow_invert`): every row starts from its noisiest
            latent.
        source_branch: for a real image, how the source row is sampled (see
            :data:`editing.methods.registry.SOURCE_BRANCHES`): ``"forced"`` onto the inverted
            latent after every step, ``"free"`` (denoised like the targets) or ``"direct"``
            (forced, and the same correction added to the targets). Default: the method's
            authors' choice after a DDIM inversion (``source_on_real_image`` in the registry:
            forced for FPE, free for MasaCtrl and Prompt-to-Prompt; forced for custom
            controllers), ``"free"`` after null-text inversion.
        source_branch_prompt: for a real image, the prompt the source row runs on:
            ``"inversion"`` (the prompt the image was inverted with, ``""`` by default, as the
            FPE and MasaCtrl code) or ``"source"`` (``source``, as Prompt-to-Prompt). Default:
            the method's (``source_prompt_on_real_image``). The controllers prepare for it.
        source_guidance_scale: the source row's own guidance, the targets' staying
            ``guidance_scale`` (on FLUX.1-dev its guidance input, elsewhere classifier-free
            guidance per row). Default: the method's authors' on a real image
            (``source_guidance_on_real_image``: Stable Flow's reference row at 1), else
            ``guidance_scale`` for every row.
        options: the method's own options (``mode``, ``weights``, ``start_step``, ...); one it
            does not take is refused.
        height, width: image size in pixels (default: the model's; a real image keeps its
            inversion's size). Layer specs resolve at this size: ``res<=16`` means 16 query
            positions per side of the latent generated.
        micro_conditioning: SDXL's original size, crop and target size, for every row
            (:class:`probe.families.MicroConditioning`; default: the size generated, crop
            (0, 0), as diffusers' pipeline); SD 1.x/2.x ignore it.

    Returns:
        :class:`EditResult`.

    Raises:
        ValueError: no target, an unknown method, an option (or layers, or a step fraction)
            the method does not take, a prompt over the text encoder's length, or a layer spec
            that does not fit the UNet.
        UnknownWordError: a word of the source or a target outside the model's closed
            vocabulary (the toy's; see :mod:`probe.models.vocabulary`), before any step.

    Example:
        >>> r = edit(pipe, "a red car", ["a blue car"], method="fpe", layers="fpe")
        >>> r.targets[0].save("blue.png")
    """
    if isinstance(targets, str) or not targets:
        raise ValueError("targets must be a non-empty list of prompts, e.g. ['a blue car']")
    check_known_words(pipe, [source, *targets])  # the toy refuses a word it never learned
    defaults = generation_defaults(pipe)
    defaults.update({k: v for k, v in (("height", height), ("width", width)) if v is not None})
    num_steps = num_steps or defaults["num_inference_steps"]
    guidance_scale = guidance_scale if guidance_scale is not None else defaults["guidance_scale"]
    chosen, method_settings = _controllers(method, layers, step_fraction, controllers, options)
    family = family_of(pipe)
    if family.joint_attention:  # one softmax over [image; text]: the joint editors
        chosen = for_joint_attention(chosen, method_settings["method"])
    if inversion is not None:
        inversion.check_pipeline(pipe)  # DDIM on a flow, a flow inversion on a UNet: refused
    _hand_inversion(chosen, inversion)
    source_scale = _source_guidance(method_settings["method"], inversion, source_guidance_scale)
    scales = guidance_scale if source_scale is None else _row_guidance(
        source_scale, guidance_scale, len(targets))  # fmt: skip
    # FLUX.1 is guidance-distilled: its guidance is a transformer input, no unconditional half
    top = max(guidance_scale, source_scale or guidance_scale)
    guided = top > 1.0 and family.guides_with_rows(pipe)
    branch, branch_prompt = _source_branch(
        method_settings["method"], inversion, source_branch, source_branch_prompt, source
    )
    prompts = [branch_prompt, *targets]
    for c in chosen:
        c.prepare(getattr(pipe, family.words[0]), branch_prompt, targets)
    size = _edit_size(pipe, defaults, inversion)
    embeddings = encode_prompts(pipe, prompts, guided, size, micro_conditioning)
    layout = BatchLayout.for_edit(len(targets), guided)
    latent_hw = (size[0] // pipe.vae_scale_factor, size[1] // pipe.vae_scale_factor)
    sampler = family.sampler(pipe, num_steps, latent_hw)
    if inversion is None:
        latents = sampler.noise(seed, len(prompts))
        final = denoise(pipe, embeddings, latents, layout, chosen, num_steps, scales)
    else:
        final = _edit_inverted(pipe, inversion, embeddings, layout, chosen, scales, branch)
        num_steps = inversion.num_steps
    images = decode(pipe, final)
    settings = {
        "source": source,
        "targets": list(targets),
        **method_settings,
        "controllers": [repr(c) for c in chosen],
        "seed": seed,
        "num_steps": num_steps,
        "guidance_scale": guidance_scale,
        "source_guidance_scale": guidance_scale if source_scale is None else source_scale,
        **_real_image_settings(inversion, branch, branch_prompt),
        "micro_conditioning": None if micro_conditioning is None else asdict(micro_conditioning),
        "height": int(final.shape[-2]) * pipe.vae_scale_factor,
        "width": int(final.shape[-1]) * pipe.vae_scale_factor,
        "scheduler": sampler.settings(),
        "defaults": defaults_origin(pipe),
    }
    return EditResult(images[0], images[1:], settings, final)


def _source_guidance(method: str, inversion: Inversion | None, given: float | None) -> float | None:
    """The source row's own guidance: ``given``, else the method's authors' on a real image,
    else ``None`` (every row at the edit's guidance)."""
    if given is not None or inversion is None or method == "custom":
        return given
    return get_method(method).source_guidance_on_real_image


def _row_guidance(source: float, targets: float, n: int) -> Tensor:
    """One guidance per sample row: the source's, then each target's."""
    return torch.tensor([float(source)] + [float(targets)] * n)


def _hand_inversion(controllers: Sequence[Controller], inversion: Inversion | None) -> None:
    """Give the inversion (``None`` for a generated image) to every controller that reads one,
    before any step: a ``read_inversion(inversion)`` method (RF-Solver's value injection takes
    the values stored while inverting, :mod:`editing.methods.value_injection`, and refuses an
    inversion without them)."""
    for c in controllers:
        read = getattr(c, "read_inversion", None)
        if callable(read):
            read(inversion)


def _real_image_settings(
    inversion: Inversion | None, branch: str | None, branch_prompt: str
) -> dict[str, Any]:
    """The settings of an edit that say how its source branch was made."""
    return {
        "real_image": inversion is not None,
        "inversion": None if inversion is None else inversion.kind,
        "inversion_prompt": None if inversion is None else inversion.prompt,
        "source_branch": branch,
        "source_branch_prompt": branch_prompt,
    }


def _controllers(
    method: str | None,
    layers: LayerSpec,
    step_fraction: float | None,
    controllers: Sequence[Controller] | None,
    options: dict[str, Any],
) -> tuple[list[Controller], dict[str, Any]]:
    """The run's controllers and the settings that describe them."""
    if controllers is not None:
        given = [k for k, v in (("method", method), ("layers", layers)) if v is not None]
        given += ["step_fraction"] * (step_fraction is not None) + list(options)
        if given:
            raise ValueError(
                f"controllers= replaces {', '.join(given)}: give those to the controllers, "
                "or pass method= without controllers="
            )
        return list(controllers), {"method": "custom", "step_fraction": None}
    spec = get_method(method or "fpe")
    kwargs = spec.resolve(layers, step_fraction, **options)
    chosen = spec.build(**kwargs)
    fraction = kwargs.pop("step_fraction", None)
    spec_layers = kwargs.pop("layers", None)
    shown = str(spec_layers) if isinstance(spec_layers, Path) else spec_layers
    settings = {"method": spec.name, "layers": shown, "step_fraction": fraction}
    return chosen, {**settings, "options": kwargs}


def _edit_size(pipe: Any, defaults: dict[str, Any], inversion: Inversion | None) -> tuple[int, int]:
    """(height, width) in pixels of the edit: the inversion's latent size, else the defaults'."""
    if inversion is None:
        return int(defaults["height"]), int(defaults["width"])
    return inversion.pixel_size(pipe.vae_scale_factor)


def _source_branch(
    method: str,
    inversion: Inversion | None,
    branch: str | None,
    prompt: str | None,
    source: str,
) -> tuple[str | None, str]:
    """How the source row is sampled and the prompt it runs on: ``(None, source)`` for a
    generated image; for a real image the arguments, else the method's authors' choices."""
    if inversion is None:
        named = (("source_branch", branch), ("source_branch_prompt", prompt))
        given = [name for name, value in named if value is not None]
        if given:
            raise ValueError(
                f"{' and '.join(given)} only apply to a real image: pass "
                "inversion=ddim_invert(pipe, image), or leave them out"
            )
        return None, source
    spec = None if method == "custom" else get_method(method)
    if branch is None:
        after_ddim = spec.source_on_real_image if spec else "forced"
        branch = "free" if inversion.null_embeddings is not None else after_ddim
    if prompt is None:
        prompt = spec.source_prompt_on_real_image if spec else "inversion"
    if branch not in SOURCE_BRANCHES:
        raise ValueError(f"source_branch={branch!r}: use one of {', '.join(SOURCE_BRANCHES)}")
    if prompt not in SOURCE_PROMPTS:
        raise ValueError(
            f"source_branch_prompt={prompt!r}: use 'inversion' (the prompt the image was "
            "inverted with) or 'source' (the source prompt)"
        )
    return branch, inversion.prompt if prompt == "inversion" else source


def _edit_inverted(
    pipe: Any,
    inversion: Inversion,
    embeddings: Conditioning,
    layout: BatchLayout,
    controllers: Sequence[Controller],
    guidance_scale: float | Tensor,
    branch: str | None,
) -> Tensor:
    start = inversion.trajectory[0].repeat(layout.num_samples, 1, 1, 1).clone()
    if inversion.null_embeddings is not None and not layout.has_guidance:
        raise ValueError("null-text inversion only matters with guidance: set guidance_scale > 1")
    free = branch == "free"  # else forced or direct: the source row follows the trajectory
    return denoise(
        pipe, embeddings, start, layout, controllers, inversion.num_steps, guidance_scale,
        source_trajectory=None if free else inversion.trajectory,
        uncond_embeddings=inversion.null_embeddings,
        source_branch="forced" if free else str(branch), step_rule=inversion.step_rule(),
    )  # fmt: skip

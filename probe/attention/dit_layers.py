"""The attention layers of a diffusion transformer (SD3's ``SD3Transformer2DModel``).

    denoiser_of(pipe)                  # pipe.unet, or pipe.transformer for SD3
    dit_layers(pipe.transformer)       # one LayerInfo per joint block, in execution order
    joint_modules(pipe.transformer)    # {"transformer_blocks.0.attn.processor": 0, ...}

A *layer* here is one joint transformer block (``transformer_blocks.i``): its one ``Attention``
module (``attn``) attends over ``[image tokens; text tokens]`` in one softmax, and that joint
map splits into four kinds (:data:`JOINT_KINDS`): image→image (``self``), image→text
(``cross``), text→image (``text_image``) and text→text (``text_text``). Blocks run in index
order, so the flat layer index is the block index. The query map of every block is the latent
divided by the patch size (``level`` = log2(patch size): the resolution rules of UNet tables
mean the same thing here, query positions per side). SD3's last block is ``context_pre_only``:
its text tokens still take part in the softmax, but their output is dropped.

SD3.5's dual-attention blocks (``attn2``, image-only self-attention in the first blocks) are not
hooked: they keep their own processor (see ``docs/joint_attention.md``).
"""

from __future__ import annotations

import math
from typing import Any

from probe.attention.layers import Kind, LayerInfo, Place
from probe.attention.presets import FLUX, SD3

JOINT_KINDS: tuple[Kind, ...] = ("self", "cross", "text_image", "text_text")
"""The four parts of a joint map: image→image, image→text, text→image, text→text."""


def is_dit(model: Any) -> bool:
    """Whether ``model`` (a denoiser, not a pipeline) is a joint-attention transformer."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and "joint_attention_dim" in config
        and hasattr(model, "transformer_blocks")
    )


def denoiser_of(model: Any) -> Any:
    """The network a pipeline denoises with: ``pipe.unet``, else ``pipe.transformer`` (SD3);
    a bare UNet or transformer is returned as it is."""
    unet = getattr(model, "unet", None)
    if unet is not None:
        return unet
    transformer = getattr(model, "transformer", None)
    return transformer if transformer is not None else model


def is_flux(model: Any) -> bool:
    """Whether ``model`` is a Flux transformer (double- and single-stream blocks)."""
    return is_dit(model) and "num_single_layers" in model.config


FLUX_NATIVE_LATENT = 128
"""The latent side Flux is sampled at by default (diffusers' ``FluxPipeline.default_sample_size``:
1024 px); a Flux transformer's config has no ``sample_size`` (``tiny-flux`` registers one)."""


def native_latent(model: Any) -> tuple[int, int]:
    """The VAE latent (height, width) a denoiser is made for: its config's ``sample_size``
    (UNets, SD3); a Flux transformer without one: :data:`FLUX_NATIVE_LATENT`."""
    size = model.config.get("sample_size") or FLUX_NATIVE_LATENT
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _blocks(transformer: Any) -> list[tuple[str, Place, Any]]:
    """(name, place, attention module) of every block, in execution order: SD3's and Flux's
    double-stream ``transformer_blocks`` ("joint"), then Flux's ``single_transformer_blocks``
    ("single")."""
    out: list[tuple[str, Place, Any]] = [
        (f"transformer_blocks.{i}", "joint", b.attn)
        for i, b in enumerate(transformer.transformer_blocks)
    ]
    singles = getattr(transformer, "single_transformer_blocks", None) or []
    out += [(f"single_transformer_blocks.{i}", "single", b.attn) for i, b in enumerate(singles)]
    return out


def dit_layers(
    transformer: Any, latent_height: int | None = None, latent_width: int | None = None
) -> list[LayerInfo]:
    """Every joint block of ``transformer``, in execution order.

    Args:
        transformer: an ``SD3Transformer2DModel`` or a ``FluxTransformer2DModel`` (also built
            on the meta device).
        latent_height, latent_width: VAE latent size in positions (pixels / 8); default the
            model's (:func:`native_latent`; SD3 medium and Flux: 128, i.e. 1024 px).

    Returns:
        One :class:`LayerInfo` per block: place ``"joint"`` (SD3's blocks, Flux's double-stream
        ones) or ``"single"`` (Flux's single-stream ones), resolution = the latent divided by
        the patch (SD3: ``patch_size`` 2; Flux: its 2×2 packing), ``cross_dim`` = the width of
        the text tokens in the block (0 in single-stream blocks, whose text tokens share the
        image's projections).

    Example:
        >>> [(l.name, l.resolution) for l in dit_layers(sd3.transformer)][:1]   # SD3 medium
        [('transformer_blocks.0', (64, 64))]
    """
    config = transformer.config
    flux = is_flux(transformer)
    native = native_latent(transformer)
    height = latent_height or native[0]
    width = latent_width or height
    patch = 2 if flux else int(config.patch_size)  # Flux packs 2x2 latents into one token
    level = _patch_level(patch)
    layers = []
    for index, (name, place, attn) in enumerate(_blocks(transformer)):
        added = getattr(attn, "add_k_proj", None)
        layers.append(
            LayerInfo(
                index=index, name=name, place=place, level=level,
                heads=attn.heads, channels=attn.to_q.in_features,
                cross_dim=added.in_features if added is not None else 0,
                resolution=(height // patch, width // patch), native_latent=native,
                family=FLUX if flux else SD3,
            )
        )  # fmt: skip
    return layers


def joint_modules(transformer: Any) -> dict[str, int]:
    """Map each joint attention processor name (``transformer_blocks.i.attn.processor``, Flux
    also ``single_transformer_blocks.j.attn.processor``) to its layer index."""
    return {f"{name}.attn.processor": i for i, (name, _, _) in enumerate(_blocks(transformer))}


def _patch_level(patch: int) -> int:
    level = int(math.log2(patch))
    if 2**level != patch:
        raise ValueError(
            f"patch_size {patch} is not a power of 2: attnprobe's layer table halves the latent "
            "per level; use a transformer with patch size 1, 2 or 4"
        )
    return level

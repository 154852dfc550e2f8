"""What SD3 and Flux share: a diffusion transformer of joint-attention blocks, flow matching.

    family.layers(pipe.transformer)               # one LayerInfo per block, execution order
    family.attention_modules(pipe.transformer)    # {"transformer_blocks.0.attn.processor": ...}

A *layer* here is one joint transformer block (``transformer_blocks.i``): its one ``Attention``
module (``attn``) attends over ``[image tokens; text tokens]`` in one softmax, and that joint
map splits into four kinds (:data:`~probe.attention.joint.JOINT_KINDS`): image→image
(``self``), image→text (``cross``), text→image (``text_image``) and text→text (``text_text``).
Flux adds single-stream blocks (``single_transformer_blocks.j``) after them. Blocks run in
index order, so the flat layer index is the block index. The query map of every block is the
latent divided by the patch size (``level`` = log2(patch size): the resolution rules of UNet
tables mean the same thing here, query positions per side). SD3's last block is
``context_pre_only``: its text tokens still take part in the softmax, but their output is
dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from probe.attention.joint import JOINT_KINDS
from probe.attention.layer_info import Kind, LayerInfo, Place
from probe.families.base import DenoiserCall, ModelFamily

JOINT_UNSUPPORTED = {
    "ddim inversion": (
        "DDIM inversion follows a noise-predicting DDIM sampler and this is a flow model: invert "
        "the image with its own ODE (editing.flow_inversion.flow_invert(pipe, image), then "
        "edit(..., inversion=inv)), or edit it without inversion "
        "(editing.methods.flowedit.flowedit(pipe, image, source, target))"
    ),
    "null-text inversion": (
        "null-text inversion optimises the unconditional embedding along DDIM steps, a UNet "
        "method not carried to flow models: invert with editing.flow_inversion.flow_invert "
        "(inverse Euler), or edit without inversion with editing.methods.flowedit.flowedit"
    ),
}
"""Why the joint families refuse what they refuse (:meth:`ModelFamily.refuse`)."""

MASACTRL_START = (10, 16)
"""MasaCtrl's start layer as a fraction of the layers: 10 of SD 1.5's 16 (TencentARC/MasaCtrl),
carried to DiTs by :meth:`JointDiTFamily.preset_rule`."""


class JointDiTFamily(ModelFamily):
    """A family whose denoiser is a transformer of joint-attention blocks (SD3, Flux)."""

    denoiser_attr: ClassVar[str] = "transformer"
    kinds: ClassVar[tuple[Kind, ...]] = JOINT_KINDS
    joint_attention: ClassVar[bool] = True
    presets: ClassVar[dict[str, str | None]] = {"all": "all", "paper": None}
    unsupported: ClassVar[dict[str, str]] = JOINT_UNSUPPORTED
    processor_class: ClassVar[Any]

    def patch(self, denoiser: Any) -> int:
        """Latent positions per token side."""
        return int(denoiser.config.patch_size)

    def blocks(self, denoiser: Any) -> list[tuple[str, Place, Any]]:
        """(name, place, attention module) of every block, in execution order."""
        return [
            (f"transformer_blocks.{i}", "joint", b.attn)
            for i, b in enumerate(denoiser.transformer_blocks)
        ]

    def layers(
        self, denoiser: Any, latent_height: int | None = None, latent_width: int | None = None
    ) -> list[LayerInfo]:
        """Every block: place ``"joint"`` (or ``"single"``), resolution = the latent divided by
        the patch, ``cross_dim`` = the width of the text tokens in the block (0 where the text
        tokens share the image's projections)."""
        native = self.native_latent(denoiser)
        height = latent_height or native[0]
        width = latent_width or height
        patch = self.patch(denoiser)
        level = patch_level(patch)
        layers = []
        for index, (name, place, attn) in enumerate(self.blocks(denoiser)):
            added = getattr(attn, "add_k_proj", None)
            layers.append(
                LayerInfo(
                    index=index, name=name, place=place, level=level,
                    heads=attn.heads, channels=attn.to_q.in_features,
                    cross_dim=added.in_features if added is not None else 0,
                    resolution=(height // patch, width // patch), native_latent=native,
                    family=self.name,
                )
            )  # fmt: skip
        return layers

    def attention_modules(self, denoiser: Any) -> dict[str, tuple[int, tuple[Kind, ...]]]:
        names = [name for name, _, _ in self.blocks(denoiser)]
        return {f"{name}.attn.processor": (i, JOINT_KINDS) for i, name in enumerate(names)}

    def hooked_processors(self, hooks: Any, denoiser: Any, saved: dict[str, Any]) -> dict:
        return {
            name: self.processor_class(hooks, hooks.layers[index], "self", saved[name])
            for name, (index, _) in self.attention_modules(denoiser).items()
        }

    def call_inputs(self, args: tuple, kwargs: dict) -> DenoiserCall:
        sample = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        t = args[3] if len(args) > 3 else kwargs["timestep"]
        return DenoiserCall(int(sample.shape[0]), t, context, tuple(sample.shape[-2:]))

    def no_preset(self, preset: str, n_layers: int) -> str:
        return (
            f"layer preset {preset!r} was published for UNets and has no meaning on this "
            f"{self.name.upper()} transformer of {n_layers} joint blocks: use 'all', a range "
            "such as '0-11', 'fpe' (attnprobe's DiT reading: every block) or a selection from "
            "`attnprobe select`"
        )

    def preset_rule(self, layers: Sequence[LayerInfo], preset: str) -> str:
        """``masactrl`` on a DiT: attnprobe's carry-over of MasaCtrl's start layer (no published
        DiT value), SD's fraction of the way through the network: layer ``10 · n // 16`` (10 of
        SD's 16) and every later one; FLUX.1-dev: 35-56, SD3 medium: 15-23, toy-flux: 7-11."""
        if preset == "masactrl":
            n = len(layers)
            return f"{MASACTRL_START[0] * n // MASACTRL_START[1]}-{n - 1}"
        return super().preset_rule(layers, preset)

    def image_tokens(self, denoiser: Any, latent_hw: tuple[int, int]) -> int:
        """Image tokens of a latent (the flow shift ``mu`` grows with it)."""
        patch = self.patch(denoiser)
        return (latent_hw[0] // patch) * (latent_hw[1] // patch)


def patch_level(patch: int) -> int:
    """log2 of the patch size (the table's ``level``).

    Raises:
        ValueError: not a power of 2.
    """
    level = int(math.log2(patch))
    if 2**level != patch:
        raise ValueError(
            f"patch_size {patch} is not a power of 2: attnprobe's layer table halves the latent "
            "per level; use a transformer with patch size 1, 2 or 4"
        )
    return level

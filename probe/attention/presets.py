"""Layer presets per model family: what ``paper`` and ``masactrl`` name on SD 1.x/2.x and SDXL.

    preset_rule(layer_table("~/models/sd15"), "masactrl")   # '10-15': MasaCtrl's 10 of 16
    preset_rule(layer_table("~/models/sdxl"), "masactrl")   # 'up_blocks.0.attentions.1-': 44-69
    preset_rule(layer_table("~/models/sdxl"), "paper")      # ValueError: SD 1.5's wording only

A layer table knows its family (``LayerInfo.family``, read from the UNet's config by
:func:`unet_family`). The ``fpe`` preset is a rule on query positions that carries to every
family (:mod:`probe.attention.fpe_rule`); the presets here name fixed layers and so mean
something only on the family they were published for:

- ``paper``: the FPE paper's "layers 4-14", written about SD 1.5's 16 transformer blocks. The
  paper has no SDXL experiment, so on SDXL the preset is refused, naming ``fpe`` and the rules
  that do carry.
- ``masactrl``: MasaCtrl's default start layer. SD: 10 of 16, layers 10-15 (``masactrl.py``,
  ``start_layer=10``). SDXL: the authors' SDXL script (TencentARC/MasaCtrl,
  ``run_synthesis_sdxl.py``: ``MutualSelfAttentionControl(4, LAYER, model_type="SDXL")`` with
  ``LAYER_LIST = [44, 54, 64]`` of 70, noted there as possibly not optimal) starts at 44, the
  first of the three: ``up_blocks.0.attentions.1`` to the last layer. attnprobe names it by
  block, so it means the same blocks on a smaller SDXL-shaped UNet (``tiny-xl``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

SD, SDXL, SD3, FLUX = "sd", "sdxl", "sd3", "flux"

FAMILY_PRESETS: dict[str, dict[str, str | None]] = {
    SD: {"all": "all", "paper": "4-14", "masactrl": "10-15"},
    # None: no published meaning on this family (refused with a message naming the way out)
    SDXL: {"all": "all", "paper": None, "masactrl": "up_blocks.0.attentions.1-"},
    # SD3's joint blocks: neither paper nor MasaCtrl published a setting for them
    SD3: {"all": "all", "paper": None, "masactrl": None},
    FLUX: {"all": "all", "paper": None, "masactrl": None},
}
"""Preset name → layer spec, per family. ``"<block>-"`` means that block and every later layer."""

PRESET_NAMES = ("all", "paper", "masactrl")


class _Layer(Protocol):
    """What a preset reads of a layer (a :class:`probe.attention.layers.LayerInfo`)."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str | None: ...


def unet_family(config: Any) -> str:
    """The family of a UNet from its config: ``"sdxl"`` when it takes SDXL's added conditioning
    (``addition_embed_type == "text_time"``: pooled text embedding and time ids), ``"sd3"``
    for a joint-attention transformer (its config has ``joint_attention_dim``), ``"flux"`` when it
    also has single-stream blocks (``num_single_layers``), else ``"sd"``.

    Example:
        >>> unet_family(load_pipeline("tiny-xl").unet.config), unet_family(tiny_pipe.unet.config)
        ('sdxl', 'sd')
    """
    if config.get("num_single_layers") is not None:
        return FLUX
    if config.get("joint_attention_dim") is not None:
        return SD3
    return SDXL if config.get("addition_embed_type") == "text_time" else SD


def table_family(layers: Sequence[_Layer]) -> str:
    """The family of a layer table; a table read from a file written before families were
    stored (``family`` None) is SD's: attnprobe loaded SD 1.x/2.x only then."""
    family = layers[0].family if layers else None
    return family or SD


def preset_rule(layers: Sequence[_Layer], preset: str) -> str:
    """The layer spec a preset stands for on this table's family.

    Args:
        layers: the run's layer table.
        preset: ``all``, ``paper`` or ``masactrl``.

    Returns:
        A layer spec: a range (``"10-15"``) or an open block range (``"up_blocks.0.attentions.1-"``,
        resolved by :func:`from_block`).

    Raises:
        ValueError: the preset has no meaning on this family (``paper`` on SDXL); the message
            names the specs to use instead.
    """
    family = table_family(layers)
    rule = FAMILY_PRESETS.get(family, FAMILY_PRESETS[SD]).get(preset)
    if rule is None and family in (SD3, FLUX):
        raise ValueError(
            f"layer preset {preset!r} was published for UNets and has no meaning on this "
            f"{family.upper()} transformer of {len(layers)} joint blocks: use 'all', a range "
            "such as '0-11', 'fpe' (attnprobe's DiT reading: every block) or a selection from "
            "`attnprobe select`"
        )
    if rule is None:
        raise ValueError(
            f"layer preset {preset!r} is the FPE paper's 'layers 4-14' of SD 1.5's 16 layers and "
            f"has no published meaning on this {family.upper()} UNet of {len(layers)} layers: use "
            "'fpe' (the official code's rule, query maps of <= 32x32 positions), a rule such as "
            "'res<max' or 'positions<=1024', or a selection from `attnprobe sweep`"
        )
    return rule


def from_block(layers: Sequence[_Layer], block: str) -> list[int]:
    """Indices of the first layer named ``block`` (or inside it) and of every later layer.

    Raises:
        ValueError: no layer of that name.
    """
    for index, layer in enumerate(layers):
        if layer.name == block or layer.name.startswith(block + "."):
            return list(range(index, len(layers)))
    raise ValueError(f"no layer {block!r} in this UNet (see `attnprobe layers --model ...`)")

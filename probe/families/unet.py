"""What SD 1.x/2.x and SDXL share: a UNet of transformer blocks, DDIM editing, ε-prediction.

    unet_layers(pipe.unet)               # one LayerInfo per transformer block, execution order
    attention_modules(pipe.unet)         # {"down_blocks.0...attn1.processor": (0, "self")}

A *layer* is one transformer block: a pair of ``Attention`` modules, ``attn1`` (self) and
``attn2`` (cross). SD 1.x/2.x UNets have 16: two in each of ``down_blocks.0-2``, one in the
mid block and three in each of ``up_blocks.1-3``. SDXL base has 70: its attention blocks hold
1, 2 or 10 transformer blocks each (``down_blocks.1-2``, the mid block, ``up_blocks.0-1``), and
each transformer block is a layer (``...attentions.0.transformer_blocks.3``). Layers are
numbered 0-based in the order the UNet runs them (down → mid → up), by walking the model; the
order of ``unet.attn_processors`` (down, up, mid) is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from probe.attention.layer_info import Kind, LayerInfo, Place, halve
from probe.attention.processor import HookedAttnProcessor
from probe.families.base import DenoiserCall, ModelFamily, meta_model
from probe.families.conditioning import Conditioning
from probe.families.sampler import DDIMSampler


def _transformer_blocks(block: nn.Module, prefix: str) -> list[tuple[str, Any]]:
    found = []
    for i, attention in enumerate(getattr(block, "attentions", None) or []):
        tblocks = list(getattr(attention, "transformer_blocks", []))
        for j, tb in enumerate(tblocks):
            name = f"{prefix}.attentions.{i}"
            if len(tblocks) > 1:
                name += f".transformer_blocks.{j}"
            found.append((name, tb))
    return found


def _walk(unet: UNet2DConditionModel) -> list[tuple[str, Place, int, Any]]:
    """(name, place, level, transformer block) for every layer, in execution order."""
    out: list[tuple[str, Place, int, Any]] = []
    level = 0
    for i, block in enumerate(unet.down_blocks):
        out += [(n, "down", level, tb) for n, tb in _transformer_blocks(block, f"down_blocks.{i}")]
        if getattr(block, "downsamplers", None) is not None:
            level += 1
    if unet.mid_block is not None:
        out += [(n, "mid", level, tb) for n, tb in _transformer_blocks(unet.mid_block, "mid_block")]
    for i, block in enumerate(unet.up_blocks):
        out += [(n, "up", level, tb) for n, tb in _transformer_blocks(block, f"up_blocks.{i}")]
        if getattr(block, "upsamplers", None) is not None:
            level -= 1
    return out


def unet_layers(
    unet: UNet2DConditionModel,
    latent_height: int | None = None,
    latent_width: int | None = None,
    family: str | None = None,
) -> list[LayerInfo]:
    """Every attention layer of ``unet``, in execution order.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x or similar).
        family: the family's name for ``LayerInfo.family`` (default: read from the config).
        latent_height: latent height in positions, not pixels (pixels / ``vae_scale_factor``,
            8 for SD's VAE); default the UNet's ``sample_size`` (64 for SD 1.5, i.e. 512 px).
        latent_width: latent width in positions; default ``latent_height``.

    Returns:
        One :class:`LayerInfo` per transformer block, indexed 0..N-1.

    Example:
        >>> [layer.resolution[0] for layer in unet_layers(pipe.unet)]  # SD 1.5
        [64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64]
    """
    size = unet.config.sample_size
    native = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    height = latent_height or native[0]
    width = latent_width or height
    if family is None:  # a bare UNet: SDXL's takes its added text-time conditioning
        family = "sdxl" if unet.config.get("addition_embed_type") == "text_time" else "sd"
    layers = []
    for index, (name, place, level, tb) in enumerate(_walk(unet)):
        attn1, attn2 = tb.attn1, getattr(tb, "attn2", None)
        layers.append(
            LayerInfo(
                index=index,
                name=name,
                place=place,
                level=level,
                heads=attn1.heads,
                channels=attn1.to_q.in_features,
                cross_dim=attn2.to_k.in_features if attn2 is not None else 0,
                resolution=(halve(height, level), halve(width, level)),
                native_latent=native,
                family=family,
            )
        )
    return layers


def attention_modules(unet: UNet2DConditionModel) -> dict[str, tuple[int, Kind]]:
    """Map each attention processor name (``...attn1.processor``) to (layer index, kind)."""
    out: dict[str, tuple[int, Kind]] = {}
    for index, (name, _place, _level, tb) in enumerate(_walk(unet)):
        tb_name = name if ".transformer_blocks." in name else f"{name}.transformer_blocks.0"
        out[f"{tb_name}.attn1.processor"] = (index, "self")
        if getattr(tb, "attn2", None) is not None:
            out[f"{tb_name}.attn2.processor"] = (index, "cross")
    return out


# -- the official FPE layer rule -------------------------------------------------------------
# The official FPE code (alibaba/EasyNLP, ``diffusion/FreePromptEditing``) chooses the layers whose
# self-attention it replaces by the size of their query map, an absolute number of positions.
# The ``fpe`` preset resolves through the family's ``fpe_rule`` (here :func:`positions_rule`)
# against the run's layer table, which knows its model's native latent size, so every caller
# (``edit``, the sweep's ranges, ``select --base fpe``, ``reproduce``, ``attnprobe layers --spec
# fpe``) gets the same layers.


class _Layer(Protocol):
    """What the rule reads of a layer (a :class:`probe.attention.layers.LayerInfo`); a protocol,
    so that the rule reads any table."""

    @property
    def native_latent(self) -> tuple[int, int] | None: ...

    @property
    def level(self) -> int: ...


OFFICIAL_FPE_POSITIONS = 32 * 32
"""The official FPE code replaces self-attention where the query map has at most 32×32 = 1024
query positions, at whatever size is generated (``att_replace.shape[2] <= 32 ** 2`` in its
``freeprompt.py``): on SD 1.5 layers 2-12 at 512 px, 4-9 at 768 px."""


def fpe_max_positions(native_latent: tuple[int, int], finest_level: int = 0) -> int:
    """The ``fpe`` preset's bound on a layer's query positions, for a model made for latents
    of ``native_latent`` (its UNet's ``sample_size``) whose finest attention layers sit
    ``finest_level`` halvings below the latent (SD 1.x/2.x: 0; SDXL: 1, its first down block
    has no attention).

    An SD-sized model (native latent of at least 64×64: SD 1.x, SD 2.x): the official code's
    32×32 = 1024 (:data:`OFFICIAL_FPE_POSITIONS`), at any size generated. A smaller model: the
    official rule carried to its size. At SD 1.5's native 64×64 latent, 32×32 are the maps one
    level coarser than the finest attention layers; carried to a native h×w latent that is
    (h/2)·(w/2) positions: 8×8 = 64 on the toy (16×16 latents at its native 64 px), 4×4 = 16 on
    ``tiny`` (8×8). The bound is absolute, as the official one: a larger image replaces fewer
    layers.

    SDXL: the FPE paper and code are SD 1.5 only, so no published setting exists. On SDXL base
    (native 128×128, finest attention 64×64) both readings of the official rule, the absolute
    1024 and "one level coarser than the finest attention layers", give the same 32×32 layers
    (4-63 of 70 at 1024 px); carried to the SDXL-shaped ``tiny-xl`` (8×8 latents, finest
    attention 4×4) it is 2×2 = 4. This is attnprobe's reading, not a validated setting.

    Example:
        >>> fpe_max_positions((64, 64)), fpe_max_positions((96, 96)), fpe_max_positions((16, 16))
        (1024, 1024, 64)
        >>> fpe_max_positions((128, 128), finest_level=1), fpe_max_positions((8, 8), 1)
        (1024, 4)
    """
    h, w = native_latent
    div = 2 ** (finest_level + 1)
    return min(OFFICIAL_FPE_POSITIONS, (h // div) * (w // div))


def positions_rule(layers: Sequence[_Layer]) -> str:
    """The official FPE rule on a UNet-like table: ``"positions<=N"`` with N from
    :func:`fpe_max_positions` for the table's native latent and finest level.

    Raises:
        ValueError: the table does not know its model's native latent size (it was read from a
            file written before that was stored).

    Example:
        >>> positions_rule(layer_table("toy")), positions_rule(layer_table("~/models/sd15"))
        ('positions<=64', 'positions<=1024')
    """
    latent = layers[0].native_latent if layers else None
    if latent is None or any(layer.native_latent != latent for layer in layers):
        raise ValueError(
            "the 'fpe' preset depends on the model's native latent size, which this layer table "
            "does not record (a file written by an older attnprobe): rerun the command that "
            "wrote it, or give the rule itself, 'positions<=1024' (SD 1.x/2.x) or "
            "'positions<=64' (the toy)"
        )
    finest = min(layer.level for layer in layers)
    return f"positions<={fpe_max_positions(latent, finest)}"


class UNetFamily(ModelFamily):
    """A family whose denoiser is a ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL): separate
    self- and cross-attention modules per transformer block, ε-prediction, DDIM editing."""

    denoiser_attr: ClassVar[str] = "unet"
    addition_embed_type: ClassVar[str | None] = None

    def recognises(self, config: Any) -> bool:
        return (
            config.get("joint_attention_dim") is None
            and config.get("num_single_layers") is None
            and config.get("addition_embed_type") == self.addition_embed_type
            and "down_block_types" in config
        )

    def empty_denoiser(self, folder: Path) -> Any:
        return meta_model(UNet2DConditionModel, folder / "unet")

    def layers(
        self, denoiser: Any, latent_height: int | None = None, latent_width: int | None = None
    ) -> list[LayerInfo]:
        return unet_layers(denoiser, latent_height, latent_width, family=self.name)

    def attention_modules(self, denoiser: Any) -> dict[str, tuple[int, tuple[Kind, ...]]]:
        return {name: (i, (kind,)) for name, (i, kind) in attention_modules(denoiser).items()}

    def hooked_processors(self, hooks: Any, denoiser: Any, saved: dict[str, Any]) -> dict:
        modules = attention_modules(denoiser)
        missing = set(saved) - set(modules)
        if missing:
            raise RuntimeError(
                "attention modules outside transformer blocks are not supported: "
                f"{sorted(missing)[:3]}"
            )
        return {
            name: HookedAttnProcessor(hooks, hooks.layers[index], kind, saved[name])
            for name, (index, kind) in modules.items()
        }

    def call_inputs(self, args: tuple, kwargs: dict) -> DenoiserCall:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        context = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        return DenoiserCall(int(sample.shape[0]), t, context, tuple(sample.shape[-2:]))

    def fpe_rule(self, layers: Any) -> str:
        return positions_rule(layers)

    def predict(
        self, pipe: Any, model_in: Tensor, t: Tensor, cond: Conditioning, **extra: Any
    ) -> Tensor:
        return pipe.unet(model_in, t, **cond.unet_kwargs()).sample

    def sampler(self, pipe: Any, num_steps: int, latent_hw: tuple[int, int]) -> DDIMSampler:
        return DDIMSampler(self, pipe, num_steps, latent_hw)

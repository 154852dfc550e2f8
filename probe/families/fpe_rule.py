"""The official FPE layer rule, and what it means on a model of another size.

    positions_rule(layer_table("~/models/sd15"))  # 'positions<=1024': layers 2-12 at 512 px
    positions_rule(layer_table("toy"))            # 'positions<=64': layers 2-12 at 64 px
    positions_rule(layer_table("~/models/sdxl"))  # 'positions<=1024': 4-63 at 1024 px

The official FPE code (alibaba/EasyNLP, ``diffusion/FreePromptEditing``) chooses the layers whose
self-attention it replaces by the size of their query map, an absolute number of positions. The
``fpe`` layer preset resolves through its family's ``fpe_rule`` (UNets: :func:`positions_rule`;
DiTs, whose blocks all see one query size: every block) against the run's layer table, which
knows its model's native latent size (``LayerInfo.native_latent``), so every caller (``edit``,
the sweep's ranges, ``select --base fpe``, ``reproduce``, ``attnprobe layers --spec fpe``) gets
the same layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


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

"""The attention-layer table of a run: one :class:`LayerInfo` per layer, in execution order.

    layers = run_layer_table(pipe)             # probe.models: the table at the size generated
    [layer.resolution for layer in layers][:2]
    table_at(layers, (8, 16))                  # the same table at another latent size
    print(format_layer_table(layers))

A *layer* is one transformer block of the denoiser: in a UNet a pair of ``Attention`` modules
(``attn1`` self, ``attn2`` cross), in a DiT one block. Which blocks a model has, and in which
order they run, is its family's knowledge (:mod:`probe.families`); this module holds only what
every table shares. Layer specs that name layers are :mod:`probe.attention.layers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

Place = Literal["down", "mid", "up", "joint", "single", "block"]
"""Where a layer sits: a UNet's down/mid/up blocks; a DiT's joint (SD3, Flux double-stream),
single (Flux single-stream) or plain ``block`` (PixArt: self- and cross-attention) blocks."""
Kind = Literal["self", "cross", "text_image", "text_text", "image_only"]
"""What an attention map holds: ``self`` (image→image) and ``cross`` (image→text) everywhere;
a joint DiT block also ``text_image`` and ``text_text``; SD3.5 Medium's image-only second
attention ``image_only``."""
LayerSpec = int | str | Path | Sequence[int | str] | None


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer (a transformer block) of a UNet or a DiT.

    Attributes:
        index: 0-based position in execution order (down → mid → up).
        name: the module path of its transformer block, e.g. ``up_blocks.1.attentions.0``
            (``...transformer_blocks.K`` is appended when a block holds several).
        place: ``"down"``, ``"mid"`` or ``"up"``; ``"joint"`` for a DiT's joint block,
            ``"single"`` for Flux's single-stream ones, ``"block"`` for PixArt's (see
            :data:`Place`).
        level: how many times the latent was halved before this layer (0 = finest).
        heads: attention heads.
        channels: query channels.
        cross_dim: channels of the text embeddings its cross-attention reads.
        resolution: query map (height, width) in latent positions for the latent size the
            table was built for.
        native_latent: the latent (height, width) the model was made for (its UNet's
            ``sample_size``; SD 1.5: 64×64, the toy: 16×16), whatever size the table is at;
            ``None`` in tables read from files written before it was stored. It sets the
            ``fpe`` preset's bound (:func:`fpe_max_positions`).
        family: the model family's name, ``"sd"`` (SD 1.x/2.x), ``"sdxl"``, ``"sd3"``,
            ``"flux"`` or ``"pixart"`` (:mod:`probe.families`); it sets what the ``masactrl`` and
            ``paper`` presets mean. ``None`` in tables read from files written before it was
            stored (they are SD's).
    """

    index: int
    name: str
    place: Place
    level: int
    heads: int
    channels: int
    cross_dim: int
    resolution: tuple[int, int]
    native_latent: tuple[int, int] | None = None
    family: str | None = None

    @property
    def positions(self) -> int:
        """Number of query positions (height × width)."""
        return self.resolution[0] * self.resolution[1]

    def resolution_at(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        """Query map (height, width) of this layer for a latent of the given size."""
        return halve(latent_height, self.level), halve(latent_width, self.level)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what recordings, probe results and selections store)."""
        native = None if self.native_latent is None else list(self.native_latent)
        return asdict(self) | {"resolution": list(self.resolution), "native_latent": native}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerInfo:
        """Read a dict written by :meth:`to_json`.

        Raises:
            ValueError: a key is missing; the message names it.
        """
        optional = {"native_latent", "family"}  # tables written before they were stored
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in optional]
        if missing:
            raise ValueError(
                f"layer entry {data!r} lacks {missing}: it was not written by LayerInfo.to_json "
                "(rerun the command that made the file)"
            )
        h, w = data["resolution"]
        native = data.get("native_latent")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**values | {"resolution": (h, w), "native_latent": _pair(native)})


def table_at(layers: Sequence[LayerInfo], latent_hw: tuple[int, int]) -> list[LayerInfo]:
    """The same layer table at another latent size (every ``resolution`` recomputed).

    A layer table belongs to a run: resolution rules such as ``res<=16`` mean query positions
    at the latent size generated. This turns the table of one size into the table of another
    without the UNet.

    Example:
        >>> [layer.resolution for layer in table_at(layer_table("tiny"), (8, 16))][:2]
        [(8, 16), (8, 16)]
    """
    h, w = latent_hw
    return [replace(layer, resolution=layer.resolution_at(h, w)) for layer in layers]


def one_resolution(
    layers: Sequence[LayerInfo], chosen: Iterable[int], what: str, spec: LayerSpec
) -> tuple[int, int]:
    """The one query-map resolution of the ``chosen`` layers, for a control that averages
    their maps (Prompt-to-Prompt's LocalBlend, MasaCtrl's word mask).

    Args:
        layers: the run's layer table.
        chosen: indices of the layers ``spec`` chose.
        what: who averages, for the message, e.g. ``"LocalBlend averages maps of one resolution,
            but blend_layers"``.
        spec: the spec given, for the message.

    Raises:
        ValueError: the layers have several resolutions, or there are none.
    """
    sizes = {layers[i].resolution for i in chosen}
    if len(sizes) != 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)) or "no layer"
        sides = sorted({max(layer.resolution) for layer in layers}, reverse=True)
        has = ", ".join(f"'res=={side}'" for side in sides)  # SDXL has no 16x16 maps at 1024 px
        raise ValueError(
            f"{what}={spec!r} gives {shown}: choose layers of one size; this table has {has}"
        )
    return sizes.pop()


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    h, w = value
    return int(h), int(w)


def halve(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 1) // 2  # stride-2 conv with padding 1
    return size


def format_layer_table(layers: list[LayerInfo]) -> str:
    """A plain-text table of layers, as ``attnprobe layers`` prints it."""
    n = max([40, *(len(layer.name) for layer in layers)])  # SDXL: ...transformer_blocks.K
    head = f"{'idx':>3}  {'place':<5} {'block':<{n}} {'res':>7} {'heads':>5} {'ch':>5} {'xdim':>5}"
    rows = [head, "-" * len(head)]
    for layer in layers:
        res = f"{layer.resolution[0]}x{layer.resolution[1]}"
        rows.append(
            f"{layer.index:>3}  {layer.place:<5} {layer.name:<{n}} {res:>7} {layer.heads:>5} "
            f"{layer.channels:>5} {layer.cross_dim:>5}"
        )
    return "\n".join(rows)

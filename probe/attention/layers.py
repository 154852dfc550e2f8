"""The attention layers of a diffusers UNet, in execution order, and layer specs that name them.

A *layer* is one transformer block: a pair of ``Attention`` modules, ``attn1`` (self) and
``attn2`` (cross). SD 1.x/2.x UNets have 16: two in each of ``down_blocks.0-2``, one in the
mid block and three in each of ``up_blocks.1-3``. SDXL base has 70: its attention blocks hold
1, 2 or 10 transformer blocks each (``down_blocks.1-2``, the mid block, ``up_blocks.0-1``), and
each transformer block is a layer (``...attentions.0.transformer_blocks.3``). Layers are
numbered 0-based in the order the UNet runs them (down → mid → up), by walking the model; the
order of ``unet.attn_processors`` (down, up, mid) is never used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from diffusers import UNet2DConditionModel
from torch import nn

from probe.attention.fpe_rule import fpe_rule
from probe.attention.presets import PRESET_NAMES, from_block, preset_rule, unet_family

Place = Literal["down", "mid", "up", "joint", "single"]  # a DiT's blocks (dit_layers.py)
Kind = Literal["self", "cross", "text_image", "text_text"]  # the last two: DiT joint maps only
LayerSpec = int | str | Path | Sequence[int | str] | None

PRESETS = PRESET_NAMES
"""Presets that name fixed layers; what they mean depends on the model family
(:mod:`probe.attention.presets`: ``masactrl`` is 10-15 of SD's 16 layers and 44-69 of SDXL's
70; ``paper`` is SD 1.5's only). ``fpe`` is a rule on query positions that carries to every
model: see :func:`probe.attention.fpe_rule.fpe_rule` (SD 1.x/2.x and SDXL: ``positions<=1024``,
the official code's)."""


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer (a transformer block) of a UNet.

    Attributes:
        index: 0-based position in execution order (down → mid → up).
        name: the module path of its transformer block, e.g. ``up_blocks.1.attentions.0``
            (``...transformer_blocks.K`` is appended when a block holds several).
        place: ``"down"``, ``"mid"`` or ``"up"``; ``"joint"`` for a DiT's joint block,
            ``"single"`` for Flux's single-stream ones (:mod:`probe.attention.dit_layers`).
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
        family: the model family, ``"sd"`` (SD 1.x/2.x), ``"sdxl"``, ``"sd3"`` or ``"flux"``
            (:func:`probe.attention.presets.unet_family`); it sets what the ``masactrl`` and
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
        return _halve(latent_height, self.level), _halve(latent_width, self.level)

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


def _halve(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 1) // 2  # stride-2 conv with padding 1
    return size


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
) -> list[LayerInfo]:
    """Every attention layer of ``unet``, in execution order.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x or similar).
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
    family = unet_family(unet.config)
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
                resolution=(_halve(height, level), _halve(width, level)),
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


_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_RES = re.compile(r"^res\s*(<=|>=|<|>|==)\s*(\d+|max|min)(?:/(\d+))?$")
_POSITIONS = re.compile(r"^positions(<=|>=|<|>|==)(\d+)(?:[x×](\d+))?$")
_COMPARE: dict[str, Any] = {
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "==": lambda a, b: a == b,
}


def resolve_layers(
    unet_or_layers: UNet2DConditionModel | list[LayerInfo], spec: LayerSpec
) -> list[int]:
    """Turn a layer spec into sorted layer indices.

    Args:
        unet_or_layers: the run's layer table (``hooks.layers``, ``maps.layers``,
            ``ProbeResults.layer_table``, ...), or a UNet (then its table at ``sample_size``:
            pass the table of the run when it generates at another size, since resolution
            rules mean query positions at the latent size generated).
        spec: ``None``/``"all"``; an int; ``"4-14"``; ``"2,5,7"``; a list of any of these; a block
            name (``"up_blocks.1"`` or ``"up_blocks.1.attentions.0"``), or a block name and a
            dash, that block and every later layer (``"up_blocks.0.attentions.1-"``); a place
            (``"down"``, ``"mid"``, ``"up"``); a resolution rule in latent positions per side
            (``"res<=32"``, ``"res<max"`` = all but the finest resolution); a rule on query
            positions, height × width (``"positions<=1024"`` or ``"positions<=32x32"``: maps of
            at most 32×32 positions); a preset (``fpe`` = the
            official FPE rule, ``"positions<=1024"`` on SD 1.x/2.x and SDXL, carried to smaller
            models, see :mod:`probe.attention.fpe_rule`; ``paper``, SD only; ``masactrl``, per
            family, see :mod:`probe.attention.presets`; ``all``); ``"none"``; or
            the path of a saved layer-selection JSON file (with a ``"layers"`` key). Rules
            mean the latent size of the table: pass the run's table.

    Returns:
        Sorted, de-duplicated layer indices.

    Raises:
        ValueError: a layer that does not exist or a spec that cannot be read; the message
            lists what the UNet has.

    Example:
        >>> resolve_layers(pipe.unet, "fpe")  # SD 1.5 at 512 px
        [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        >>> resolve_layers(run_layer_table(pipe, 768, 768), "fpe")  # at 768 px
        [4, 5, 6, 7, 8, 9]
    """
    layers = unet_or_layers if isinstance(unet_or_layers, list) else unet_layers(unet_or_layers)
    return sorted(set(_resolve(layers, spec)))


def _resolve(layers: list[LayerInfo], spec: LayerSpec) -> Iterable[int]:
    n = len(layers)
    if spec is None:
        return range(n)
    if isinstance(spec, bool):
        raise ValueError(f"layer spec {spec!r} is not a layer: use an int, a range or 'all'")
    if isinstance(spec, int):
        if not 0 <= spec < n:
            raise ValueError(
                f"layer {spec} does not exist: this UNet has layers 0-{n - 1} "
                "(see `attnprobe layers --model ...`)"
            )
        return [spec]
    if isinstance(spec, Path):
        return _from_file(layers, spec)
    if isinstance(spec, str):
        return _resolve_str(layers, spec.strip())
    if isinstance(spec, Sequence):
        return [i for part in spec for i in _resolve(layers, part)]
    raise ValueError(f"cannot read layer spec {spec!r}: use an int, '4-14', a list, or a name")


def _resolve_str(layers: list[LayerInfo], spec: str) -> Iterable[int]:
    n = len(layers)
    low = spec.lower()
    if low in ("all", ""):
        return range(n)
    if low == "none":
        return []
    if low in PRESETS:
        return _resolve_str(layers, preset_rule(layers, low))
    if low == "fpe":
        return _resolve_str(layers, fpe_rule(layers))
    if low.isdigit():
        return _resolve(layers, int(low))
    if "," in spec:
        return [i for part in spec.split(",") for i in _resolve_str(layers, part.strip())]
    if m := _RANGE.match(spec):
        lo, hi = int(m[1]), int(m[2])
        if lo > hi:
            raise ValueError(f"layer range {spec!r} is empty: write it low-high, e.g. '4-14'")
        return [i for k in range(lo, hi + 1) for i in _resolve(layers, k)]
    if low in ("down", "mid", "up", "joint", "single"):
        return [layer.index for layer in layers if layer.place == low]
    if m := _RES.match(low.replace(" ", "")):
        return _by_resolution(layers, m[1], m[2], int(m[3] or 1))
    if m := _POSITIONS.match(low.replace(" ", "")):
        bound = int(m[2]) * int(m[3] or 1)
        return [layer.index for layer in layers if _COMPARE[m[1]](layer.positions, bound)]
    if spec.endswith("-") and not spec[:-1].strip().isdigit():
        return from_block(layers, spec[:-1].strip())  # "up_blocks.0.attentions.1-": from it on
    named = [
        layer.index for layer in layers if layer.name == spec or layer.name.startswith(spec + ".")
    ]
    if named:
        return named
    if spec.endswith(".json") or Path(spec).is_file():
        return _from_file(layers, Path(spec))
    raise ValueError(
        f"unknown layer spec {spec!r}: use an index (0-{n - 1}), a range '4-14', a list '2,5', "
        f"a place (down/mid/up), a rule 'res<=16', 'res<max' or 'positions<=1024', a preset "
        f"(fpe, {', '.join(PRESETS)}), "
        f"a block name such as {layers[0].name!r}, or a selection .json file"
    )


def _by_resolution(layers: list[LayerInfo], op: str, value: str, divisor: int = 1) -> list[int]:
    sides = [max(layer.resolution) for layer in layers]
    bound = max(sides) if value == "max" else min(sides) if value == "min" else int(value)
    bound //= divisor
    compare = _COMPARE[op]
    return [layer.index for layer, side in zip(layers, sides, strict=True) if compare(side, bound)]


def _from_file(layers: list[LayerInfo], path: Path) -> list[int]:
    if not path.is_file():
        raise ValueError(f"layer selection file {path} does not exist")
    try:
        data = json.loads(path.read_text())
        spec = data["layers"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a layer selection file (JSON with a 'layers' list): {err}; "
            "make one with `attnprobe select`"
        ) from err
    return list(_resolve(layers, spec))


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

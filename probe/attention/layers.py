"""Layer specs: the one language that names attention layers, resolved against a run's table.

    resolve_layers(layers, "4-14")              # [4, ..., 14]
    resolve_layers(layers, "fpe")               # the official FPE rule on this model
    resolve_layers(layers, "masactrl")          # the family's MasaCtrl start layer onwards
    resolve_layers(layers, "up_blocks.1")       # by block name; "res<=16", "down", a file, ...

What a preset means depends on the model family (:mod:`probe.families`: ``paper`` is SD 1.5's
"layers 4-14", ``masactrl`` a start layer per family, ``fpe`` a rule on query positions that
carries to every family); the table (:mod:`probe.attention.layer_info`) says which family it
belongs to, and this module asks that family.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from probe.attention.layer_info import LayerInfo, LayerSpec
from probe.families import PRESET_NAMES, family_of, family_of_table

PRESETS = PRESET_NAMES
"""Presets that name fixed layers; what they mean depends on the model family
(:meth:`probe.families.base.ModelFamily.preset_rule`: ``masactrl`` is 10-15 of SD's 16 layers
and 44-69 of SDXL's 70; ``paper`` is SD 1.5's only). ``fpe`` is a rule on query positions that
carries to every model (:meth:`~probe.families.base.ModelFamily.fpe_rule`)."""


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


def resolve_layers(unet_or_layers: Any, spec: LayerSpec) -> list[int]:
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
            models, see :func:`probe.families.unet.positions_rule`; ``paper``, SD only;
            ``masactrl``, per family, see :mod:`probe.families`; ``all``); ``"none"``; or
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
    if isinstance(unet_or_layers, list):
        layers = unet_or_layers
    else:
        layers = family_of(unet_or_layers).layers(unet_or_layers)
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
    if low in ("down", "mid", "up", "joint", "single", "block"):
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


def from_block(layers: Sequence[LayerInfo], block: str) -> list[int]:
    """Indices of the first layer named ``block`` (or inside it) and of every later layer.

    Raises:
        ValueError: no layer of that name.
    """
    for index, layer in enumerate(layers):
        if layer.name == block or layer.name.startswith(block + "."):
            return list(range(index, len(layers)))
    raise ValueError(f"no layer {block!r} in this model (see `attnprobe layers --model ...`)")


def preset_rule(layers: Sequence[LayerInfo], preset: str) -> str:
    """The layer spec a preset (``all``, ``paper``, ``masactrl``) stands for on this table's
    family (:meth:`probe.families.base.ModelFamily.preset_rule`).

    Raises:
        ValueError: the preset has no meaning on this family; the message names the way out.

    Example:
        >>> preset_rule(layer_table("~/models/sdxl"), "masactrl")
        'up_blocks.0.attentions.1-'
    """
    return family_of_table(layers).preset_rule(layers, preset)


def fpe_rule(layers: Sequence[LayerInfo]) -> str:
    """The rule the ``fpe`` preset stands for on this table's model
    (UNets: :func:`probe.families.unet.positions_rule`; every block on the DiTs).

    Example:
        >>> fpe_rule(layer_table("toy")), fpe_rule(layer_table("~/models/sd15"))
        ('positions<=64', 'positions<=1024')
    """
    return family_of_table(layers).fpe_rule(layers)

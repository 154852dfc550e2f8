"""Layer ranges and pair subsets for the sweep (:mod:`editing.sweep.run`).

default_ranges(16)          # none, fpe, paper, all; windows 0-3 ... 12-15; prefixes; suffixes
parse_ranges(["presets", "4-14", "selection.json"])
drop_refused(["none", "paper"], layer_table("tiny-xl"))  # (["none"], {"paper": "... SDXL ..."})
select_pairs(pairs, 30)     # 30 pairs spread evenly over sources and targets
vital_ranges([0, 1, 2, 3, 4, 6], 12)  # Stable Flow's ablation: none, vital, non-vital, all
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probe.attention.layer_info import LayerSpec
from probe.attention.layers import preset_rule, resolve_layers
from probe.families import PRESET_NAMES

PRESETS = ("none", "fpe", "paper", "all")
GROUPS_WITH_PRESETS = ("default", "presets")
VITAL_ABLATION = "vital-ablation"  # the range keyword of Stable Flow's ablation (vital_ranges)


@dataclass(frozen=True)
class LayerRange:
    """One layer range of the sweep.

    Attributes:
        name: its label in tables and plots (``"fpe"``, ``"4-7"``).
        spec: what :func:`probe.attention.layers.resolve_layers` reads.
        group: ``preset``, ``window``, ``prefix``, ``suffix``, ``selection`` or ``custom``.
    """

    name: str
    spec: LayerSpec
    group: str = "custom"


def default_ranges(num_layers: int = 16, width: int = 4, stride: int = 2) -> list[LayerRange]:
    """Presets, sliding windows, prefixes and suffixes over ``num_layers`` layers.

    On SD 1.x (16 layers): none, fpe, paper, all; windows 0-3, 2-5, ..., 12-15; prefixes 0-3,
    0-7, 0-11; suffixes 4-15, 8-15, 12-15.
    """
    if width < 1 or stride < 1 or width > num_layers:
        raise ValueError(f"window width {width} / stride {stride} do not fit {num_layers} layers")
    out = [LayerRange(name, name, "preset") for name in PRESETS]
    for lo in range(0, num_layers - width + 1, stride):
        out.append(LayerRange(f"{lo}-{lo + width - 1}", f"{lo}-{lo + width - 1}", "window"))
    for hi in range(width - 1, num_layers - 1, width):
        out.append(LayerRange(f"0-{hi}", f"0-{hi}", "prefix"))
    for lo in range(width, num_layers, width):
        out.append(LayerRange(f"{lo}-{num_layers - 1}", f"{lo}-{num_layers - 1}", "suffix"))
    return out


def parse_ranges(items: Iterable[str], num_layers: int = 16) -> list[LayerRange]:
    """Read ranges as the CLI takes them.

    Args:
        items: each a keyword (``default``, ``presets``, ``windows``, ``prefixes``,
            ``suffixes``), a preset name, a layer spec (``"4-14"``, ``"2,5,7"``) or a layer
            selection ``.json`` file.
        num_layers: the UNet's number of layers.

    Returns:
        The ranges, without duplicate names, in the order given.
    """
    groups = {"default": None, "presets": "preset", "windows": "window"}
    groups |= {"prefixes": "prefix", "suffixes": "suffix"}
    out: list[LayerRange] = []
    for item in items:
        item = item.strip()
        if item in groups:
            group = groups[item]
            out += [r for r in default_ranges(num_layers) if group in (None, r.group)]
        elif item in PRESETS:
            out.append(LayerRange(item, item, "preset"))
        elif item.endswith(".json"):
            out.append(LayerRange(Path(item).stem, Path(item), "selection"))
        else:
            out.append(LayerRange(item, item, "custom"))
    unique = {r.name: r for r in reversed(out)}
    return [r for r in out if unique.pop(r.name, None) is not None]


def refused_presets(table: Sequence[Any], names: Iterable[str] = PRESETS) -> dict[str, str]:
    """Preset name → why this table's family gives it no meaning (SDXL: ``paper``, SD 1.5's
    "layers 4-14"; :func:`probe.attention.layers.preset_rule`), among ``names`` (default: the
    sweep's own presets, :data:`PRESETS`; ``vital`` is a range only where named); empty on
    SD 1.x/2.x."""
    refused = {}
    for name in (n for n in names if n in PRESET_NAMES):
        try:
            preset_rule(table, name)
        except ValueError as err:
            refused[name] = str(err)
    return refused


def drop_refused(items: Iterable[str], table: Sequence[Any]) -> tuple[list[str], dict[str, str]]:
    """Range items without the presets this model's family refuses (``paper`` on SDXL).

    Args:
        items: range items as :func:`parse_ranges` reads them.
        table: the run's layer table.

    Returns:
        The items kept, in order, and preset → reason for each refused preset the items named,
        by name or through ``default`` / ``presets`` (whose expansion the sweep leaves them out
        of).
    """
    items = [item.strip() for item in items]
    named = set(items)
    refused = refused_presets(table, [*PRESETS, *sorted(named - set(PRESETS))])
    grouped = bool(named & set(GROUPS_WITH_PRESETS))
    left_out = {name: why for name, why in refused.items() if grouped or name in named}
    return [item for item in items if item not in refused], left_out


def select_pairs(pairs: Sequence[Any], max_pairs: int | None) -> list[Any]:
    """At most ``max_pairs`` pairs, evenly spread over the set (so over sources and targets)."""
    pairs = list(pairs)
    if max_pairs is None or max_pairs >= len(pairs):
        return pairs
    if max_pairs < 1:
        raise ValueError(f"max_pairs={max_pairs}: need at least 1")
    picks = np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)
    return [pairs[i] for i in sorted(set(picks.tolist()))]


def vital_ranges(vital: Sequence[int], num_layers: int) -> list[LayerRange]:
    """Stable Flow's ablation (Avrahami et al., CVPR 2025, their table of vital vs all vs
    non-vital layers): ``none``, ``vital`` (the given blocks), ``non-vital`` (every other block)
    and ``all``, as explicit layer lists.

    Args:
        vital: the vital blocks (:func:`vital_blocks`).
        num_layers: the model's number of layers (blocks).

    Raises:
        ValueError: no vital block, every block vital (no non-vital set to compare), or an index
            outside ``0 … num_layers − 1``.

    Example:
        >>> [(r.name, r.spec) for r in vital_ranges([0, 1, 2, 3, 4, 6], 12)][1:3]
        [('vital', [0, 1, 2, 3, 4, 6]), ('non-vital', [5, 7, 8, 9, 10, 11])]
    """
    chosen = sorted(set(vital))
    if not chosen or len(chosen) == num_layers:
        raise ValueError(
            f"vital blocks {chosen} of {num_layers}: the ablation needs some vital and some "
            "non-vital blocks (see `attnprobe vital --threshold / --top-k`)"
        )
    if chosen[0] < 0 or chosen[-1] >= num_layers:
        raise ValueError(f"vital blocks {chosen}: this model has layers 0-{num_layers - 1}")
    rest = [i for i in range(num_layers) if i not in set(chosen)]
    return [
        LayerRange("none", "none", "preset"), LayerRange("vital", chosen, "vital"),
        LayerRange("non-vital", rest, "vital"), LayerRange("all", "all", "preset"),
    ]  # fmt: skip


def vital_blocks(pipe: Any, table: Sequence[Any]) -> list[int]:
    """The model's vital blocks: those measured and saved in its folder
    (``vital_blocks`` in ``attnprobe.json``, :func:`probe.models.defaults.saved_vital_blocks`),
    else the family's published set (FLUX.1-dev's, the ``vital`` preset).

    Raises:
        ValueError: neither exists; the message says how to measure them (`attnprobe vital
            --record`).
    """
    from probe.models.defaults import saved_vital_blocks

    saved = saved_vital_blocks(pipe)
    return saved if saved is not None else resolve_layers(list(table), "vital")


def pick_pairs(pairs: list[Any], sources: int, targets_per_source: int) -> list[Any]:
    """``sources`` source prompts, evenly spread, each with ``targets_per_source`` targets.

    Raises:
        ValueError: counts below 1.
    """
    if sources < 1 or targets_per_source < 1:
        raise ValueError(
            f"sources={sources}, targets_per_source={targets_per_source}: need at least 1 each"
        )
    by_source: dict[str, list[Any]] = {}
    for pair in pairs:
        by_source.setdefault(pair.source, []).append(pair)
    names = list(by_source)
    step = max(1, len(names) // sources)
    chosen = names[::step][:sources]
    out = []
    for k, name in enumerate(chosen):
        group = by_source[name]
        stride = max(1, len(group) // targets_per_source)
        offset = k % stride  # vary the targets between sources
        out += group[offset::stride][:targets_per_source]
    return out

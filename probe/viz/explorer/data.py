"""The explorer's data for one recorded sample, within a byte budget (see :mod:`.payload`).

data = explorer_data(maps, sample=0, max_bytes=5_000_000)
data["cross"]["13"]["blob"], data["steps"], data["left_out"]
page = samples_data([(maps_a, 0), (maps_b, 0)], max_bytes=5_000_000)   # a dataset's samples
page["samples"][1]["tokens"], page["steps"]                              # steps shared by all
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from probe.viz.explorer.payload import (
    PAGE_OVERHEAD,
    blob_bytes,
    cross_layer,
    self_grid,
    self_layer,
    self_mode,
    thin_steps,
)
from probe.viz.explorer.recording import RecordedMaps

DEFAULT_MAX_BYTES = 5_000_000


def token_label(token: str) -> str:
    """A tokenizer's token as the page shows it: ``car</w>`` → ``car``, ``<|startoftext|>`` →
    ``<start>``, SentencePiece's ``▁car`` → ``car``."""
    specials = {"<|startoftext|>": "<start>", "<|endoftext|>": "<end>", "</s>": "<end>"}
    if token in specials:
        return specials[token]
    return token.removesuffix("</w>").removeprefix("▁") or token


def explorer_data(
    maps: RecordedMaps,
    sample: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    reserved: int = 0,
    steps: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Everything the page shows of ``maps``' sample ``sample``, in at most ``max_bytes``.

    Args:
        maps: a recording (``cross`` and/or ``self``; self whole, pooled or SVD).
        sample: which recorded sample.
        max_bytes: the page's size budget (bytes).
        reserved: bytes already taken elsewhere in the page (the image).
        steps: the steps to show, thinned further if they do not fit (default: every step).

    Returns:
        A JSON-ready dict: ``tokens``, ``layers``, ``steps``, ``cross`` and ``self`` (layer →
        blob, see :mod:`probe.viz.explorer.payload`), ``self_mode`` and ``left_out`` (sentences).

    Raises:
        ValueError: ``sample`` was not recorded, or nothing the page can show was.
    """
    samples = len(maps.tokens) or _sample_count(maps)
    if not 0 <= sample < samples:
        raise ValueError(f"sample {sample} was not recorded: this recording has 0-{samples - 1}")
    kinds = [k for k in ("cross", "self") if k in maps.kinds]
    if not kinds:
        raise ValueError(f"nothing to explore: {maps} has neither cross nor self maps")
    budget = max_bytes - PAGE_OVERHEAD - reserved
    left_out: list[str] = []
    steps = list(maps.steps if steps is None else steps)
    cross: dict[str, Any] = {}
    if "cross" in kinds:
        steps, cross = _cross_within(maps, sample, steps, budget // 2, left_out)
    used = sum(blob_bytes(e) for e in cross.values())
    self_maps: dict[str, Any] = {}
    if "self" in kinds:
        self_maps = _self_within(maps, sample, steps, budget - used, left_out)
    tokens = maps.tokens[sample] if maps.tokens else []
    return {
        "tokens": [token_label(t) for t in tokens],
        "layers": [_layer_entry(maps, i) for i in maps.recorded_layers()],
        "steps": [{"index": s, "t": maps.timesteps.get(s)} for s in steps],
        "cross": cross,
        "self": self_maps,
        "self_mode": self_mode(maps) if self_maps else None,
        "left_out": left_out,
    }


def samples_data(
    views: Sequence[tuple[RecordedMaps, int]], max_bytes: int = DEFAULT_MAX_BYTES, reserved: int = 0
) -> dict[str, Any]:
    """The page's data for several recorded samples (a dataset's), sharing one budget and one
    set of steps: each ``(maps, sample)`` gets an equal share of ``max_bytes``.

    Returns:
        ``layers``, ``steps``, ``self_mode`` and ``left_out`` of the page, and ``samples``: per
        view its ``tokens``, ``cross`` and ``self`` (as :func:`explorer_data` gives them).

    Raises:
        ValueError: no views, or as :func:`explorer_data`.
    """
    if not views:
        raise ValueError("no samples to show: pass at least one (maps, sample)")
    share = (max_bytes - PAGE_OVERHEAD - reserved) // len(views) + PAGE_OVERHEAD
    steps: list[int] | None = None
    while True:  # a sample that thins its steps further sets them for all
        each = [explorer_data(maps, i, share, steps=steps) for maps, i in views]
        kept = [[s["index"] for s in d["steps"]] for d in each]
        if all(k == kept[0] for k in kept):
            break
        steps = min(kept, key=len)
    left_out = list(dict.fromkeys(line for d in each for line in d["left_out"]))
    if left_out and len(views) > 1:
        left_out.append(f"the {len(views)} samples share the page's budget: {_mb(share)} each")
    first = each[0]
    return {
        "layers": first["layers"],
        "steps": first["steps"],
        "self_mode": next((d["self_mode"] for d in each if d["self_mode"]), None),
        "left_out": left_out,
        "samples": [{k: d[k] for k in ("tokens", "cross", "self")} for d in each],
    }


def _sample_count(maps: RecordedMaps) -> int:
    return int(next(iter(maps.data.values())).shape[0]) if maps.data else 0


def _layer_entry(maps: RecordedMaps, index: int) -> dict[str, Any]:
    info = maps.layers[index]
    entry: dict[str, Any] = {"index": index, "name": info.name, "hw": list(maps.resolution(index))}
    if index in maps.recorded_layers("self"):
        entry["self_hw"] = list(self_grid(maps, index))
    return entry


def _cross_within(
    maps: RecordedMaps, sample: int, steps: list[int], budget: int, left_out: list[str]
) -> tuple[list[int], dict[str, Any]]:
    """Cross maps of every layer, the steps thinned until they fit ``budget``."""
    layers = maps.recorded_layers("cross")
    stride = 1
    while True:
        kept = thin_steps(steps, stride)
        cross = {str(i): cross_layer(maps, i, kept, sample) for i in layers}
        size = sum(blob_bytes(e) for e in cross.values())
        if size <= budget or len(kept) == 1:
            break
        stride = max(stride + 1, math.ceil(stride * size / budget))
    if len(kept) < len(maps.steps):
        every = f"every one in {stride}" if len(steps) == len(maps.steps) else "thinned"
        left_out.append(
            f"steps: {len(kept)} of the {len(maps.steps)} recorded steps are shown ({every}, "
            f"back from the last): all of them would not fit the page's "
            f"{_mb(budget * 2)} budget (raise it with --max-mb, or record fewer steps)"
        )
    if size > budget:
        left_out.append(
            f"the cross maps take {_mb(size)}, over half the page's budget even at one step"
        )
    return kept, cross


def _self_within(
    maps: RecordedMaps, sample: int, steps: Sequence[int], budget: int, left_out: list[str]
) -> dict[str, Any]:
    """Self maps of the layers that fit ``budget``, coarsest first."""
    layers = sorted(maps.recorded_layers("self"), key=lambda i: math.prod(self_grid(maps, i)))
    kept: dict[str, Any] = {}
    dropped: list[int] = []
    for i in layers:
        entry = self_layer(maps, i, steps, sample)
        if blob_bytes(entry) > budget:
            dropped.append(i)
            continue
        budget -= blob_bytes(entry)
        kept[str(i)] = entry
    if kept and self_mode(maps) == "svd" and maps.settings.get("heads", "mean") != "mean":
        left_out.append("self-attention SVDs of heads other than the first (recorded per head)")
    if dropped:
        grids = sorted({"x".join(map(str, self_grid(maps, i))) for i in dropped})
        left_out.append(
            f"self-attention of layers {sorted(dropped)} ({', '.join(grids)} positions) does not "
            "fit the page's budget: clicking a pixel there shows nothing (raise it with "
            "--max-mb, or record those layers with --self-reduce svd:8)"
        )
    return dict(sorted(kept.items(), key=lambda kv: int(kv[0])))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"

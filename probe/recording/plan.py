"""The memory plan of a recording: what it will store and how many bytes that takes, known
before the first step.

    plan = plan_recording(layers, (16, 16), steps, rows=1, kinds=("cross", "self"), heads="mean",
                          self_reduce=SelfReduce("svd", 8), dtype=torch.float16)
    format_bytes(plan.total_bytes)          # '1.2 MiB'
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from probe.attention.layer_info import LayerInfo
from probe.recording.reduce import HeadSpec, SelfReduce, head_count

DEFAULT_BUDGET = 4 * 2**30
AUTO_SVD = SelfReduce("svd", 8)
SQUARE_KINDS = ("self", "image_only")
"""Kinds whose maps are image→image, ``[queries, queries]``: kept as ``self_reduce`` says."""


class BudgetError(ValueError):
    """A recording would not fit its memory budget."""


@dataclass(frozen=True)
class RecordingPlan:
    """What a recording will store, and how many bytes that takes."""

    layers: tuple[int, ...]
    kinds: tuple[str, ...]
    steps: tuple[int, ...]
    rows: int
    heads: HeadSpec
    self_reduce: SelfReduce
    dtype: torch.dtype
    cross_bytes: int
    self_bytes: int
    text_bytes: int = 0  # a DiT's text-query kinds, text_image and text_text
    image_only_bytes: int = 0  # SD3.5 Medium's attn2, counted as self (self_reduce)

    @property
    def total_bytes(self) -> int:
        return self.cross_bytes + self.self_bytes + self.text_bytes + self.image_only_bytes


def plan_recording(
    layers: Sequence[LayerInfo],
    latent_hw: tuple[int, int],
    steps: Sequence[int],
    rows: int,
    kinds: Sequence[str],
    heads: HeadSpec,
    self_reduce: SelfReduce,
    dtype: torch.dtype,
    tokens: int = 77,
    image_only_layers: Collection[int] | None = None,
) -> RecordingPlan:
    """Count the bytes a recording will take (``self_reduce`` must not be ``auto``).

    ``tokens`` is the number of text keys (SD: 77; SD3: 77 CLIP + 256 T5 joint tokens); the
    DiT kinds ``text_image`` (``[tokens, queries]``) and ``text_text`` (``[tokens, tokens]``)
    are kept whole; ``image_only`` (``[queries, queries]``) is reduced as ``self``, in
    ``image_only_layers`` (the blocks that have it, SD3.5 Medium's 0-12; default every layer)."""
    size = torch.tensor([], dtype=dtype).element_size()
    cross = selfb = text = image_only = 0
    for layer in layers:
        hw = layer.resolution_at(*latent_hw)
        per_map = rows * head_count(heads, layer.heads) * size * len(steps)
        if "cross" in kinds:
            cross += per_map * hw[0] * hw[1] * tokens
        if "self" in kinds:
            selfb += per_map * self_reduce.floats_per_map(hw)
        text += per_map * tokens * (hw[0] * hw[1] * ("text_image" in kinds))
        text += per_map * tokens * (tokens * ("text_text" in kinds))
        has_image_only = image_only_layers is None or layer.index in image_only_layers
        if "image_only" in kinds and has_image_only:
            image_only += per_map * self_reduce.floats_per_map(hw)
    return RecordingPlan(
        tuple(layer.index for layer in layers), tuple(kinds), tuple(steps), rows, heads,
        self_reduce, dtype, cross, selfb, text, image_only,
    )  # fmt: skip


def format_bytes(n: float) -> str:
    """A byte count for messages: ``"1.50 GiB"`` from 256 MiB up, else ``"12.0 MiB"``."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"

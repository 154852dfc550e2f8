"""What every row of a denoiser batch is conditioned on, and SDXL's micro-conditioning.

cond = family_of(pipe).encode(pipe, ["a red car"], True, (512, 512), MicroConditioning())
cond.embeddings.shape          # [2, 77, 768]: the unconditional row first
cond.rows([1])                 # the conditional row, every added input alike
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class MicroConditioning:
    """SDXL's size and crop conditioning (its ``time_ids``), as diffusers' pipeline takes it.

    Attributes:
        original_size: (height, width) the model is told the training image had (default: the
            size generated).
        crops_coords_top_left: (top, left) of the crop it is told was taken (default (0, 0)).
        target_size: (height, width) of the image wanted (default: the size generated).
    """

    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None

    def time_ids(self, height: int, width: int) -> list[int]:
        """The six time ids ``original + crop + target`` for an image of ``height × width``."""
        original = self.original_size or (height, width)
        target = self.target_size or (height, width)
        return [*original, *self.crops_coords_top_left, *target]


@dataclass
class Conditioning:
    """What every row of a denoiser batch is conditioned on.

    Attributes:
        embeddings: text embeddings ``[rows, tokens, dim]`` (the denoiser's
            ``encoder_hidden_states``), unconditional rows first under guidance.
        added: per-row extra inputs, each ``[rows, ...]``: SDXL's ``text_embeds`` and
            ``time_ids``, SD3's and Flux's ``pooled_projections``, PixArt's
            ``encoder_attention_mask``; empty for SD 1.x/2.x. The family's
            :meth:`ModelFamily.predict` knows where each goes.
    """

    embeddings: Tensor
    added: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def rows(self, index: Sequence[int] | slice) -> Conditioning:
        """The conditioning of some rows (every tensor indexed alike)."""
        pick = list(index) if not isinstance(index, slice) else index
        return Conditioning(self.embeddings[pick], {k: v[pick] for k, v in self.added.items()})

    def with_embeddings(self, embeddings: Tensor) -> Conditioning:
        """The same added conditioning with other text embeddings (null-text inversion)."""
        return Conditioning(embeddings, dict(self.added))

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``unet(sample, t, **kwargs)`` for these rows."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.embeddings}
        if self.added:
            kwargs["added_cond_kwargs"] = dict(self.added)
        return kwargs

    def transformer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of a DiT call: the text tokens and every added input by name."""
        return {"encoder_hidden_states": self.embeddings, **self.added}

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Rows of several conditionings, in order."""
        keys = parts[0].added.keys()
        return Conditioning(
            torch.cat([p.embeddings for p in parts]),
            {k: torch.cat([p.added[k] for p in parts]) for k in keys},
        )

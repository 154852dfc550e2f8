"""The controller protocol: small objects the attention processor consults at every call.

An *observer* (e.g. the recorder) asks for probabilities and looks at them. An *editor* changes
what rows attend with: either the queries, keys and values before attention (which keeps the fused
kernel on: Free-Prompt-Editing is ``SDPA(q_src, k_src, v_tgt)``) or, when it must, the
probabilities themselves (Prompt-to-Prompt's cross-attention edits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from probe.attention.batch import BatchLayout
from probe.attention.layers import Kind, LayerInfo

__all__ = ["AttentionCall", "Controller", "Kind", "attention_probs"]


@dataclass(frozen=True)
class AttentionCall:
    """What one attention call is: where, when, and on which batch.

    Attributes:
        layer: the layer.
        kind: ``"self"`` (attn1) or ``"cross"`` (attn2).
        step: 0-based denoising step from the UNet's step clock.
        timestep: the scheduler timestep of that step.
        layout: batch roles.
        query_hw: (height, width) of the query map.
        keys: number of key tokens (``h*w`` for self, text tokens for cross).
    """

    layer: LayerInfo
    kind: Kind
    step: int
    timestep: float
    layout: BatchLayout
    query_hw: tuple[int, int]
    keys: int


class Controller:
    """Base class: a controller that does nothing. Override what you need.

    Probabilities have shape ``[batch, heads, queries, keys]``; queries, keys and values
    ``[batch, heads, tokens, head_dim]``.
    """

    def claims(self, layer: LayerInfo, kind: Kind) -> bool:
        """Whether this controller may act on (layer, kind) at some step."""
        return True

    def active(self, call: AttentionCall) -> bool:
        """Whether to consult this controller for this call."""
        return self.claims(call.layer, call.kind)

    def needs_probs(self, call: AttentionCall) -> bool:
        """Whether this call must materialise probabilities for this controller."""
        return False

    def edit_qkv(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Change queries, keys or values before attention."""
        return q, k, v

    def edits_probs(self, call: AttentionCall) -> bool:
        """Whether :meth:`edit_probs` changes this call's probabilities."""
        return False

    def edit_probs(self, call: AttentionCall, probs: Tensor) -> Tensor:
        """Change the probabilities (only called when :meth:`edits_probs` is true)."""
        return probs

    def observe(self, call: AttentionCall, probs: Tensor) -> None:
        """Look at the probabilities actually used (only when :meth:`needs_probs` is true)."""

    def on_unet_call(self, hooks: object, first: bool) -> None:
        """Called before every UNet forward; ``first`` for the first call since (re)start."""


def attention_probs(q: Tensor, k: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """``softmax(q kᵀ · scale + mask)`` in float32: ``[batch, heads, queries, keys]``."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)

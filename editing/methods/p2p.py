"""Prompt-to-Prompt (Hertz et al.): word swap, refinement and re-weighting of cross-attention,
with token alignment, plus self-attention replacement at the coarse layers.

Cross-attention maps are small (queries × 77 tokens), so these edits change probabilities
directly; the self-attention part stays on the fused kernel (:class:`SelfAttentionReplace`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from editing.methods.replace import RowEditor, SelfAttentionReplace
from probe.attention.controller import AttentionCall, Kind
from probe.attention.layers import LayerSpec
from probe.prompts.words import find_word, prompt_tokens


def align_tokens(source: list[str], target: list[str]) -> list[int]:
    """For each target token position, the source position it copies, or -1 for a new token.

    Tokens are aligned by their longest common subsequences (as Prompt-to-Prompt's refinement
    does); padding positions past both prompts map to themselves.
    """
    mapper = [-1] * len(target)
    matcher = difflib.SequenceMatcher(a=source, b=target, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            mapper[block.b + k] = block.a + k
    return mapper


class PromptToPrompt(RowEditor):
    """Prompt-to-Prompt cross-attention control.

    Args:
        mode: ``"replace"`` (word swap: prompts of the same token count), ``"refine"`` (the
            target adds or changes words; aligned tokens keep the source's maps) or
            ``"reweight"`` (the target is the source; chosen words' attention is scaled).
        layers: layers whose cross-attention is edited (default all).
        cross_fraction: first fraction of steps for cross-attention control (P2P: 0.8).
        weights: for ``reweight`` (or on top of the others), word → factor, e.g. ``{"red": 2}``.

    Call :meth:`prepare` with the tokenizer and prompts before the run (``edit`` does).
    """

    kind: Kind = "cross"

    def __init__(
        self,
        mode: str = "replace",
        layers: LayerSpec = "all",
        cross_fraction: float = 0.8,
        weights: dict[str, float] | None = None,
    ) -> None:
        if mode not in ("replace", "refine", "reweight"):
            raise ValueError(f"Prompt-to-Prompt mode {mode!r}: use replace, refine or reweight")
        super().__init__(layers, cross_fraction)
        self.mode = mode
        self.weights = dict(weights or {})
        self.mappers: list[Tensor] = []  # per target: [tokens] source index or -1
        self.scales: list[Tensor] = []  # per target: [tokens] attention factor

    def prepare(self, tokenizer: Any, source: str, targets: Sequence[str]) -> None:
        """Align every target's tokens with the source's.

        Raises:
            ValueError: ``replace`` with a different token count, or a re-weighted word that is
                not in the target.
        """
        limit = tokenizer.model_max_length
        src = prompt_tokens(tokenizer, source)
        self.mappers, self.scales = [], []
        for target in targets:
            tgt = prompt_tokens(tokenizer, target)
            if self.mode == "replace" and len(tgt) != len(src):
                raise ValueError(
                    f"word swap needs prompts of the same token count: {source!r} has "
                    f"{len(src)} tokens, {target!r} has {len(tgt)}; use mode='refine'"
                )
            if self.mode == "replace":
                mapper = list(range(limit))
            else:
                mapper = align_tokens(src, tgt) + list(range(len(tgt), limit))
            self.mappers.append(torch.tensor(mapper))
            scale = torch.ones(limit)
            for word, factor in self.weights.items():
                scale[find_word(tgt, word, "all")] = factor
            self.scales.append(scale)

    def edits_probs(self, call: AttentionCall) -> bool:
        return True

    def edit_probs(self, call: AttentionCall, probs: Tensor) -> Tensor:
        src, tgt = self.pairs(call)
        if not self.mappers:
            raise RuntimeError("PromptToPrompt.prepare(tokenizer, source, targets) was not called")
        probs = probs.clone()
        for row, s, k in zip(tgt, src, range(len(tgt)), strict=True):
            mapper, scale = self.mappers[k % len(self.mappers)], self.scales[k % len(self.scales)]
            mapped = probs[s][..., mapper.clamp(min=0)]
            new = (mapper < 0).to(probs.dtype)
            edited = (
                mapped * (1 - new) + probs[row] * new if self.mode != "reweight" else probs[row]
            )
            probs[row] = edited * scale.to(probs.dtype)
        return probs


def prompt_to_prompt(
    mode: str = "replace",
    cross_fraction: float = 0.8,
    self_fraction: float = 0.4,
    cross_layers: LayerSpec = "all",
    self_layers: LayerSpec = "res<=max/4",
    weights: dict[str, float] | None = None,
) -> list[RowEditor]:
    """Prompt-to-Prompt's controllers: cross-attention control plus self-attention replacement
    at the coarse layers (P2P replaces self-attention only at ≤16×16 at 512 px)."""
    return [
        PromptToPrompt(mode, cross_layers, cross_fraction, weights),
        SelfAttentionReplace(self_layers, self_fraction),
    ]

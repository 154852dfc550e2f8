"""Where cross-attention puts its weight along the text: start token, words, end token, padding.

Each cross-attention query spreads a weight of 1 over the text encoder's 77 positions. This
module averages that weight over heads, queries, layers and steps of a recording, and sums it
over the positions of each kind::

    with record_attention(pipe, kinds=("cross",)) as maps:
        pipe("a red car", num_inference_steps=20)
    token_shares(maps)
    # TokenShares(start=0.03, words=0.09, end=0.03, padding=0.85, ...)

It measures how a model's cross-attention reads the prompt: the toy v1 put 84–86% of its
weight on the padding positions, which with a causal text encoder have read the whole prompt
(docs/editing.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from probe.recording.maps import AttentionMaps


@dataclass(frozen=True)
class TokenShares:
    """Mean share of the cross-attention weight on each kind of text position.

    Attributes:
        start: the start token (``<|startoftext|>``).
        words: the prompt's own tokens, together.
        end: the first end token (``<|endoftext|>``) after the prompt.
        padding: every position after it (padded with the end token, CLIP's convention).
        per_token: the share of each prompt token, start and end included, in order.
        tokens: those tokens.
    """

    start: float
    words: float
    end: float
    padding: float
    per_token: tuple[float, ...]
    tokens: tuple[str, ...]

    def row(self) -> str:
        """A markdown table row: start | words | end | padding, in percent."""
        parts = (self.start, self.words, self.end, self.padding)
        return "| " + " | ".join(f"{100 * p:.1f}%" for p in parts) + " |"


def token_shares(
    maps: AttentionMaps,
    sample: int = 0,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
) -> TokenShares:
    """The cross-attention weight of one recorded sample, summed per kind of text position.

    Args:
        maps: a recording with cross-attention and its tokens (``record_attention(...,
            prompts=...)`` or a pipeline call, which records them).
        sample: which recorded sample.
        layers, steps: what to average over (default: every recorded cross layer and step).

    Returns:
        :class:`TokenShares` (its four shares sum to 1 up to the maps' precision).

    Raises:
        KeyError: no cross-attention or no tokens in the recording, or a layer or step that
            was not recorded.
    """
    if not maps.tokens:
        raise KeyError("this recording has no tokens: pass prompts= to record_attention")
    chosen_layers = list(layers) if layers is not None else maps.recorded_layers("cross")
    if not chosen_layers:
        raise KeyError("this recording has no cross-attention: record kinds=('cross',)")
    chosen_steps = list(steps) if steps is not None else maps.steps
    total: torch.Tensor | None = None
    for layer in chosen_layers:
        for step in chosen_steps:
            m = maps.cross(layer, step, sample)  # [heads, h, w, positions]
            mean = m.reshape(-1, m.shape[-1]).mean(dim=0)
            total = mean if total is None else total + mean
    assert total is not None
    weights = (total / (len(chosen_layers) * len(chosen_steps))).tolist()
    tokens = tuple(maps.tokens[sample])
    n = len(tokens)  # start, the prompt's tokens, the end token
    return TokenShares(
        start=weights[0],
        words=sum(weights[1 : n - 1]),
        end=weights[n - 1],
        padding=sum(weights[n:]),
        per_token=tuple(weights[:n]),
        tokens=tokens,
    )

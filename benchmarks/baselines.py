"""The reference implementations' way of doing things, re-implemented on attnprobe's hooks.

Both the official FPE code and Prompt-to-Prompt patch every attention module so that it computes
``softmax(Q Kᵀ · scale)`` explicitly and multiplies it with ``V``, and hand the probabilities to a
controller. These controllers reproduce that cost on attnprobe's processor, so the comparison
runs the same UNet, the same batch and the same math, and differs only in the attention path:

- :class:`MaterialiseEverywhere`: every attention call materialises its probabilities and the
  output is ``probs @ v`` (the official FPE code's processor). With ``store=True`` it is also
  Prompt-to-Prompt's ``AttentionStore``: the conditional rows' maps, every head in fp32, summed
  over steps.
- :class:`InPlaceMaterialisedReplace`: FPE's edit on materialised probabilities, copying the
  source row's probabilities over the targets' in place (no extra copy, as the official code).
"""

from __future__ import annotations

from torch import Tensor

from editing.methods.replace import MaterialisedSelfAttentionReplace
from probe.attention.controller import AttentionCall, Controller
from probe.attention.layer_info import Kind, LayerInfo


class MaterialiseEverywhere(Controller):
    """Materialise the probabilities of every attention call; optionally sum them (P2P store).

    Args:
        store: keep Prompt-to-Prompt's ``AttentionStore``: per (layer, kind), the conditional
            rows' probabilities ``[rows, heads, queries, keys]`` in fp32, summed over steps.
        max_queries: store only layers with at most this many query positions (Prompt-to-Prompt
            stores ``<= 32**2`` at 512 px); ``None`` stores every layer.

    Example:
        >>> store = MaterialiseEverywhere(store=True)
        >>> with AttentionHooks(pipe, [store]):
        ...     pipe("a red car")
        >>> store.nbytes
    """

    def __init__(self, store: bool = False, max_queries: int | None = None) -> None:
        self.store = store
        self.max_queries = max_queries
        self.sums: dict[tuple[int, str], Tensor] = {}

    def claims(self, layer: LayerInfo, kind: Kind) -> bool:
        return True

    def edits_probs(self, call: AttentionCall) -> bool:
        return True

    def edit_probs(self, call: AttentionCall, probs: Tensor) -> Tensor:
        queries = call.query_hw[0] * call.query_hw[1]
        if self.store and (self.max_queries is None or queries <= self.max_queries):
            rows = call.layout.indices(guidance="cond")
            key = (call.layer.index, call.kind)
            if key in self.sums:
                self.sums[key] += probs[rows]
            else:
                self.sums[key] = probs[rows].clone()
        return probs

    @property
    def nbytes(self) -> int:
        """Bytes the stored maps take."""
        return sum(t.numel() * t.element_size() for t in self.sums.values())


class InPlaceMaterialisedReplace(MaterialisedSelfAttentionReplace):
    """FPE on materialised probabilities, the target rows overwritten in place."""

    def edit_probs(self, call: AttentionCall, probs: Tensor) -> Tensor:
        src, tgt = self.pairs(call)
        if tgt:
            probs[tgt] = probs[src]
        return probs

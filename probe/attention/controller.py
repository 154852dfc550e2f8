"""The controller protocol: small objects the attention processor consults at every call.

An *observer* (e.g. the recorder) asks for probabilities and looks at them. An *editor* changes
what rows attend with: either the queries, keys and values before attention (which keeps the fused
kernel on: Free-Prompt-Editing is ``SDPA(q_src, k_src, v_tgt)``) or, when it must, the
probabilities themselves (Prompt-to-Prompt's cross-attention edits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from probe.attention.batch import BatchLayout
from probe.attention.layer_info import Kind, LayerInfo

__all__ = [
    "AttentionCall",
    "Controller",
    "HookState",
    "Kind",
    "attention_probs",
    "hand_out",
    "rows_to_materialise",
]


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


class HookState(Protocol):
    """What controllers and the processor read from the open hooks.

    :class:`probe.attention.hooks.AttentionHooks` is the implementation; this protocol lets
    the processor and every controller name its type without importing the hooks module
    (which imports the processor).
    """

    @property
    def family(self) -> Any:
        """The model's family (:class:`probe.families.base.ModelFamily`)."""
        ...

    @property
    def unet(self) -> Any:
        """The denoiser the hooks are on: the UNet, or a DiT's transformer."""
        ...

    @property
    def layers(self) -> list[LayerInfo]:
        """The run's layer table, at the latent size the UNet is called with."""
        ...

    @property
    def latent_hw(self) -> tuple[int, int]:
        """Latent (height, width) of the current UNet call."""
        ...

    @property
    def total_steps(self) -> int | None:
        """Steps of the run under way, when known."""
        ...

    @property
    def batch_layout(self) -> BatchLayout | None:
        """Batch roles of the current UNet call (set before controllers see the call)."""
        ...

    @property
    def encoder_hidden_states(self) -> Tensor | None:
        """The text embeddings ``[batch, tokens, dim]`` of the current UNet call."""
        ...

    @property
    def pipe(self) -> Any:
        """The pipeline the hooks were opened on, or ``None`` for a bare UNet."""
        ...

    @property
    def controllers(self) -> Sequence[Controller]:
        """The controllers consulted at every attention call."""
        ...

    def make_call(self, layer: LayerInfo, kind: Kind, queries: int, keys: int) -> AttentionCall:
        """Describe the attention call now under way."""
        ...


class Controller:
    """Base class: a controller that does nothing. Override what you need.

    Probabilities have shape ``[batch, heads, queries, keys]``; queries, keys and values
    ``[batch, heads, tokens, head_dim]``.
    """

    def bind(self, layers: list[LayerInfo]) -> None:
        """Resolve layer specs against the run's layer table (default: nothing to resolve).
        :class:`~probe.attention.hooks.AttentionHooks` binds its controllers when it is made,
        so that a bad spec fails before the first step."""

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

    def score_bias(self, call: AttentionCall, q: Tensor, k: Tensor) -> Tensor | None:
        """An additive bias on this call's scores ``q kᵀ · scale``, or ``None`` (the default).

        The bias broadcasts to ``[batch, heads, queries, keys]`` (e.g. ``[batch, 1, q, k]``);
        the processor adds it to the attention mask, so the fused kernel stays on and
        observers see the biased probabilities. To keep a query from a key, add
        ``torch.finfo(q.dtype).min``, not ``-inf``: a query left with no key then reads every
        key uniformly (as MasaCtrl's published code does) instead of giving NaN.

        Args:
            call: the attention call.
            q, k: queries and keys ``[batch, heads, tokens, head_dim]`` after every
                :meth:`edit_qkv`.
        """
        return None

    def edits_probs(self, call: AttentionCall) -> bool:
        """Whether :meth:`edit_probs` changes this call's probabilities."""
        return False

    def edit_probs(self, call: AttentionCall, probs: Tensor) -> Tensor:
        """Change the probabilities (only called when :meth:`edits_probs` is true)."""
        return probs

    def observed_rows(self, call: AttentionCall) -> Sequence[int] | None:
        """The batch rows :meth:`observe` reads, or ``None`` (the default) for every row.

        :meth:`observe` then gets the probabilities of exactly these rows, in this order. When
        every observer of a call names its rows and no controller edits the probabilities, the
        processor materialises only those rows (the recorder's conditional half: half the
        softmax of a guided batch); the attention output still comes from the fused kernel.
        """
        return None

    def observe(self, call: AttentionCall, probs: Tensor) -> None:
        """Look at the probabilities actually used (only when :meth:`needs_probs` is true):
        ``[rows, heads, queries, keys]`` for the rows of :meth:`observed_rows`."""

    def prepare(self, tokenizer: Any, source: str, targets: Sequence[str]) -> None:
        """Read the prompts before a run; default: nothing.

        :func:`editing.editor.edit` calls it on every controller once, before the first UNet
        call, with the pipeline's tokenizer, the source prompt and the target prompts (e.g.
        Prompt-to-Prompt aligns the targets' tokens with the source's here).
        """

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        """Called before every UNet forward; ``first`` for the first call since (re)start."""

    def after_step(self, step: int, latents: Tensor, layout: BatchLayout) -> Tensor:
        """Change the latents after denoising step ``step``; default: return them unchanged.

        Loops that own their latents call it after every scheduler step, on every controller
        in order (:func:`editing.sampling.denoise` does; a plain ``pipe(...)`` call does not).
        Prompt-to-Prompt's LocalBlend pulls the targets back to the source here.

        Args:
            step: the 0-based step just finished.
            latents: ``[samples, C, h, w]``, one row per sample in sample order (not the
                UNet's guidance-doubled batch); ``layout.rows[i].sample`` names a UNet row's.
            layout: the batch roles of the UNet calls of this step.

        Returns:
            The latents the loop continues with (the same tensor when nothing changes).
        """
        return latents


def attention_probs(q: Tensor, k: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """``softmax(q kᵀ · scale + mask)`` in float32: ``[batch, heads, queries, keys]``."""
    # the scale goes on q (queries × dim) rather than on the scores (queries × keys): one pass
    # fewer over the largest tensor of the layer; the mask is added in place for the same reason
    scores = torch.matmul(q.float() * scale, k.float().transpose(-1, -2))
    if mask is not None:
        scores.add_(mask.float())
    return scores.softmax(dim=-1)


def rows_to_materialise(asked: Sequence[Sequence[int] | None]) -> list[int] | None:
    """The union (ascending) of the rows observers read, each ``asked`` entry one observer's
    :meth:`Controller.observed_rows`; ``None`` if one of them reads every row."""
    if any(r is None for r in asked):
        return None
    return sorted({i for r in asked if r is not None for i in r})


def hand_out(
    observers: Sequence[Controller],
    asked: Sequence[Sequence[int] | None],
    calls: Sequence[AttentionCall],
    probs: Sequence[Tensor],
    rows: list[int] | None,
) -> None:
    """Give each observer (with its ``asked`` rows, its call and its probabilities, whose batch
    axis holds ``rows``; ``None``: every row of the call) exactly the rows it reads."""
    for c, want, call, p in zip(observers, asked, calls, probs, strict=True):
        if want is None or list(want) == rows:
            c.observe(call, p)
        elif want:
            c.observe(call, p[list(want) if rows is None else [rows.index(r) for r in want]])

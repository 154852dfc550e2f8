"""Prompt-to-Prompt (Hertz et al., ICLR 2023) as its authors' code runs it: word swap,
refinement and re-weighting of cross-attention, self-attention replacement in the coarse
layers, and LocalBlend (:mod:`editing.methods.local_blend`).

    controllers = prompt_to_prompt("replace", cross_steps={"default_": 0.8, "car": 0.4},
                                   blend=["car"])
    edit(pipe, "a red car", ["a blue car"], controllers=controllers)
    edit(pipe, "a red car", ["a blue car"], method="p2p", blend=["car"])   # the same, registry

Inside the conditional half of the guidance batch, in every layer of ``layers`` and at step
``i``, each target's cross-attention probabilities become ``R · α_i + own · (1 − α_i)``, where
``α_i`` is row ``i`` of the per-token alphas of ``cross_steps``
(:func:`editing.methods.p2p_align.cross_alphas`) and ``R`` is made from the *source's* maps:

- ``replace``: ``R = base @ M`` (:func:`~editing.methods.p2p_align.replacement_mapper`);
- ``refine``: ``R = base[..., mapper] · a + own · (1 − a)`` (new tokens keep their own map);
- ``reweight``: ``R = base``;

and, when ``weights`` are given (any mode), ``R`` is multiplied by the equalizer. Cross-attention
maps are small (queries × 77), so these edits change probabilities; self-attention replacement
stays on the fused kernel (``SDPA(q_src, k_src, v_tgt)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import Tensor

from editing.methods.local_blend import LocalBlend
from editing.methods.p2p_align import (
    SwapTail,
    cross_alphas,
    equalizer,
    refinement_mapper,
    replacement_mapper,
    word_positions,
)
from editing.methods.p2p_options import DEFAULT_KEY, CrossSteps, parse_cross_steps
from editing.methods.replace import RowEditor, SelfAttentionReplace
from probe.attention.batch import BatchLayout
from probe.attention.controller import AttentionCall, HookState, Kind
from probe.attention.layer_info import LayerInfo, LayerSpec

MODES = ("replace", "refine", "reweight")


@dataclass
class TargetPlan:
    """What one target reads from the source (built by :meth:`PromptToPrompt.prepare`).

    Attributes:
        prompt: the target prompt.
        positions: word → its token positions in the target.
        length: ``L``, the encoder's context (77).
        mapper: ``replace``: ``[L, L]``, entry ``[w, n]`` = weight of source token ``w`` in
            target token ``n``.
        gather: ``refine``: ``[L]`` source position per target token (-1: new).
        keep: ``refine``: ``[L]`` 1 where the target token reads the source, 0 for new ones.
        scale: the equalizer ``[L]`` when ``weights`` are given.
        alphas: ``[N + 1, L]`` per-step, per-token alphas (set at the run's first UNet call).
    """

    prompt: str
    positions: Callable[[str], list[int]]
    length: int
    mapper: Tensor | None = None
    gather: Tensor | None = None
    keep: Tensor | None = None
    scale: Tensor | None = None
    alphas: Tensor | None = None


class PromptToPrompt(RowEditor):
    """Prompt-to-Prompt's cross-attention control (``AttentionReplace`` / ``AttentionRefine``
    / ``AttentionReweight``, with a reweight stacked on the others when ``weights`` are given).

    Args:
        mode: ``"replace"`` (word swap: prompts with the same number of words), ``"refine"``
            (aligned tokens read the source's maps, new tokens keep their own) or
            ``"reweight"`` (the source's maps times ``weights``; the target is usually the
            source prompt).
        layers: layers whose cross-attention is edited (the authors: every layer).
        cross_steps: ``cross_replace_steps``: a fraction, a ``(start, end)`` pair or a per-word
            dict ``{"default_": 1.0, "lion": 0.4}``, over ``N + 1`` alpha rows.
        weights: word → factor (the equalizer), e.g. ``{"red": 2.0}``.
        swap_tail: see :func:`~editing.methods.p2p_align.replacement_mapper`.

    Call :meth:`prepare` with the tokenizer and prompts before the run (``edit`` does).

    Raises:
        ValueError: an unknown mode, or ``reweight`` without weights.
    """

    kind: Kind = "cross"

    def __init__(
        self,
        mode: str = "replace",
        layers: LayerSpec = "all",
        cross_steps: CrossSteps = 0.8,
        weights: dict[str, float] | None = None,
        swap_tail: SwapTail = "authors",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Prompt-to-Prompt mode {mode!r}: use replace, refine or reweight")
        if mode == "reweight" and not weights:
            raise ValueError("mode='reweight' scales words: give weights, e.g. {'red': 2.0}")
        super().__init__(layers, "all")
        self.mode = mode
        self.cross_steps = parse_cross_steps(cross_steps)
        self.weights = dict(weights or {})
        self.swap_tail = swap_tail
        self.plans: list[TargetPlan] = []

    def __repr__(self) -> str:
        layers = sorted(self.layers) if self.layers is not None else self.layer_spec
        return (
            f"PromptToPrompt(mode={self.mode!r}, layers={layers}, "
            f"cross_steps={self.cross_steps!r}, weights={self.weights})"
        )

    def prepare(self, tokenizer: Any, source: str, targets: Sequence[str]) -> None:
        """Build every target's mapper (and equalizer) from the prompts.

        Raises:
            ValueError: ``replace`` with prompts of different word counts.
            KeyError: a weighted word missing from a target, or a word of a per-word
                ``cross_steps`` that no target has.
        """
        self.plans = [self._plan(tokenizer, source, target) for target in targets]
        words = self.cross_steps if isinstance(self.cross_steps, dict) else {}
        for word in words:
            if word != DEFAULT_KEY and not any(p.positions(word) for p in self.plans):
                raise KeyError(
                    f"cross_steps: word {word!r} is in no target prompt ({list(targets)!r})"
                )

    def _plan(self, tokenizer: Any, source: str, target: str) -> TargetPlan:
        length = int(tokenizer.model_max_length)
        plan = TargetPlan(target, partial(word_positions, tokenizer, target), length)
        if self.mode == "replace":
            plan.mapper = replacement_mapper(tokenizer, source, target, self.swap_tail)
        elif self.mode == "refine":
            plan.gather, plan.keep = refinement_mapper(tokenizer, source, target)
        if self.weights:
            plan.scale = equalizer(tokenizer, target, self.weights)
        return plan

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        if self.layers is None or first:
            self.bind(hooks.layers)
        if not first:
            return
        if not self.plans:
            raise RuntimeError("PromptToPrompt.prepare(tokenizer, source, targets) was not called")
        total = hooks.total_steps
        if total is None:
            raise ValueError("cross_steps needs the number of steps: set hooks.num_steps")
        edited: set[int] = set()
        for plan in self.plans:
            plan.alphas = cross_alphas(self.cross_steps, total, plan.positions, plan.length)
            edited |= {i for i in range(total) if bool(plan.alphas[i].any())}
        self.steps = frozenset(edited)

    def edits_probs(self, call: AttentionCall) -> bool:
        return True

    def edit_probs(self, call: AttentionCall, probs: Tensor) -> Tensor:
        src, tgt = self.pairs(call)
        probs = probs.clone()
        samples = _target_samples(call.layout)
        for s, row in zip(src, tgt, strict=True):
            plan = self.plans[samples.index(call.layout.rows[row].sample)]
            assert plan.alphas is not None
            if plan.alphas.shape[-1] != probs.shape[-1]:
                raise RuntimeError(
                    f"Prompt-to-Prompt's token maps cover {plan.alphas.shape[-1]} tokens but "
                    f"layer {call.layer.index} attends to {probs.shape[-1]}"
                )
            alpha = plan.alphas[call.step].to(probs)
            if not alpha.any():
                continue
            own = probs[row]
            probs[row] = self._from_source(plan, probs[s], own) * alpha + own * (1 - alpha)
        return probs

    def _from_source(self, plan: TargetPlan, base: Tensor, own: Tensor) -> Tensor:
        """``R``: what the target reads from the source's maps ``base`` ``[heads, q, L]``."""
        if plan.mapper is not None:
            out = base @ plan.mapper.to(base)
        elif plan.gather is not None and plan.keep is not None:
            keep = plan.keep.to(base)
            out = base[..., plan.gather.clamp(min=0).to(base.device)] * keep + own * (1 - keep)
        else:
            out = base
        return out * plan.scale.to(base) if plan.scale is not None else out


def _target_samples(layout: BatchLayout) -> list[int]:
    return sorted({row.sample for row in layout.rows if row.branch == "target"})


class ThresholdSelfReplace(SelfAttentionReplace):
    """Prompt-to-Prompt's self-attention replacement: the conditional targets' self-attention
    probabilities become the source's wherever the query map has at most
    ``threshold × threshold`` positions (an absolute count, at the size generated), for the
    first ``int(fraction · N)`` steps.

    Args:
        threshold: 16 in ``prompt-to-prompt_stable.ipynb``, 32 in ``null_text_w_ptp.ipynb``.
        steps: ``self_replace_steps`` (the authors: 0.4).
    """

    def __init__(self, threshold: int = 16, steps: float = 0.4) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"self_threshold={threshold!r}: use a positive integer, e.g. 16")
        super().__init__(f"positions<={threshold}x{threshold}", steps)
        self.threshold = threshold

    def bind(self, layers: list[LayerInfo]) -> None:
        limit = self.threshold**2
        self.layers = frozenset(layer.index for layer in layers if layer.positions <= limit)


def prompt_to_prompt(
    mode: str = "replace",
    cross_steps: CrossSteps = 0.8,
    self_steps: float = 0.4,
    cross_layers: LayerSpec = "all",
    self_threshold: int = 16,
    weights: dict[str, float] | None = None,
    blend: Sequence[str] | None = None,
    blend_subtract: Sequence[str] | None = None,
    blend_threshold: float = 0.3,
    blend_start: float = 0.0,
    blend_layers: LayerSpec = "res==max/4",
    swap_tail: SwapTail = "authors",
) -> list[RowEditor]:
    """Prompt-to-Prompt's controllers with the published defaults
    (``prompt-to-prompt_stable.ipynb``): cross-attention control, self-attention replacement
    and, when ``blend`` words are given, LocalBlend.

    Args:
        mode, cross_steps, weights, swap_tail: see :class:`PromptToPrompt`.
        self_steps, self_threshold: see :class:`ThresholdSelfReplace`.
        cross_layers: layers whose cross-attention is edited.
        blend, blend_subtract, blend_threshold, blend_start, blend_layers: see
            :class:`~editing.methods.local_blend.LocalBlend`.

    Raises:
        ValueError: a bad mode or value, or ``blend_subtract`` without ``blend``.

    Example:
        >>> prompt_to_prompt("refine", cross_steps=(0.0, 0.8), blend=["car"])
    """
    controllers: list[RowEditor] = [
        PromptToPrompt(mode, cross_layers, cross_steps, weights, swap_tail),
        ThresholdSelfReplace(self_threshold, self_steps),
    ]
    if blend_subtract and not blend:
        raise ValueError("blend_subtract needs blend words: the mask it cuts from comes from them")
    if blend:
        controllers.append(
            LocalBlend(blend, blend_subtract, blend_threshold, blend_start, blend_layers)
        )
    return controllers

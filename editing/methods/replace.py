"""Editing controllers: what target rows attend with, through :mod:`probe.attention.hooks`.

All of them read the batch roles (source / target, unconditional / conditional) from the
:class:`~probe.attention.batch.BatchLayout` of the call, act only in their layers and steps, and
leave
every other row alone.

- :class:`SelfAttentionReplace` (Free-Prompt-Editing): the targets' self-attention uses the
  source's probabilities, computed as ``SDPA(q_src, k_src, v_tgt)`` on the fused kernel.
- :class:`MaterialisedSelfAttentionReplace`: the same edit the way the official code does it
  (probabilities materialised and copied); kept for tests and benchmarks.
- :class:`CrossAttentionReplace`: the targets' cross-attention uses the source's maps
  (``SDPA(q_src, k_src, v_tgt)`` again: the maps follow the source, the values the target words).
- :class:`MutualSelfAttention` (MasaCtrl): target queries read the source's keys and values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from probe.attention.controller import AttentionCall, Controller, Kind
from probe.attention.layers import LayerInfo, LayerSpec, resolve_layers
from probe.attention.steps import StepSpec, resolve_steps

Rows = tuple[list[int], list[int]]  # (source rows, target rows), paired per guidance half


class RowEditor(Controller):
    """Base for editors acting on target rows in some layers, kinds and steps.

    Args:
        layers: any layer spec (resolved against the UNet when the hooks open).
        steps: a step spec, or a float fraction ``f``: the first ``int(f * steps)`` steps (the
            official FPE code's ``self_replace_steps``).
        guidance: which guidance half to edit: ``"cond"`` (as the official FPE code) or
            ``"both"``.
    """

    kind: Kind = "self"

    def __init__(
        self, layers: LayerSpec = "fpe", steps: StepSpec | float = 0.8, guidance: str = "cond"
    ) -> None:
        if guidance not in ("cond", "both"):
            raise ValueError(f"guidance={guidance!r}: use 'cond' or 'both'")
        if isinstance(steps, float) and not 0.0 <= steps <= 1.0:
            raise ValueError(f"step fraction {steps} is not between 0 and 1")
        self.layer_spec = layers
        self.step_spec = steps
        self.guidance = guidance
        self.layers: frozenset[int] | None = None
        self.steps: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        layers = sorted(self.layers) if self.layers is not None else self.layer_spec
        name = type(self).__name__
        return f"{name}(layers={layers}, steps={self.step_spec}, guidance={self.guidance!r})"

    def bind(self, layers: list[LayerInfo]) -> None:
        """Resolve the layer spec against a UNet's layer table."""
        self.layers = frozenset(resolve_layers(layers, self.layer_spec))

    def claims(self, layer: LayerInfo, kind: Kind) -> bool:
        if self.layers is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a UNet: call bind(layers)")
        return kind == self.kind and layer.index in self.layers

    def active(self, call: AttentionCall) -> bool:
        return self.claims(call.layer, call.kind) and call.step in self.steps

    def on_unet_call(self, hooks: Any, first: bool) -> None:
        if self.layers is None:
            self.bind(hooks.layers)
        if first:
            total = hooks.total_steps
            if isinstance(self.step_spec, float):
                if total is None:
                    raise ValueError(
                        "a step fraction needs the number of steps: set hooks.num_steps"
                    )
                self.steps = frozenset(range(int(self.step_spec * total)))
            else:
                self.steps = frozenset(resolve_steps(self.step_spec, total))

    def pairs(self, call: AttentionCall) -> Rows:
        """Source and target rows to pair: each target row with its half's source row."""
        halves = ["cond", "uncond"] if self.guidance == "both" else ["cond"]
        src: list[int] = []
        tgt: list[int] = []
        for half in halves:
            sources = call.layout.indices(guidance=half, branch="source")  # type: ignore[arg-type]
            targets = call.layout.indices(guidance=half, branch="target")  # type: ignore[arg-type]
            if not sources:
                continue
            src += [sources[0]] * len(targets)
            tgt += targets
        return src, tgt


class SelfAttentionReplace(RowEditor):
    """Free-Prompt-Editing: the targets' self-attention probabilities become the source's.

    ``softmax(q_tgt k_tgtᵀ) v_tgt`` → ``softmax(q_src k_srcᵀ) v_tgt``: the queries and keys of
    each target row are the source row's, so the fused kernel computes the edit without any
    N×N map.

    Example:
        >>> edit(pipe, "a red car", ["a blue car"], controller=SelfAttentionReplace("fpe", 0.8))
    """

    def edit_qkv(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        src, tgt = self.pairs(call)
        if not tgt:
            return q, k, v
        q, k = q.clone(), k.clone()
        q[tgt] = q[src]
        k[tgt] = k[src]
        return q, k, v


class MaterialisedSelfAttentionReplace(RowEditor):
    """The same edit as :class:`SelfAttentionReplace`, by copying materialised probabilities
    (what the official FPE code does). Needs ``[batch, heads, N, N]`` memory per layer."""

    def edits_probs(self, call: AttentionCall) -> bool:
        return True

    def edit_probs(self, call: AttentionCall, probs: Tensor) -> Tensor:
        src, tgt = self.pairs(call)
        probs = probs.clone()
        probs[tgt] = probs[src]
        return probs


class CrossAttentionReplace(SelfAttentionReplace):
    """The targets' cross-attention maps become the source's (same token positions).

    With prompts of the same token count this is Prompt-to-Prompt's word swap; the sweep uses
    it to show that replacing cross-attention leaks the source's words into the edit.
    """

    kind: Kind = "cross"


class MutualSelfAttention(RowEditor):
    """MasaCtrl: from ``start_step`` and ``start_layer`` on, target queries attend to the
    source's keys and values in self-attention (both guidance halves, as MasaCtrl does).

    Args:
        start_step: first step to edit (MasaCtrl: 4).
        start_layer: first layer to edit (MasaCtrl: 10 of 16).
    """

    def __init__(self, start_step: int = 4, start_layer: int = 10) -> None:
        super().__init__(layers=None, steps="all", guidance="both")
        self.start_step = start_step
        self.start_layer = start_layer

    def bind(self, layers: list[LayerInfo]) -> None:
        if not 0 <= self.start_layer < len(layers):
            raise ValueError(
                f"start_layer {self.start_layer} does not exist: "
                f"this UNet has layers 0-{len(layers) - 1}"
            )
        self.layers = frozenset(range(self.start_layer, len(layers)))

    def on_unet_call(self, hooks: Any, first: bool) -> None:
        if self.layers is None:
            self.bind(hooks.layers)
        if first:
            total = hooks.total_steps or 10**6
            self.steps = frozenset(range(self.start_step, total))

    def edit_qkv(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        src, tgt = self.pairs(call)
        if not tgt:
            return q, k, v
        k, v = k.clone(), v.clone()
        k[tgt] = k[src]
        v[tgt] = v[src]
        return q, k, v


def bind_all(controllers: Sequence[Controller], layers: list[LayerInfo]) -> None:
    """Resolve every editor's layers against a layer table (errors surface before a run)."""
    for c in controllers:
        if isinstance(c, RowEditor) and c.layers is None:
            c.bind(layers)

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

MasaCtrl's mutual self-attention is in :mod:`editing.methods.masactrl`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from probe.attention.controller import AttentionCall, Controller, HookState, Kind
from probe.attention.layer_info import LayerInfo, LayerSpec
from probe.attention.layers import resolve_layers
from probe.attention.steps import StepSpec, as_step_fraction, fraction_steps, resolve_steps

Rows = tuple[list[int], list[int]]  # (source rows, target rows), paired per guidance half


def write_rows(out: Tensor, rows: list[int], values: Tensor, queries: int | None = None) -> Tensor:
    """A copy of an attention output ``out`` ``[batch, heads, tokens, head_dim]`` with the rows
    ``rows`` (their first ``queries`` tokens, a joint block's image queries; ``None``: every
    token) set to ``values``, cast to ``out``'s dtype: how a joint editor returns its targets.

    Example:
        >>> out = write_rows(out, tgt, SDPA(q[tgt], k[src], v[tgt]), queries=n_image)
    """
    out = out.clone()
    if queries is None:
        out[rows] = values.to(out.dtype)
    else:
        out[rows, :, :queries] = values.to(out.dtype)
    return out


class RowEditor(Controller):
    """Base for editors acting on target rows in some layers, kinds and steps.

    Args:
        layers: any layer spec (resolved against the UNet when the hooks open).
        steps: a step spec (an int is a step *index*), or a float fraction ``f``: the first
            ``int(f * steps)`` steps (the official FPE code's ``self_replace_steps``; see
            :func:`probe.attention.steps.fraction_steps`). ``1.0`` is every step, ``1`` step 1.
        guidance: which guidance half to edit: ``"cond"`` (as the official FPE code) or
            ``"both"``.
        targets: which targets this editor edits, by their index among the edit's targets
            (``None``: all). Editors of disjoint targets share one source branch: a sweep edits
            the targets of several layer ranges in one batch.
    """

    kind: Kind = "self"

    def __init__(
        self, layers: LayerSpec = "fpe", steps: StepSpec | float = 0.8, guidance: str = "cond",
        targets: Sequence[int] | None = None,
    ) -> None:  # fmt: skip
        if guidance not in ("cond", "both"):
            raise ValueError(f"guidance={guidance!r}: use 'cond' or 'both'")
        if targets is not None and any(int(t) < 0 for t in targets):
            raise ValueError(f"targets={list(targets)}: indices among the targets, from 0")
        self.targets = None if targets is None else frozenset(int(t) for t in targets)
        if isinstance(steps, bool):
            raise ValueError(f"steps={steps!r} is a bool: use a fraction (0.8) or a step spec")
        if isinstance(steps, float):
            steps = as_step_fraction(steps)
        self.layer_spec = layers
        self.step_spec = steps
        self.guidance = guidance
        self.layers: frozenset[int] | None = None
        self.steps: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        layers = sorted(self.layers) if self.layers is not None else self.layer_spec
        name = type(self).__name__
        only = "" if self.targets is None else f", targets={sorted(self.targets)}"
        return f"{name}(layers={layers}, steps={self.step_spec}, guidance={self.guidance!r}{only})"

    def bind(self, layers: list[LayerInfo]) -> None:
        """Resolve the layer spec against a UNet's layer table."""
        self.layers = frozenset(resolve_layers(layers, self.layer_spec))

    def claims(self, layer: LayerInfo, kind: Kind) -> bool:
        if self.layers is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a UNet: call bind(layers)")
        return kind == self.kind and layer.index in self.layers

    def active(self, call: AttentionCall) -> bool:
        return self.claims(call.layer, call.kind) and call.step in self.steps

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        if self.layers is None or first:  # the table of this run (its generated size)
            self.bind(hooks.layers)
        if first:
            total = hooks.total_steps
            if isinstance(self.step_spec, float):
                if total is None:
                    raise ValueError(
                        "a step fraction needs the number of steps: set hooks.num_steps"
                    )
                self.steps = frozenset(fraction_steps(self.step_spec, total))
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
            if self.targets is not None:  # sample 1 is target 0
                if max(self.targets, default=-1) >= len(targets):
                    raise ValueError(
                        f"{self!r} edits targets {sorted(self.targets)}, but the edit has "
                        f"{len(targets)} targets (indices 0-{len(targets) - 1})"
                    )
                targets = [t for t in targets if call.layout.rows[t].sample - 1 in self.targets]
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
        rows = list(range(q.shape[0]))  # each row reads its own q and k, a target its source's
        for s, t in zip(src, tgt, strict=True):
            rows[t] = s
        return q[rows], k[rows], v


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

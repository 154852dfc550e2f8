"""RF-Solver-Edit's and FireFlow's value injection: the values V of chosen blocks, stored while
the image is inverted, swapped in during the first steps of the edit.

    inv = solver_invert(pipe, "car.png", "a red car")              # stores V (RF-Solver's blocks)
    edit(pipe, "a red car", ["a blue car"], method="rf-solver", inversion=inv)

As the authors' FLUX code does it (wangjiangshan0725/RF-Solver-Edit,
``FLUX_Image_Edit/src/flux/modules/layers.py`` ``SingleStreamBlock.forward`` and ``model.py``;
HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing,
``src/flux/modules/layers.py``, its default ``reuse_v=1``):

- **which values**: a single-stream block's V, ``[batch, heads, T + N, head_dim]`` for the
  *whole* joint sequence (text and image tokens; V gets no RoPE), every head, after the
  projection; double-stream blocks are never touched. Queries and keys stay the edit's own, and
  the block's attention is recomputed with the stored V: ``SDPA(q_tgt, k_tgt, V_inv)``, on the
  fused kernel (no N×N map).
- **which blocks**: RF-Solver ``info['id'] > 19``: single blocks 20–37 of FLUX.1-dev's 38;
  FireFlow's scripts ``--start_layer_index 0 --end_layer_index 37``: all 38 (its ``edit.py``
  default is 20–37). On another layout, ``"rf-solver"`` (:data:`RF_SOLVER_BLOCKS`) means the
  same fraction, the last ``round(18/38 · n)`` (at least one) of its ``n`` single-stream
  blocks: single blocks 4–7 of toy-flux's 8, block 1 of tiny-flux's 2. A model without
  single-stream blocks (SD3) gets the last ``round(18/38 · n)`` of its joint blocks: attnprobe's
  carry-over, no author ran it there.
- **which steps and model calls**: the features are keyed by ``(t, second_order, block)``;
  inversion stores under the noisier end of its step (``info['t'] = t_prev``), denoising reads
  under the start of its step (``t_curr``), so sampling step ``i`` (interval ``σ_i → σ_{i+1}``)
  reads what the inversion computed on the same interval, first-order call for first-order
  call, midpoint call for midpoint call. Only the first ``inject`` steps (RF-Solver's scripts:
  2–5 of 15–25 steps, README example ``--num_steps 25 --inject 5``… its ``edit.py`` default 20;
  FireFlow's scripts 1 of 8–15) store and inject. FireFlow's steps after the first reuse the
  previous midpoint velocity (no first-order call), so its denoising step 0's first call finds
  nothing stored and runs unchanged (the code injects only ``if v_feature_name in
  info['feature']``); here likewise.
- **which rows**: the published edit denoises one row (the target prompt, FLUX.1-dev's guidance
  as an input; no classifier-free rows). Here the conditional rows of every target get the
  stored V of the inversion's conditional row; the source row (forced onto the inversion) and
  unconditional rows (SD3, a true-CFG Flux) stay their own.

Memory: one block's V at one model call at FLUX.1-dev's 1024 px is ``(4096 + 512) tokens ×
3072`` values: 28.3 MB in bfloat16 (56.6 MB in float32). RF-Solver's defaults (18 blocks, 2
calls per step, 5 steps) keep 180 of them, 5.1 GB in bfloat16; FireFlow's (38 blocks, its one
midpoint call of 1 step) 38, 1.1 GB. They are kept on the CPU, as the authors keep them
(``v.cpu()``), in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from editing.methods.replace import write_rows
from probe.attention.controller import AttentionCall, HookState, Kind
from probe.attention.joint import JointEditor
from probe.attention.layer_info import LayerInfo, LayerSpec
from probe.attention.layers import resolve_layers

SOLVERS = ("rf-solver", "fireflow")
"""The second-order solvers: RF-Solver's midpoint step (two model calls per step) and
FireFlow's (the previous step's midpoint velocity reused: one call per step after the first)."""
RF_SOLVER_BLOCKS = "rf-solver"
"""The layer spec of the authors' blocks (see the module): single blocks 20–37 of 38."""
FIREFLOW_BLOCKS = "fireflow"
"""The layer spec of FireFlow's scripts' blocks: every single-stream block (every block of a
model without them, SD3)."""
FLUX_DEV_SINGLE = 38
FLUX_DEV_INJECTED = 18

Key = tuple[int, str, int]  # (sampling step i, "first" | "mid", layer index)


def solver_phases(solver: str, loop_step: int) -> tuple[str, ...]:
    """The model calls of iteration ``loop_step`` of a solver loop, in order: RF-Solver's
    ``("first", "mid")`` every step; FireFlow's the same at its first step and ``("mid",)``
    after it (the first-order velocity is the previous midpoint one)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: use one of {', '.join(SOLVERS)}")
    return ("mid",) if solver == "fireflow" and loop_step > 0 else ("first", "mid")


def rf_solver_blocks(layers: list[LayerInfo]) -> list[int]:
    """The layers of :data:`RF_SOLVER_BLOCKS` in a layer table (see the module)."""
    singles = [x.index for x in layers if x.place == "single"] or [x.index for x in layers]
    keep = max(1, round(FLUX_DEV_INJECTED / FLUX_DEV_SINGLE * len(singles)))
    return singles[-keep:]


def resolve_blocks(layers: list[LayerInfo], spec: LayerSpec) -> list[int]:
    """A layer spec, where :data:`RF_SOLVER_BLOCKS` and :data:`FIREFLOW_BLOCKS` are the
    authors' rules."""
    if isinstance(spec, str) and spec == RF_SOLVER_BLOCKS:
        return rf_solver_blocks(layers)
    if isinstance(spec, str) and spec == FIREFLOW_BLOCKS:
        return [x.index for x in layers if x.place == "single"] or [x.index for x in layers]
    return resolve_layers(layers, spec)


@dataclass
class StoredValues:
    """The values one inversion stored for an edit to inject.

    Attributes:
        solver: the solver that ran (the edit must call the model as it did).
        blocks: the layer indices stored.
        steps: sampling steps ``0 … steps−1`` are stored (the first ``inject_steps``).
        tensors: ``(step, "first" | "mid", layer)`` → V ``[1, heads, N + T, head_dim]``
            (image tokens first, as joint editors see it), on the CPU.
    """

    solver: str
    blocks: tuple[int, ...]
    steps: int
    tensors: dict[Key, Tensor] = field(default_factory=dict, repr=False)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class SolverCalls(JointEditor):
    """Base: which sampling step and which model call (``first`` or ``mid``) a call of a solver
    loop is, counted per loop iteration (:func:`solver_phases`).

    Args:
        solver: ``"rf-solver"`` or ``"fireflow"``.
        num_steps: the loop's steps.
        inverse: the loop is an inversion (its iteration ``j`` crosses sampling step
            ``N − 1 − j``'s interval); else a sampling loop (iteration ``i`` is step ``i``).
    """

    kind: Kind = "self"

    def __init__(self, solver: str, num_steps: int, inverse: bool) -> None:
        solver_phases(solver, 0)  # a bad name fails here
        self.solver, self.num_steps, self.inverse = solver, num_steps, inverse
        self.layers: frozenset[int] = frozenset()
        self.phase = "first"
        self._step, self._calls = -1, 0

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        step = max(getattr(getattr(hooks, "clock", None), "step", 0), 0)
        if first or step != self._step:
            self._step, self._calls = step, 0
        phases = solver_phases(self.solver, step)
        if self._calls >= len(phases):
            raise RuntimeError(
                f"model call {self._calls + 1} in step {step}: the {self.solver} solver makes "
                f"{len(phases)} there; sample with the inversion's own step rule "
                "(edit(..., inversion=inv) and reconstruct do)"
            )
        self.phase = phases[self._calls]
        self._calls += 1

    def sampling_step(self, call: AttentionCall) -> int:
        """The sampling step whose interval this call is on."""
        return self.num_steps - 1 - call.step if self.inverse else call.step

    def claims(self, layer: LayerInfo, kind: Kind) -> bool:
        return kind == "self" and layer.index in self.layers


class ValueStore(SolverCalls):
    """Keeps V of ``blocks`` for the first ``inject_steps`` sampling steps while an inversion
    runs (:func:`editing.rf_solver.solver_invert` puts it on the hooks); the output is
    unchanged. Only the calls an edit will make are kept (FireFlow: no first-order call after
    its first step)."""

    def __init__(self, blocks: LayerSpec, inject_steps: int, solver: str, num_steps: int) -> None:
        super().__init__(solver, num_steps, inverse=True)
        self.block_spec = blocks
        self.values = StoredValues(solver, (), inject_steps)

    def __repr__(self) -> str:
        return f"ValueStore(blocks={self.block_spec!r}, steps={self.values.steps})"

    def bind(self, layers: list[LayerInfo]) -> None:
        self.layers = frozenset(resolve_blocks(layers, self.block_spec))
        self.values.blocks = tuple(sorted(self.layers))

    def active(self, call: AttentionCall) -> bool:
        i = self.sampling_step(call)
        wanted = i < self.values.steps and self.phase in solver_phases(self.solver, i)
        return wanted and self.claims(call.layer, call.kind)

    def edit_joint(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor, n_image: int, out: Tensor
    ) -> Tensor:
        rows = call.layout.indices(guidance="cond")
        key = (self.sampling_step(call), self.phase, call.layer.index)
        self.values.tensors[key] = v[rows[:1]].detach().to("cpu", copy=True)
        return out


class ValueInjection(SolverCalls):
    """RF-Solver / FireFlow value injection in an edit (see the module).

    Args:
        layers: the blocks to inject (default ``None``: every block the inversion stored);
            they must have been stored.
        inject_steps: inject in the first N steps (default ``None``: as many as stored).

    :func:`editing.editor.edit` hands it the inversion (:meth:`read_inversion`) before the
    first step.

    Example:
        >>> inv = solver_invert(pipe, "car.png", "a red car", solver="fireflow")
        >>> edit(pipe, "a red car", ["a blue car"], controllers=[ValueInjection()], inversion=inv)
    """

    def __init__(self, layers: LayerSpec = None, inject_steps: int | None = None) -> None:
        super().__init__("rf-solver", 0, inverse=False)
        if inject_steps is not None and (isinstance(inject_steps, bool) or inject_steps < 0):
            raise ValueError(f"inject_steps={inject_steps!r}: use an integer >= 0")
        self.layer_spec, self.inject_steps = layers, inject_steps
        self.values: StoredValues | None = None
        self.steps = 0  # set by read_inversion

    def __repr__(self) -> str:
        return f"ValueInjection(layers={self.layer_spec!r}, inject_steps={self.inject_steps})"

    def read_inversion(self, inversion: Any) -> None:
        """Take the values an inversion stored (the seam :func:`editing.editor.edit` calls).

        Raises:
            ValueError: no inversion (a generated image), or one without stored values; more
                steps asked than stored. The message names the way out.
        """
        values = getattr(inversion, "values", None)
        if values is None:
            what = "no inversion" if inversion is None else f"a {inversion.kind} inversion"
            raise ValueError(
                f"value injection (method rf-solver) needs the values stored while inverting, "
                f"and got {what} without any: invert with editing.rf_solver.solver_invert(pipe, "
                "image, prompt, store_values='rf-solver') (attnprobe edit --inversion rf-solver) "
                "and pass inversion=inv"
            )
        steps = values.steps if self.inject_steps is None else self.inject_steps
        if steps > values.steps:
            raise ValueError(
                f"inject_steps={steps}, but the inversion stored {values.steps} steps: invert "
                f"with solver_invert(..., inject_steps={steps}) or inject fewer"
            )
        self.values, self.solver, self.num_steps = values, values.solver, inversion.num_steps
        self.steps = steps

    def bind(self, layers: list[LayerInfo]) -> None:
        if self.values is None:
            raise ValueError(
                "ValueInjection has no stored values: pass a solver_invert(..., store_values=...) "
                "inversion to edit(..., inversion=inv), or call read_inversion(inv) first"
            )
        stored = set(self.values.blocks)
        wanted = stored if self.layer_spec is None else set(resolve_blocks(layers, self.layer_spec))
        missing = sorted(wanted - stored)
        if missing:
            raise ValueError(
                f"layers {missing} were not stored by the inversion (it stored "
                f"{sorted(stored)}): invert with solver_invert(..., store_values=...) covering "
                "them, or inject a subset"
            )
        self.layers = frozenset(wanted)

    def active(self, call: AttentionCall) -> bool:
        return call.step < self.steps and self.claims(call.layer, call.kind)

    def edit_joint(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor, n_image: int, out: Tensor
    ) -> Tensor:
        assert self.values is not None
        stored = self.values.tensors.get((call.step, self.phase, call.layer.index))
        rows = call.layout.indices(guidance="cond", branch="target")
        if stored is None or not rows:  # FireFlow's step-0 first call: nothing stored
            return out
        values = stored.to(device=v.device, dtype=v.dtype).expand(len(rows), -1, -1, -1)
        _check_shape(values, v, call)
        injected = F.scaled_dot_product_attention(
            q[rows], k[rows], values, scale=q.shape[-1] ** -0.5
        )
        return write_rows(out, rows, injected)


def _check_shape(stored: Tensor, v: Tensor, call: AttentionCall) -> None:
    if stored.shape[1:] != v.shape[1:]:
        raise ValueError(
            f"layer {call.layer.index}: the stored values are {tuple(stored.shape[1:])}, this "
            f"call's {tuple(v.shape[1:])}: edit at the inversion's size and text length"
        )


def value_injection(layers: LayerSpec = None, inject_steps: int | None = None) -> list[Any]:
    """The controllers of method ``rf-solver`` (the registry's factory)."""
    return [ValueInjection(layers, inject_steps)]

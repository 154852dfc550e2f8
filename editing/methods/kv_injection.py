"""Attention injection on a DiT's joint attention: the target rows' image-token keys and values
replaced by the source's (Stable Flow), and MasaCtrl carried to SD3 and Flux by the same
mechanism.

    edit(flux_dev, "a red car", ["a blue car"], method="stable-flow")          # vital blocks
    edit(toy_flux, "a red car", ["a blue car"], method="stable-flow", layers="joint")
    edit(sd3, "a red car", ["a blue car"], method="masactrl")                   # MasaCtrl on a DiT
    KVInjection(layers="0,1,17,18", steps=1.0, guidance="cond")                 # by hand

What Stable Flow does (Avrahami et al., CVPR 2025; read from snap-research/stable-flow:
``run_stable_flow.py``, and its modified diffusers ``src/diffusers/models/attention_processor.py``
(``FluxAttnProcessor2_0``, ``FluxSingleAttnProcessor2_0``, ``JointAttnProcessor2_0``),
``models/transformers/transformer_flux.py`` and ``pipelines/flux/pipeline_flux.py``):

- one batch ``[reference, edit 1, edit 2, …]`` from the same noise; in a *vital* double-stream
  block the edits' image-stream keys and values, straight out of ``to_k``/``to_v`` (before the
  QK RMS-norm and RoPE), are overwritten by the reference's (``key[1:] = key[:1]``); in a vital
  single-stream block the image-token part of the joint sequence only (``key[1:, 512:] =
  key[:1, 512:]``: the first 512 tokens are T5's). Queries and the text tokens' keys and
  values are untouched, so *every* query of an edit row, image and text, attends over
  ``[its own text keys; the reference's image keys]`` in one softmax;
- in every step, in the vital blocks of FLUX.1-dev, counted 0-56 over all blocks: double 0, 1,
  17, 18 and single 25, 28, 53, 54, 56 (the ``vital`` layer preset,
  :data:`probe.families.flux.FLUX_DEV_VITAL_BLOCKS`; another model's set is its folder's
  ``attnprobe.json`` key ``vital_blocks``, :func:`probe.models.defaults.saved_vital_blocks`);
- real images: the reference row is put back on the stored inverted latents after every step
  (``latents[0] = inverted_latent_list[-i][0]``), which is attnprobe's ``forced`` source
  branch. Their index ``-i`` lags the step (after step i it sets the latent of inversion
  step N − i, two noise levels above the one the row has reached, and the very latent of the
  first inversion step after step 0); attnprobe forces the source onto the inverted latent of
  the level reached, as the FPE code does. Their edit rows run at guidance 3 and the reference
  at 1 (a per-row guidance input); so do attnprobe's real-image edits with this method (the
  registry's ``source_guidance_on_real_image``, :func:`editing.editor.edit`'s
  ``source_guidance_scale``).

Swapping before the norm and RoPE is the same as swapping after them, which is where
attnprobe's :class:`~probe.attention.joint.JointEditor` sees ``q, k``: the RMS norm acts on each
token's head vector alone with weights shared by every row, and RoPE turns each token by its
position, which is the same in every row (one ``img_ids`` for the batch); so an edit row's
normed, rotated key at position p is the reference's. Values see neither. (SD3's norms, where
it has them, are per token too, and it has no RoPE.) The reference test swaps before the norm,
as the authors do, and matches.

Guidance rows: FLUX.1-dev is guidance-distilled, so its batch has conditional rows only. On a
model guided by unconditional rows (SD3, a true-CFG Flux such as toy-flux) the default injects
the **conditional half only**, as the authors' own SD3 processor does (``JointAttnProcessor2_0``
in their fork: ``key[B // 2:][1:] = key[B // 2:][0:1]``, the second, conditional half of a
``[uncond; cond]`` batch; their released script runs Flux only, so that path is not exercised
there). ``guidance="both"`` injects each half from its own source row, as MasaCtrl does.

MasaCtrl on a DiT (:class:`JointMutualAttention`, what :func:`joint_mutual_attention` makes of
:class:`~editing.methods.masactrl.MutualSelfAttention`): in a UNet every target query reads the
source's keys and values in *self*-attention, and cross-attention reads the target's own
prompt. A joint block has one softmax over ``[image; text]``, so "self-attention with the
source's keys and values, text its own" is exactly the mechanism above: one mechanism, two
presets. It differs from MasaCtrl-on-SD in one way the joint softmax forces: the share of each
query's attention that goes to the text is now decided by the target queries against the
source's image keys and its own text keys together, not by a separate cross-attention softmax;
and the target's text queries read the source's image keys too (they have no UNet
counterpart; Stable Flow changes them the same way). MasaCtrl keeps its own layers and steps:
``start_layer`` onwards (default: the family's ``masactrl`` preset, 10/16 of the way through,
:meth:`probe.families.joint_dit.JointDiTFamily.preset_rule`), steps ``start_step`` … N−1, both
guidance halves. Its masks are refused on DiTs (see :func:`joint_mutual_attention`).

Cost: the fused kernel's output of the target rows is recomputed with the swapped keys and
values in the injected blocks (one more attention call over the target rows there); nothing
of size N×N is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from editing.methods.masactrl import start_layers, start_steps
from editing.methods.replace import RowEditor, write_rows
from probe.attention.controller import AttentionCall, HookState
from probe.attention.joint import JointEditor
from probe.attention.layer_info import LayerInfo, LayerSpec
from probe.attention.layers import resolve_layers
from probe.attention.steps import StepSpec
from probe.models.defaults import saved_vital_blocks


class KVInjection(RowEditor, JointEditor):
    """Stable Flow's attention injection (see the module): in the chosen layers and steps each
    target row attends with its own queries over the source row's image-token keys and values
    and its own text-token keys and values.

    Args:
        layers: a layer spec (default ``vital``: FLUX.1-dev's published vital blocks, or the
            folder's ``vital_blocks``; refused on a model with neither).
        steps: a step spec or a fraction of the steps (default 1.0: every step, as Stable Flow).
        guidance: ``"cond"`` (default: the conditional rows, as the authors' SD3 processor) or
            ``"both"`` guidance halves, each target from its own half's source.
        targets: which targets to edit (``None``: all), as :class:`RowEditor`.

    Example:
        >>> edit(flux, "a red car", ["a blue car"], controllers=[KVInjection("0,1,17,18")])
    """

    def __init__(
        self, layers: LayerSpec = "vital", steps: StepSpec | float = 1.0, guidance: str = "cond",
        targets: Sequence[int] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(layers, steps, guidance, targets)
        self.vital: list[int] | None = None  # the folder's measured vital blocks, once seen
        self.seen_model = False  # on_unet_call has read the pipeline's folder

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        if self.layers is None or first:  # the folder's measured vital set wins over the family's
            self.vital = vital_blocks_of(hooks.pipe, self.layer_spec)
            self.seen_model = True
        super().on_unet_call(hooks, first=first)

    def bind(self, layers: list[LayerInfo]) -> None:
        """Resolve the layer spec against the run's table (``vital``: the folder's set when
        :meth:`on_unet_call` found one). The hooks bind once before the run, without the
        pipeline: a ``vital`` the table alone cannot resolve waits for the first call, where
        the folder is known (and is refused there if the folder has no set either)."""
        spec = self.vital if self.vital is not None else self.layer_spec
        try:
            self.layers = frozenset(resolve_layers(layers, spec))
        except ValueError:
            if self.seen_model or not is_vital(spec):
                raise
            self.layers = None

    def edit_joint(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor, n_image: int, out: Tensor
    ) -> Tensor:
        src, tgt = self.pairs(call)
        if not tgt:
            return out
        return inject(q, k, v, n_image, out, src, tgt)


def inject(
    q: Tensor, k: Tensor, v: Tensor, n_image: int, out: Tensor, src: list[int], tgt: list[int]
) -> Tensor:
    """``out`` with the rows ``tgt`` recomputed as ``SDPA(q_t, [k_s img; k_t txt],
    [v_s img; v_t txt])``, target ``t`` paired with source ``s``.

    Args:
        q, k, v: ``[batch, heads, N + T, head_dim]``, image tokens first.
        n_image: N.
        out: the output so far ``[batch, heads, N + T, head_dim]``.
        src, tgt: row indices, paired.
    """
    keys, values = k[tgt].clone(), v[tgt].clone()
    keys[:, :, :n_image] = k[src, :, :n_image]
    values[:, :, :n_image] = v[src, :, :n_image]
    rows = F.scaled_dot_product_attention(q[tgt], keys, values, scale=q.shape[-1] ** -0.5)
    return write_rows(out, tgt, rows)


def vital_blocks_of(pipe: Any, spec: LayerSpec) -> list[int] | None:
    """The folder's measured vital blocks when ``spec`` is the ``vital`` preset and the
    pipeline's folder lists them (:func:`probe.models.defaults.saved_vital_blocks`), else
    ``None`` (the spec resolves through the family: FLUX.1-dev's published set, or a refusal
    naming the way out)."""
    if not is_vital(spec) or pipe is None:
        return None
    return saved_vital_blocks(pipe)


def is_vital(spec: LayerSpec) -> bool:
    """Whether a layer spec is the ``vital`` preset."""
    return isinstance(spec, str) and spec.strip().lower() == "vital"


class JointMutualAttention(KVInjection):
    """MasaCtrl on a DiT: :class:`KVInjection` from ``start_step`` and ``start_layer`` on, in
    both guidance halves (see the module).

    Args:
        start_step: first step injected; steps ``start_step`` … N−1 (the authors: 4).
        start_layer: first layer injected, every later one too (default ``None``: the first of
            the family's ``masactrl`` preset).
    """

    def __init__(self, start_step: int = 4, start_layer: int | None = None) -> None:
        super().__init__(layers="masactrl", steps="all", guidance="both")
        self.start_step = start_step
        self.start_layer = start_layer

    def __repr__(self) -> str:
        layer = "family default" if self.start_layer is None else self.start_layer
        first = min(self.layers) if self.layers else layer
        return f"JointMutualAttention(start_step={self.start_step}, start_layer={first})"

    def bind(self, layers: list[LayerInfo]) -> None:
        self.layers = start_layers(layers, self.start_layer, "transformer")

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        if self.layers is None or first:
            self.bind(hooks.layers)
        if first:
            self.steps = start_steps(hooks, self.start_step)


def joint_mutual_attention(controller: Any) -> JointMutualAttention:
    """MasaCtrl's :class:`~editing.methods.masactrl.MutualSelfAttention` carried to joint
    attention (same start step and start layer).

    Raises:
        NotImplementedError: a masked MasaCtrl. Its masks restrict which of the source's image
            keys a target query reads, in a self-attention softmax of its own; in a joint
            softmax the keys masked out would hand their share to the text keys, which the
            authors never defined, and the word mask reads UNet cross-attention maps of one
            resolution (16×16 at 512 px) that a DiT does not have.
    """
    if controller.mask is not None:
        raise NotImplementedError(
            f"MasaCtrl's mask ({controller.mask!r}) is not carried to joint attention (SD3, "
            "Flux): masking the source's image keys in a joint softmax would move their share to "
            "the text keys, which MasaCtrl never defines, and its word mask reads UNet "
            "cross-attention maps; drop --mask/--mask-word (plain mutual attention) or edit a "
            "UNet model"
        )
    joint = JointMutualAttention(controller.start_step, controller.start_layer)
    joint.targets = controller.targets
    return joint

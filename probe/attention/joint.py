"""The processors attnprobe installs on a DiT's joint attention (their base, and SD3's), and the
editor protocol for them.

    with AttentionHooks(sd3_pipe, [recorder]) as hooks:   # the same hooks as on a UNet
        sd3_pipe("a red car")

It follows diffusers' ``JointAttnProcessor2_0`` step by step: image tokens are projected by
``to_q/k/v``, text tokens by ``add_q/k/v_proj`` (both with their q/k norms when the model has
them), and one softmax runs over ``[image; text]`` queries and keys. Its probability matrix,
``[batch, heads, N + T, N + T]`` for N image and T text tokens, splits into four kinds:

=============  =========================  =====================================
kind           block                      meaning
=============  =========================  =====================================
``self``       ``P[:, :, :N, :N]``        image queries reading image keys
``cross``      ``P[:, :, :N, N:]``        image queries reading text keys
``text_image`` ``P[:, :, N:, :N]``        text queries reading image keys
``text_text``  ``P[:, :, N:, N:]``        text queries reading text keys
=============  =========================  =====================================

A row of ``self`` and the same row of ``cross`` together sum to 1 (one softmax); so do
``text_image`` and ``text_text``. The output always comes from the fused kernel
(``F.scaled_dot_product_attention``) unless a :class:`JointEditor` changes it; observers get the
parts they asked for, computed beside it, so recording never changes the image. Observers see
the block's own joint softmax, before any :class:`JointEditor` acts (a recorder inside an SD3
edit records the unedited maps of the target rows).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from probe.attention.controller import (
    AttentionCall,
    Controller,
    Kind,
    attention_probs,
    hand_out,
    rows_to_materialise,
)
from probe.attention.processor import HookedAttnProcessor
from probe.attention.user_processors import call_processor, is_fused

JOINT_KINDS: tuple[Kind, ...] = ("self", "cross", "text_image", "text_text")
"""The four parts of a joint map: image→image, image→text, text→image, text→text."""
IMAGE_QUERY_KINDS = ("self", "cross")
TEXT_QUERY_KINDS = ("text_image", "text_text")


class JointEditor(Controller):
    """A controller that changes the output of a joint attention call (a DiT's).

    :meth:`edit_joint` is called on every joint call where :meth:`active` holds for the call of
    kind ``self`` (image→image: the part attnprobe's DiT editors change).
    """

    def edit_joint(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor, n_image: int, out: Tensor
    ) -> Tensor:
        """The attention output ``[batch, heads, N + T, head_dim]`` with this edit applied.

        Args:
            call: the call of kind ``self``.
            q, k, v: joint queries, keys, values ``[batch, heads, N + T, head_dim]``, image
                tokens first.
            n_image: N, the number of image tokens.
            out: the output so far (the fused kernel's, or an earlier editor's).
        """
        return out


class OutputObserver(Controller):
    """A controller that reads a joint call's image tokens after attention: their queries,
    keys, values and attention output (before the output projection), without materialising
    any probabilities (ConceptAttention's concept maps, :mod:`probe.recording.concepts`).

    :meth:`observe_output` is called on every joint call where :meth:`active` holds for the
    call of kind ``self``, after the joint editors, with the output the block goes on with.
    """

    def observe_output(
        self, call: AttentionCall, attn: Any, q: Tensor, k: Tensor, v: Tensor, out: Tensor
    ) -> None:
        """Look at the image tokens of one joint call.

        Args:
            call: the call of kind ``self``.
            attn: the block's attention module.
            q, k, v: image-token queries, keys, values ``[batch, heads, N, head_dim]``, after
                the q/k norms and (Flux) the rotary embedding, as the softmax used them.
            out: the image tokens' attention output ``[batch, heads, N, head_dim]``.
        """


def hand_outputs(
    calls: dict[str, AttentionCall], active: dict[Controller, list[Kind]], attn: Any,
    q: Tensor, k: Tensor, v: Tensor, out: Tensor,
) -> None:  # fmt: skip
    """Give every active :class:`OutputObserver` the image tokens (``[batch, heads, N, d]``)."""
    for c, kinds in active.items():
        if isinstance(c, OutputObserver) and "self" in kinds:
            c.observe_output(calls["self"], attn, q, k, v, out)


class HookedJointProcessor(HookedAttnProcessor):
    """The base of the processors of joint attention (SD3's, Flux's): one DiT block, all four
    kinds. Subclasses say how many image and text tokens a call has (:meth:`token_counts`) and
    how the block attends (:meth:`attend`); the preamble is here, once: the calls of the four
    kinds, the active controllers, the fallback when none is, the refusal of masks."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer.index})"

    def __call__(  # type: ignore[override]
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        counts = self.token_counts(hidden_states, encoder_hidden_states)
        active: dict[Controller, list[Kind]] = {}
        if counts is not None:
            calls = joint_calls(self, *counts)
            found = {
                c: [k for k in JOINT_KINDS if c.active(calls[k])] for c in self.hooks.controllers
            }
            active = {c: kinds for c, kinds in found.items() if kinds}
        if not active:
            return call_processor(
                self.fallback, attn, hidden_states, encoder_hidden_states, attention_mask,
                *args, **kwargs,
            )  # fmt: skip
        refuse_mask(attention_mask, self.layer.index)
        return self.attend(
            attn, hidden_states, encoder_hidden_states, calls, active, *args, **kwargs
        )

    def token_counts(self, hidden_states: Tensor, context: Tensor | None) -> tuple[int, int] | None:
        """(image tokens, text tokens) of this call, or None when it is not a joint call."""
        raise NotImplementedError

    def attend(
        self, attn: Any, hidden_states: Tensor, context: Tensor | None,
        calls: dict[str, AttentionCall], active: dict[Controller, list[Kind]], *args: Any,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        """The block's attention with the active controllers (observers and joint editors)."""
        raise NotImplementedError


class HookedSD3AttnProcessor(HookedJointProcessor):
    """SD3's joint attention (diffusers' ``JointAttnProcessor2_0``): image tokens first."""

    def token_counts(self, hidden_states: Tensor, context: Tensor | None) -> tuple[int, int] | None:
        if context is None:  # not a joint call (no text tokens): nothing to split
            return None
        return int(hidden_states.shape[1]), int(context.shape[1])

    def attend(
        self, attn: Any, hidden_states: Tensor, context: Tensor | None,
        calls: dict[str, AttentionCall], active: dict[Controller, list[Kind]], *args: Any,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        assert context is not None  # token_counts returned None without text tokens
        batch, n_image = hidden_states.shape[0], hidden_states.shape[1]
        q, k, v = joint_qkv(attn, hidden_states, context, is_fused(self.fallback))
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        observe_parts(calls, active, q, k, slice(0, n_image), slice(n_image, None), attn.scale)
        for c, kinds in active.items():
            if isinstance(c, JointEditor) and "self" in kinds:
                out = c.edit_joint(calls["self"], q, k, v, n_image, out)
        image_part = slice(0, n_image)
        hand_outputs(calls, active, attn, *(x[:, :, image_part] for x in (q, k, v, out)))
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * q.shape[-1]).to(q.dtype)
        image, text = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        image = attn.to_out[1](attn.to_out[0](image))
        return image, text


def refuse_mask(mask: Tensor | None, layer: int) -> None:
    """Controllers on a joint call with an attention mask (which SD3's and Flux's own blocks
    never pass) are refused rather than run on maps that would ignore it."""
    if mask is not None:
        raise NotImplementedError(
            f"layer {layer} got an attention_mask (from joint_attention_kwargs): attnprobe's joint "
            "processors do not apply masks; call the transformer without one"
        )


def joint_calls(proc: HookedAttnProcessor, n_image: int, n_text: int) -> dict[str, AttentionCall]:
    """The call of each of the four kinds of a joint attention call under way on ``proc``'s
    layer; ``query_hw`` is the image grid for all four."""
    base = proc.hooks.make_call(proc.layer, "self", n_image, n_image)
    keys = {"self": n_image, "cross": n_text, "text_image": n_image, "text_text": n_text}
    return {kind: replace(base, kind=kind, keys=keys[kind]) for kind in JOINT_KINDS}


def observe_parts(
    calls: dict[str, AttentionCall],
    active: dict[Controller, list[Kind]],
    q: Tensor,
    k: Tensor,
    image: slice,
    text: slice,
    scale: float,
) -> None:
    """Hand every observer the parts of the joint map it needs.

    Args:
        calls, active: the calls per kind and the active controllers with their kinds.
        q, k: joint queries and keys ``[batch, heads, N + T, head_dim]``.
        image, text: where the image and the text tokens are in the joint sequence (SD3: image
            first; Flux: text first).
        scale: the attention scale.

    Image and text query rows are each materialised at most once (``[batch, heads, N, N + T]``,
    ``[batch, heads, T, N + T]``), in float32, and only for the batch rows the observers read
    (:meth:`Controller.observed_rows`).
    """
    wanted = [(c, kind) for c, kinds in active.items() for kind in kinds]
    wanted = [(c, kind) for c, kind in wanted if c.needs_probs(calls[kind])]
    if not wanted:
        return
    asked = [c.observed_rows(calls[kind]) for c, kind in wanted]
    batch = rows_to_materialise(asked)
    if batch == []:
        return
    if batch is not None:
        q, k = q[batch], k[batch]
    parts: dict[str, Tensor] = {}
    if any(kind in IMAGE_QUERY_KINDS for _, kind in wanted):
        parts["image"] = attention_probs(q[:, :, image], k, scale)
    if any(kind in TEXT_QUERY_KINDS for _, kind in wanted):
        parts["text"] = attention_probs(q[:, :, text], k, scale)
    probs = [
        parts["image" if kind in IMAGE_QUERY_KINDS else "text"][
            ..., image if kind in ("self", "text_image") else text
        ]
        for _, kind in wanted
    ]
    observers = [c for c, _ in wanted]
    hand_out(observers, asked, [calls[kind] for _, kind in wanted], probs, batch)


def joint_qkv(
    attn: Any, hidden_states: Tensor, context: Tensor, fused: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Joint queries, keys and values ``[batch, heads, N + T, head_dim]`` (image tokens first),
    as diffusers' ``JointAttnProcessor2_0`` computes them, or with ``fused`` as its
    ``FusedJointAttnProcessor2_0`` does (``to_qkv``, ``to_added_qkv``)."""
    batch = hidden_states.shape[0]

    def heads(x: Tensor) -> Tensor:
        return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

    if fused:  # diffusers' fused processor applies no q/k norms: neither do we, to match it
        parts = [torch.cat([x, c], dim=1) for x, c in zip(
            attn.to_qkv(hidden_states).chunk(3, dim=-1),
            attn.to_added_qkv(context).chunk(3, dim=-1), strict=True,
        )]  # fmt: skip
        q, k, v = (heads(x) for x in parts)
        return q, k, v

    q, k, v = (heads(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    cq, ck, cv = (heads(f(context)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if attn.norm_added_q is not None:
        cq = attn.norm_added_q(cq)
    if attn.norm_added_k is not None:
        ck = attn.norm_added_k(ck)
    return torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)

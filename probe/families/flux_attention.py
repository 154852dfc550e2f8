"""The processor attnprobe installs on Flux's attention: double- and single-stream blocks.

    with AttentionHooks(flux_pipe, [recorder]) as hooks:
        flux_pipe("a red car")

It follows diffusers' ``FluxAttnProcessor`` step by step: projections, the per-head RMS norms
(image: ``norm_q/k``; text, in double-stream blocks: ``norm_added_q/k``), the joint sequence
**text first** (``[text; image]``), the rotary embedding on queries and keys, then one softmax
over all of it. A double-stream block (``transformer_blocks.i``) projects the text tokens with
their own weights; a single-stream block (``single_transformer_blocks.j``) gets the text and the
image tokens already concatenated as one sequence, and the number of text tokens is the one the
transformer was called with (``hooks.encoder_hidden_states``). Either way the joint map splits
into the same four kinds as SD3's (:mod:`probe.attention.joint`, whose processor base this
is built on): ``self`` (image→image),
``cross`` (image→text), ``text_image`` and ``text_text``. The output comes from the same
attention call diffusers makes (``dispatch_attention_fn``) unless a
:class:`~probe.attention.joint.JointEditor` changes it; editors see the joint sequence reordered
image first, as on SD3, and their output is put back in Flux's order.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from torch import Tensor

from probe.attention.controller import AttentionCall, Controller, Kind
from probe.attention.joint import (
    HookedJointProcessor,
    JointEditor,
    hand_outputs,
    observe_parts,
)
from probe.attention.user_processors import flux_ip_attention


class HookedFluxAttnProcessor(HookedJointProcessor):
    """Processor for one Flux attention module (a double- or single-stream block)."""

    def token_counts(self, hidden_states: Tensor, context: Tensor | None) -> tuple[int, int]:
        n_text = self._text_tokens(context)
        n_all = hidden_states.shape[1] + (0 if context is None else n_text)
        return n_all - n_text, n_text

    def __call__(  # type: ignore[override]
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_rotary_emb: Any = None,
        ip_hidden_states: Any = None,
        ip_adapter_masks: Any = None,
        **kwargs: Any,
    ) -> Any:
        # FluxAttention passes a processor only the keyword arguments its signature names:
        # the IP-Adapter's are named here so that a FluxIPAdapterAttnProcessor underneath gets them
        return super().__call__(
            attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
            ip_hidden_states=ip_hidden_states, ip_adapter_masks=ip_adapter_masks, **kwargs,
        )  # fmt: skip

    def attend(
        self, attn: Any, hidden_states: Tensor, context: Tensor | None,
        calls: dict[str, AttentionCall], active: dict[Controller, list[Kind]], *args: Any,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        rotary = args[0] if args else kwargs.get("image_rotary_emb")
        n_text = calls["cross"].keys
        q, k, v, image_query = flux_qkv(attn, hidden_states, context, rotary)
        backend = getattr(self.fallback, "_attention_backend", None)
        parallel = getattr(self.fallback, "_parallel_config", None)
        out = dispatch_attention_fn(
            q, k, v, attn_mask=None, backend=backend, parallel_config=parallel
        )  # [batch, tokens, heads, dim]
        q, k, v, out = (x.transpose(1, 2) for x in (q, k, v, out))  # [batch, heads, tokens, dim]
        text, image = slice(0, n_text), slice(n_text, None)
        observe_parts(calls, active, q, k, image, text, q.shape[-1] ** -0.5)
        out = _edit(calls["self"], active, q, k, v, out, n_text)
        hand_outputs(calls, active, attn, *(x[:, :, image] for x in (q, k, v, out)))
        out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)
        if context is None:
            return out
        text_out, sample = out[:, :n_text], out[:, n_text:]
        sample = attn.to_out[1](attn.to_out[0](sample.contiguous()))
        text_out = attn.to_add_out(text_out.contiguous())
        if type(self.fallback).__name__ != "FluxIPAdapterAttnProcessor":
            return sample, text_out
        ip_states = kwargs.get("ip_hidden_states")  # the image prompt's attention, kept
        ip = flux_ip_attention(self.fallback, attn, image_query, ip_states, sample)
        return sample, text_out, ip

    def _text_tokens(self, encoder_hidden_states: Tensor | None) -> int:
        if encoder_hidden_states is not None:
            return int(encoder_hidden_states.shape[1])
        context = self.hooks.encoder_hidden_states  # single-stream: the transformer's text input
        if context is None:
            raise RuntimeError(
                f"layer {self.layer.index} is a single-stream block called without the "
                "transformer's encoder_hidden_states: call the transformer as FluxPipeline does"
            )
        return int(context.shape[1])


def _edit(
    call: AttentionCall,
    active: dict[Controller, list[Kind]],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    n_text: int,
) -> Tensor:
    """Apply the joint editors on the sequence reordered image first, and reorder back."""
    editors = [c for c, kinds in active.items() if isinstance(c, JointEditor) and "self" in kinds]
    if not editors:
        return out
    n_image = q.shape[2] - n_text

    def image_first(x: Tensor) -> Tensor:
        return torch.cat([x[:, :, n_text:], x[:, :, :n_text]], dim=2)

    qi, ki, vi, oi = (image_first(x) for x in (q, k, v, out))
    for c in editors:
        oi = c.edit_joint(call, qi, ki, vi, n_image, oi)
    return torch.cat([oi[:, :, n_image:], oi[:, :, :n_image]], dim=2)


def flux_qkv(
    attn: Any, hidden_states: Tensor, context: Tensor | None, rotary: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Joint queries, keys and values ``[batch, tokens, heads, head_dim]``, text first, with
    the rotary embedding applied, as diffusers' ``FluxAttnProcessor`` computes them (from the
    fused ``to_qkv`` / ``to_added_qkv`` when the projections are fused); and the image queries
    after their norm, before the rotary embedding (what an IP-Adapter attends with)."""

    def heads(x: Tensor) -> Tensor:
        return x.unflatten(-1, (-1, attn.head_dim))

    joint = context is not None and attn.added_kv_proj_dim is not None
    if getattr(attn, "fused_projections", False):
        q, k, v = (heads(x) for x in attn.to_qkv(hidden_states).chunk(3, dim=-1))
        if joint:
            cq, ck, cv = (heads(x) for x in attn.to_added_qkv(context).chunk(3, dim=-1))
    else:
        q, k, v = (heads(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        if joint:
            added = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            cq, ck, cv = (heads(f(context)) for f in added)
    q, k = attn.norm_q(q), attn.norm_k(k)
    image_query = q
    if joint:
        cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([cq, q], dim=1), torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
    if rotary is not None:
        q = apply_rotary_emb(q, rotary, sequence_dim=1)
        k = apply_rotary_emb(k, rotary, sequence_dim=1)
    return q, k, v, image_query

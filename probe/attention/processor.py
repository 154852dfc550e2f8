"""The attention processor attnprobe installs: plain attention plus controller calls.

It follows diffusers' ``AttnProcessor2_0`` step by step (norms, projections, residual), and stays
on ``F.scaled_dot_product_attention`` unless a controller needs the probabilities. When
probabilities are only observed, the output still comes from the fused kernel, so recording never
changes what the model computes, and only the rows the observers read are materialised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from probe.attention.controller import (
    AttentionCall,
    Controller,
    HookState,
    Kind,
    attention_probs,
    hand_out,
    rows_to_materialise,
)
from probe.attention.layer_info import LayerInfo
from probe.attention.user_processors import (
    add_ip_attention,
    call_processor,
    is_fused,
    kind_of,
    split_ip_context,
)


class HookedAttnProcessor:
    """Processor for one attention module (one layer, one kind), on top of the processor it
    replaces (``fallback``: the user's, :mod:`probe.attention.user_processors`)."""

    def __init__(self, hooks: HookState, layer: LayerInfo, kind: Kind, fallback: Any) -> None:
        self.hooks = hooks
        self.layer = layer
        self.kind = kind
        self.fallback = fallback
        self.user = kind_of(fallback)

    def __repr__(self) -> str:
        return f"HookedAttnProcessor(layer={self.layer.index}, kind={self.kind!r})"

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Any = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        ip_adapter_masks: Any = None,
        **kwargs: Any,
    ) -> Tensor:
        # diffusers passes a processor only the keyword arguments its signature names:
        # ip_adapter_masks is named so that an IP-Adapter underneath gets them
        context, ip_states = split_ip_context(self.fallback, encoder_hidden_states)
        queries = hidden_states.shape[-2] * hidden_states.shape[-1]
        if hidden_states.ndim == 3:
            queries = hidden_states.shape[1]
        keys = queries if context is None else context.shape[1]
        call = self.hooks.make_call(self.layer, self.kind, queries, keys)
        active = [c for c in self.hooks.controllers if c.active(call)]

        def user() -> Tensor:
            return call_processor(
                self.fallback, attn, hidden_states, encoder_hidden_states, attention_mask, *args,
                temb=temb, ip_adapter_masks=ip_adapter_masks, **kwargs,
            )  # fmt: skip

        if not active:
            return user()
        return self._attend(
            attn, hidden_states, context, attention_mask, temb, call, active,
            user, (ip_states, ip_adapter_masks),
        )  # fmt: skip

    def _attend(
        self,
        attn: Any,
        hidden_states: Tensor,
        context: Tensor | None,
        attention_mask: Tensor | None,
        temb: Tensor | None,
        call: AttentionCall,
        active: list[Controller],
        user: Callable[[], Tensor],
        ip: tuple[Any, Any],
    ) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, key_len, _ = (hidden_states if context is None else context).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = project_qkv(attn, hidden_states, context, is_fused(self.fallback))
        head_dim = key.shape[-1] // attn.heads
        q, k, v = (
            x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value)
        )
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        beside = self.user == "beside"
        out = self._attention(call, active, q, k, v, attention_mask, attn.scale, beside)
        if out is None:  # observed only: the user's own kernel computes the output
            return user()

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        if ip[0] is not None:  # the image prompt's attention, as the IP-Adapter adds it
            out = add_ip_attention(self.fallback, attn, out, q, *ip)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    @staticmethod
    def _attention(
        call: AttentionCall,
        active: list[Controller],
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        scale: float,
        beside: bool = False,
    ) -> Tensor | None:
        """Attention output ``[batch, heads, queries, head_dim]`` with every controller applied;
        with ``beside``, ``None`` when no controller changed anything (the observers have seen
        the probabilities; the caller's own kernel computes the output)."""
        unedited = (q, k, v, mask)
        for c in active:
            q, k, v = c.edit_qkv(call, q, k, v)
        for c in active:
            bias = c.score_bias(call, q, k)
            if bias is not None:
                bias = bias.to(q.dtype)
                mask = bias if mask is None else mask + bias
        editors = [c for c in active if c.edits_probs(call)]
        observers = [c for c in active if c.needs_probs(call)]
        asked = [c.observed_rows(call) for c in observers]
        calls = [call] * len(observers)
        if editors:
            probs = attention_probs(q, k, scale, mask)
            for c in editors:
                probs = c.edit_probs(call, probs)
            hand_out(observers, asked, calls, [probs] * len(observers), None)
            return (probs @ v.float()).to(v.dtype)
        rows = rows_to_materialise(asked)
        if rows is None:
            probs = attention_probs(q, k, scale, mask)
            hand_out(observers, asked, calls, [probs] * len(observers), None)
        elif rows:  # only these rows: their queries, keys and (per-row) mask
            part = mask if mask is None or mask.ndim < 4 or mask.shape[0] == 1 else mask[rows]
            probs = attention_probs(q[rows], k[rows], scale, part)
            hand_out(observers, asked, calls, [probs] * len(observers), rows)
        if beside and all(a is b for a, b in zip((q, k, v, mask), unedited, strict=True)):
            return None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def project_qkv(
    attn: Any, hidden_states: Tensor, context: Tensor | None, fused: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values ``[batch, tokens, heads * head_dim]`` as the user's processor
    projects them: ``to_q/k/v``, or with ``fused`` the fused weights ``FusedAttnProcessor2_0``
    reads (``to_qkv`` for self-attention, ``to_q`` and ``to_kv`` for cross-attention)."""
    if context is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    if fused and context is None:
        qkv = attn.to_qkv(hidden_states)
        query, key, value = torch.split(qkv, qkv.shape[-1] // 3, dim=-1)
        return query, key, value
    query = attn.to_q(hidden_states)
    source = hidden_states if context is None else context
    if fused:
        kv = attn.to_kv(source)
        key, value = torch.split(kv, kv.shape[-1] // 2, dim=-1)
        return query, key, value
    return query, attn.to_k(source), attn.to_v(source)

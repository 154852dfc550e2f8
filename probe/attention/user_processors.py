"""The processors users install, and how attnprobe works on top of each.

    kind_of(FusedAttnProcessor2_0())          # "own": our processor computes what it computes
    kind_of(SlicedAttnProcessor(2))           # "beside": its output, our maps beside it
    kind_of(PAGIdentitySelfAttnProcessor2_0())  # None: refused on layers a controller claims

A pipeline as a user configures it runs processors diffusers installs for them:
``fuse_qkv_projections()`` (``FusedAttnProcessor2_0`` on a UNet, ``FusedJointAttnProcessor2_0``
on SD3; Flux keeps ``FluxAttnProcessor``, which reads the fused weights itself), an IP-Adapter
(``IPAdapterAttnProcessor2_0`` on a UNet's cross-attention, ``FluxIPAdapterAttnProcessor`` on
Flux's double-stream blocks), ``enable_attention_slicing()`` (``SlicedAttnProcessor``) or
``set_default_attn_processor()`` (``AttnProcessor``). attnprobe's processors sort them in two:

- **own**: attnprobe's processor computes the very same operations (the fused projections where
  the user fused them, the IP-Adapter's image-prompt attention with its scale and masks added
  as the user's processor adds it), so recording gives the user's output bit for bit and an
  editor acts on the text attention while the image prompt's attention is kept.
- **beside**: the same attention computed by another kernel (``bmm`` and softmax, slices,
  xFormers). While controllers only observe, the user's own processor computes the output and
  the probabilities are computed beside it from the same queries and keys; an editor's output
  comes from SDPA (the edit changes the output anyway).

Anything else (perturbed-attention guidance, custom diffusion, SD3's IP-Adapter, a processor of
your own) changes what attention computes in a way attnprobe cannot observe without running its
own attention instead: it is refused on a layer a controller claims (``replace_foreign=True``
replaces it there).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

UserKind = Literal["own", "beside"]

OWN_PROCESSORS = {
    "AttnProcessor2_0",
    "FusedAttnProcessor2_0",
    "IPAdapterAttnProcessor2_0",
    "JointAttnProcessor2_0",  # SD3's joint attention
    "FusedJointAttnProcessor2_0",
    "FluxAttnProcessor",  # Flux's double- and single-stream attention, fused or not
    "FluxIPAdapterAttnProcessor",
}
"""Processors whose every operation attnprobe's processors repeat (same kernel, same order)."""

BESIDE_PROCESSORS = {
    "AttnProcessor",
    "SlicedAttnProcessor",
    "XFormersAttnProcessor",
    "AttnProcessorNPU",
    "IPAdapterAttnProcessor",
    "IPAdapterXFormersAttnProcessor",
}
"""Processors of the same attention on another kernel: observed beside the user's own call."""

IP_PROCESSORS = {
    "IPAdapterAttnProcessor",
    "IPAdapterAttnProcessor2_0",
    "IPAdapterXFormersAttnProcessor",
}
"""A UNet's IP-Adapter processors: text cross-attention plus image-prompt attention."""

REFUSED_WHY = (
    "attnprobe repeats or observes only processors whose attention it knows (plain, sliced, "
    "fused QKV, IP-Adapter; docs/hooks.md), and running its own attention instead would change "
    "what this one computes"
)


def kind_of(processor: Any) -> UserKind | None:
    """``"own"``, ``"beside"`` or ``None`` (unknown: refused where a controller acts)."""
    name = type(processor).__name__
    if name in OWN_PROCESSORS:
        return "own"
    if name in BESIDE_PROCESSORS:
        return "beside"
    return None


def is_fused(processor: Any) -> bool:
    """Whether ``processor`` reads a UNet's or SD3's fused ``to_qkv`` / ``to_kv`` weights."""
    return type(processor).__name__ in ("FusedAttnProcessor2_0", "FusedJointAttnProcessor2_0")


def is_ip_adapter(processor: Any) -> bool:
    """Whether ``processor`` is a UNet IP-Adapter processor."""
    return type(processor).__name__ in IP_PROCESSORS


def call_processor(
    processor: Any,
    attn: Any,
    hidden_states: Tensor,
    encoder_hidden_states: Any,
    attention_mask: Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Call the user's processor as diffusers' ``Attention.forward`` would: with only the
    keyword arguments its ``__call__`` names (diffusers drops the others, e.g. the
    ``ip_adapter_masks`` a plain processor does not take), ``None`` ones left out."""
    names = _parameters(type(processor))
    passed = {k: v for k, v in kwargs.items() if k in names and v is not None}
    return processor(
        attn, hidden_states, encoder_hidden_states, attention_mask, *args, **passed
    )  # fmt: skip


def _parameters(cls: type) -> frozenset[str]:
    cached = _PARAMETERS.get(cls)
    if cached is None:
        cached = frozenset(inspect.signature(cls.__call__).parameters)
        _PARAMETERS[cls] = cached
    return cached


_PARAMETERS: dict[type, frozenset[str]] = {}


def split_ip_context(processor: Any, context: Any) -> tuple[Tensor | None, Any]:
    """(text context, image-prompt states or ``None``) of a cross-attention call, as the
    UNet's IP-Adapter processor separates them (a tuple; or, deprecated, the image tokens
    appended to the text's)."""
    if isinstance(context, tuple):
        return context[0], context[1]
    if context is not None and is_ip_adapter(processor):
        end = context.shape[1] - processor.num_tokens[0]
        return context[:, :end], [context[:, end:]]
    return context, None


def add_ip_attention(
    processor: Any, attn: Any, hidden: Tensor, query: Tensor, ip_states: Any, masks: Any
) -> Tensor:
    """``hidden`` plus the image-prompt attention of a UNet IP-Adapter, as
    ``IPAdapterAttnProcessor2_0`` adds it: each adapter's scale, images and masks.

    Args:
        processor: the user's IP-Adapter processor (``to_k_ip``, ``to_v_ip``, ``scale``).
        hidden: the text attention ``[batch, queries, heads * head_dim]`` before ``to_out``.
        query: the queries ``[batch, heads, queries, head_dim]`` (before any edit).
        ip_states: per adapter, the projected image embeddings.
        masks: ``ip_adapter_masks`` from ``cross_attention_kwargs``, or ``None``.
    """
    from diffusers.image_processor import IPAdapterMaskProcessor

    batch, heads = hidden.shape[0], attn.heads
    head_dim = query.shape[-1]
    if masks is not None and not isinstance(masks, list):
        masks = list(masks.unsqueeze(1))
    masks = masks if masks is not None else [None] * len(processor.scale)

    def attend(states: Tensor, to_k: Any, to_v: Any) -> Tensor:
        k, v = (f(states).view(batch, -1, heads, head_dim).transpose(1, 2) for f in (to_k, to_v))
        out = F.scaled_dot_product_attention(query, k, v, attn_mask=None, dropout_p=0.0)
        return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)

    parts = zip(
        ip_states, processor.scale, processor.to_k_ip, processor.to_v_ip, masks, strict=False
    )
    for states, scale, to_k, to_v, mask in parts:
        if all(s == 0 for s in (scale if isinstance(scale, list) else [scale])):
            continue
        if mask is None:
            hidden = hidden + scale * attend(states, to_k, to_v)
            continue
        scales = scale if isinstance(scale, list) else [scale] * mask.shape[1]
        for i in range(mask.shape[1]):
            out = attend(states[:, i, :, :], to_k, to_v)
            down = IPAdapterMaskProcessor.downsample(mask[:, i], batch, out.shape[1], out.shape[2])
            hidden = hidden + scales[i] * (out * down.to(dtype=query.dtype, device=query.device))
    return hidden


def flux_ip_attention(
    processor: Any, attn: Any, image_query: Tensor, ip_states: Any, like: Tensor
) -> Tensor:
    """The image-prompt attention ``FluxIPAdapterAttnProcessor`` returns as its third output
    (added by the block after its feed-forward): ``[batch, image tokens, dim]``.

    Args:
        image_query: the image queries after ``norm_q``, before the rotary embedding
            ``[batch, tokens, heads, head_dim]``.
        like: the block's image attention output (its shape and dtype).
    """
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    batch = image_query.shape[0]
    backend = getattr(processor, "_attention_backend", None)
    parallel = getattr(processor, "_parallel_config", None)
    out = torch.zeros_like(like)
    for states, scale, to_k, to_v in zip(
        ip_states, processor.scale, processor.to_k_ip, processor.to_v_ip, strict=False
    ):
        k, v = (f(states).view(batch, -1, attn.heads, attn.head_dim) for f in (to_k, to_v))
        ip = dispatch_attention_fn(
            image_query, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
            backend=backend, parallel_config=parallel,
        )  # fmt: skip
        out += scale * ip.reshape(batch, -1, attn.heads * attn.head_dim).to(image_query.dtype)
    return out

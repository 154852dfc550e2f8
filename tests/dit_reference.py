"""An independent reference of diffusers' SD3 and Flux sampling with its own attention
processors, for the reference tests of the DiT edits (tests/test_reference_dit_fpe.py,
tests/test_kv_injection.py); written from diffusers' processors and pipelines, not from
attnprobe.

The processors install on every joint attention of the transformer (Flux: the double-stream
``transformer_blocks.i.attn``, text projected with the ``add_*`` weights, and the single-stream
``single_transformer_blocks.j.attn``, both over ``[text; image]`` with QK RMS-norms and RoPE, as
``FluxAttnProcessor``; SD3: ``[image; text]``, as ``JointAttnProcessor2_0``). Each hands a
:class:`RefAttention` the raw image-stream keys and values straight out of ``to_k``/``to_v``
(:meth:`RefAttention.before_norm`, where Stable Flow swaps them) and then the joint ``q, k, v``
(:meth:`RefAttention.attend`, which writes ``softmax(q kᵀ / √d) v`` out). The loops are
FluxPipeline's and StableDiffusion3Pipeline's flow-match Euler (sigmas, shift, packing, ids and
timestep scaling written out here), from the noise ``edit`` draws (one ``randn(1, C, h, w)`` for
the seed, repeated per sample), on ``[uncond rows; cond rows]`` under classifier-free guidance.
Layer ``i`` is attnprobe's numbering: Flux's double blocks, then its single blocks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from torch import Tensor

SEED, SIZE = 3, 128


class RefAttention:
    """Plain joint attention; subclasses edit it. ``step`` is set by the loop, ``layer`` by the
    processor before each call."""

    def __init__(self) -> None:
        self.step = 0
        self.layer = 0

    def before_norm(self, k_image: Tensor, v_image: Tensor) -> tuple[Tensor, Tensor]:
        """The image tokens' keys and values ``[rows, tokens, heads · dim]`` before the QK norm
        and RoPE (unchanged here)."""
        return k_image, v_image

    def attend(self, q: Tensor, k: Tensor, v: Tensor, image: slice, text: slice) -> Tensor:
        """``q, k, v`` ``[rows, heads, tokens, dim]``; ``image``/``text``: where those tokens
        are in the joint sequence."""
        return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v


def without_guidance_embedding(flux):
    """tiny-flux without a guidance embedding (as ``true_cfg_flux`` in tests/test_flux.py):
    guided by unconditional rows (true CFG)."""
    config = {**flux.transformer.config, "guidance_embeds": False}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel.from_config(config)
    pipe = FluxPipeline(**{**flux.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def split_heads(x: Tensor, head_dim: int) -> Tensor:
    """``[rows, tokens, heads · dim]`` → ``[rows, heads, tokens, dim]``."""
    return x.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def rotate(x: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
    """Flux's RoPE on ``[rows, heads, tokens, dim]``: channel pairs (2i, 2i+1) turned by the
    angles whose ``cos``/``sin`` ``[tokens, dim]`` the transformer passes in."""
    cos, sin = rotary
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + turned * sin


class RefFluxProcessor:
    """A double-stream block (``encoder_hidden_states`` given) or a single-stream one (text and
    image already one sequence, ``n_text`` text tokens first)."""

    def __init__(self, ref: RefAttention, n_text: int, layer: int) -> None:
        self.ref, self.n_text, self.layer = ref, n_text, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):  # fmt: skip
        assert attention_mask is None and not attn.fused_projections
        self.ref.layer = self.layer
        d, n = attn.head_dim, self.n_text
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        image = slice(None) if encoder_hidden_states is not None else slice(n, None)
        k, v = k.clone(), v.clone()
        k[:, image], v[:, image] = self.ref.before_norm(k[:, image], v[:, image])
        q, k, v = (split_heads(x, d) for x in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:
            added = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            tq, tk, tv = (split_heads(f(encoder_hidden_states), d) for f in added)
            tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
            q, k, v = torch.cat([tq, q], 2), torch.cat([tk, k], 2), torch.cat([tv, v], 2)
        q, k = rotate(q, image_rotary_emb), rotate(k, image_rotary_emb)
        out = self.ref.attend(q, k, v, image=slice(n, None), text=slice(0, n))
        out = out.transpose(1, 2).flatten(2)
        if encoder_hidden_states is None:
            return out
        return attn.to_out[1](attn.to_out[0](out[:, n:])), attn.to_add_out(out[:, :n])


class RefSD3Processor:
    """An SD3 joint block: ``[image; text]``, the text output dropped by a context-pre-only
    block."""

    def __init__(self, ref: RefAttention, layer: int) -> None:
        self.ref, self.layer = ref, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 *args, **kwargs):  # fmt: skip
        assert encoder_hidden_states is not None and attention_mask is None
        self.ref.layer = self.layer
        d = attn.to_q.out_features // attn.heads
        raw_k, raw_v = self.ref.before_norm(attn.to_k(hidden_states), attn.to_v(hidden_states))
        image_qkv = [split_heads(x, d) for x in (attn.to_q(hidden_states), raw_k, raw_v)]
        added = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        text_qkv = [split_heads(f(encoder_hidden_states), d) for f in added]
        for i, norm, added_norm in ((0, attn.norm_q, attn.norm_added_q),
                                    (1, attn.norm_k, attn.norm_added_k)):  # fmt: skip
            image_qkv[i] = image_qkv[i] if norm is None else norm(image_qkv[i])
            text_qkv[i] = text_qkv[i] if added_norm is None else added_norm(text_qkv[i])
        q, k, v = (torch.cat([a, b], dim=2) for a, b in zip(image_qkv, text_qkv, strict=True))
        n = hidden_states.shape[1]
        out = self.ref.attend(q, k, v, image=slice(0, n), text=slice(n, None))
        out = out.transpose(1, 2).flatten(2)
        image, text = attn.to_out[1](attn.to_out[0](out[:, :n])), out[:, n:]
        return image, (text if attn.context_pre_only else attn.to_add_out(text))


@contextlib.contextmanager
def installed(transformer, processors: dict[str, object]) -> Iterator[None]:
    """``processors`` on every attention of ``transformer`` (the names must be all of them),
    the transformer's own put back afterwards."""
    saved = dict(transformer.attn_processors)
    assert set(processors) == set(saved), sorted(set(saved) ^ set(processors))
    transformer.set_attn_processor(processors)
    try:
        yield
    finally:
        transformer.set_attn_processor(saved)


# ---- the sampling loops ---------------------------------------------------------------------


def shared_noise(channels: int, side: int, seed: int = SEED) -> Tensor:
    return torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(seed))


def flux_sigmas(config, steps: int, image_tokens: int) -> Tensor:
    """FluxPipeline: ``linspace(1, 1/N, N)``, time-shifted by ``mu`` linear in the token count
    between the config's base and max, then the final 0."""
    slope = (config.max_shift - config.base_shift) / (
        config.max_image_seq_len - config.base_image_seq_len
    )
    mu = config.base_shift + slope * (image_tokens - config.base_image_seq_len)
    s = np.linspace(1.0, 1 / steps, steps)
    s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
    return torch.tensor([*s, 0.0], dtype=torch.float32)


def sd3_sigmas(config, steps: int) -> Tensor:
    """StableDiffusion3Pipeline (static shift): N sigmas spread linearly between 1 and the
    shifted smallest training sigma, shifted once more (as the scheduler does), then 0."""
    assert not config.use_dynamic_shifting

    def shifted(s):
        return config.shift * s / (1 + (config.shift - 1) * s)

    s = shifted(np.linspace(1.0, shifted(1 / config.num_train_timesteps), steps))
    return torch.tensor([*s, 0.0], dtype=torch.float32)


def same_as_diffusers(ours: Tensor, config, steps: int, **kwargs) -> None:
    """The sigmas written out above are those of a fresh diffusers scheduler."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps, **kwargs)
    assert (scheduler.sigmas - ours).abs().max() <= 1e-6


def pack(x: Tensor) -> Tensor:
    """``[rows, C, h, w]`` → ``[rows, h/2 · w/2, 4C]``: 2×2 patches, channel-major."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: Tensor, side: int) -> Tensor:
    b, _, c4 = x.shape
    x = x.reshape(b, side // 2, side // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, side, side)


def euler(ref: RefAttention, x: Tensor, sigmas: Tensor, guided: bool, scale: Any,
          velocity: Callable[[Tensor, Tensor], Tensor]) -> Tensor:  # fmt: skip
    """The flow-match Euler loop: ``velocity(model input, timestep = 1000 σ)`` on ``[x; x]``
    under guidance (unconditional half first), ``x += (σ_next − σ) · v``; ``scale`` one
    guidance, or a list of one per row (Stable Flow's reference row at 1)."""
    for i in range(len(sigmas) - 1):
        ref.step = i
        model_in = torch.cat([x, x]) if guided else x
        v = velocity(model_in, (sigmas[i] * 1000).expand(model_in.shape[0]))
        if guided:
            uncond, cond = v.chunk(2)
            per_row = torch.tensor(scale).reshape(-1, *[1] * (cond.dim() - 1))
            v = uncond + per_row * (cond - uncond)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def image_ids(grid: int) -> Tensor:
    """``(0, row, column)`` of every packed token, row-major ``[grid², 3]``."""
    ids = torch.zeros(grid, grid, 3)
    ids[..., 1] += torch.arange(grid)[:, None]
    ids[..., 2] += torch.arange(grid)[None, :]
    return ids.reshape(-1, 3)


@torch.no_grad()
def run_flux_reference(pipe, prompts: list[str], guidance_scale: Any, steps: int,
                       make_ref: Callable[[bool], RefAttention]) -> Tensor:  # fmt: skip
    """Final latents ``[samples, 16, h, w]``; ``make_ref(guided)`` gives the attention (guided:
    the batch has unconditional rows first); ``guidance_scale`` one, or one per prompt."""
    transformer = pipe.transformer
    distilled = bool(transformer.config.guidance_embeds)  # guidance is an input, no uncond rows
    guided = not distilled and max(torch.tensor(guidance_scale).reshape(-1)) > 1
    texts = [""] * len(prompts) * guided + prompts  # unconditional rows first
    embeds, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, max_sequence_length=512)
    side = SIZE // pipe.vae_scale_factor
    x = pack(shared_noise(transformer.config.in_channels // 4, side)).repeat(len(prompts), 1, 1)
    ids = {"img_ids": image_ids(side // 2), "txt_ids": torch.zeros(embeds.shape[1], 3)}
    scales = torch.tensor(guidance_scale, dtype=torch.float32).reshape(-1)
    guidance = scales.expand(len(texts)).clone() if distilled else None  # one per row
    ref = make_ref(guided)
    names = [f"transformer_blocks.{i}" for i in range(transformer.config.num_layers)]
    names += [f"single_transformer_blocks.{j}" for j in range(transformer.config.num_single_layers)]
    processors = {
        f"{n}.attn.processor": RefFluxProcessor(ref, embeds.shape[1], i)
        for i, n in enumerate(names)
    }

    def velocity(model_in: Tensor, t: Tensor) -> Tensor:  # FluxPipeline: timestep / 1000
        return transformer(hidden_states=model_in, timestep=t / 1000, guidance=guidance,
                           pooled_projections=pooled, encoder_hidden_states=embeds,
                           return_dict=False, **ids)[0]  # fmt: skip

    with installed(transformer, processors):
        x = euler(ref, x, flux_sigmas(pipe.scheduler.config, steps, x.shape[1]), guided,
                  guidance_scale, velocity)  # fmt: skip
    return unpack(x, side)


@torch.no_grad()
def run_sd3_reference(pipe, prompts: list[str], guidance_scale: Any, steps: int,
                      make_ref: Callable[[bool], RefAttention]) -> Tensor:  # fmt: skip
    """Final latents ``[samples, 16, h, w]`` (``make_ref``, ``guidance_scale`` as
    :func:`run_flux_reference`)."""
    transformer = pipe.transformer
    guided = max(torch.tensor(guidance_scale).reshape(-1)) > 1
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=guided
    )
    embeds = torch.cat([uncond, cond]) if guided else cond  # unconditional rows first
    pooled = torch.cat([uncond_pooled, pooled]) if guided else pooled
    side = SIZE // pipe.vae_scale_factor
    x = shared_noise(transformer.config.in_channels, side).repeat(len(prompts), 1, 1, 1)
    ref = make_ref(guided)
    names = [f"transformer_blocks.{i}.attn.processor" for i in range(transformer.config.num_layers)]

    def velocity(model_in: Tensor, t: Tensor) -> Tensor:  # SD3 takes the timestep itself
        return transformer(hidden_states=model_in, timestep=t, encoder_hidden_states=embeds,
                           pooled_projections=pooled, return_dict=False)[0]  # fmt: skip

    with installed(transformer, {n: RefSD3Processor(ref, i) for i, n in enumerate(names)}):
        return euler(ref, x, sd3_sigmas(pipe.scheduler.config, steps), guided, guidance_scale,
                     velocity)  # fmt: skip

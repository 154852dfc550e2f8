"""The toy Flux (``toy-flux``): its settings (:class:`FluxTrainConfig`) and its architecture.

FLUX.1's topology at toy scale, trained by rectified flow on world v2
(:mod:`probe.toy.training.flux_train`):

- the denoiser: a ``FluxTransformer2DModel`` (:func:`toy_flux_transformer`): 4 double-stream
  blocks (separate image and text weights, one joint softmax) then 8 single-stream blocks
  (one stream over [text; image] tokens), 4 heads × 32 channels (width 128), RoPE axes 8/12/12
  over the ids ``(0, row, col)``, patch 1 on latents packed 2×2 (16×16×4 latents → 8×8 = 64
  tokens of 16 channels);
- text: a T5-style encoder (:func:`toy_t5_encoder`, width 64) whose 16 tokens are the joint
  text sequence, and toy-v2's CLIP text encoder, read for its pooled output only;
- the VAE: toy-v2's factor-4 AutoencoderKL (``shift_factor`` 0.0: ``FluxPipeline`` adds it);
- the scheduler: FLUX.1-dev's config unchanged (:func:`probe.models.tiny_dit.flux_dev_scheduler`):
  the shift follows the token count (``mu`` linear from 0.5 at 256 tokens to 1.15 at 4096), so
  the toy's 64 tokens get ``mu`` 0.47, a shift of e^0.47 ≈ 1.6, computed by ``FluxPipeline`` and
  attnprobe's Flux sampler alike with no toy-specific branch.

**Not guidance-distilled.** FLUX.1-dev takes its guidance scale as a transformer input, a model
distilled from a teacher that used classifier-free guidance. The toy has no teacher: it is built
with ``guidance_embeds=False``, learns the unconditional velocity from captions dropped to ``""``
(10%), and is sampled with *true* classifier-free guidance (an unconditional pass with the empty
prompt: ``FluxPipeline(..., true_cfg_scale=4.0, negative_prompt="")``).

    cfg = FluxTrainConfig(out="runs/toy_flux")     # ~2 h 50 min on 2 cores
    toy_flux_transformer(cfg)                      # 4 + 8 blocks, 4.5 M parameters
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
)
from transformers import T5Config, T5EncoderModel

from probe.toy.training.train_config import TrainConfig
from probe.toy.weight_folders import TOY_V2_DIR

TEXT_TOKENS = 16
"""T5 tokens of the toy Flux's joint text sequence (FLUX.1: 512). The longest caption of world
v2 and of its templates is 8 tokens; ``FluxPipeline`` pads to ``max_sequence_length`` and masks
nothing, so the padding is part of what the model saw: sample with the same length."""


@dataclass
class FluxTrainConfig(TrainConfig):
    """Settings of a toy Flux run (the fields of :class:`TrainConfig` where they apply).

    Stages: ``t5`` (the contrastive T5 text tower, with ``text_*``: ``text_dim`` is the T5
    width, the transformer's ``joint_attention_dim``), the latent pool (``pool``) encoded by
    ``base``'s VAE, ``transformer`` (``transformer_minutes`` or ``max_transformer_steps``;
    ``batch``, ``lr``, ``warmup``, ``caption_dropout``, ``ema_decay``). ``base`` lends its
    frozen CLIP text encoder, tokenizer and VAE; the VAE, UNet and judge fields of
    :class:`TrainConfig` are unused (world v2's judge is shipped).
    """

    base: str = str(TOY_V2_DIR)
    transformer_minutes: float = 150.0
    max_transformer_steps: int | None = None
    lr: float = 5e-4
    warmup: int = 500
    double_blocks: int = 4
    single_blocks: int = 8
    heads: int = 4
    head_dim: int = 32
    rope_axes: tuple[int, int, int] = (8, 12, 12)
    text_tokens: int = TEXT_TOKENS
    t5_layers: int = 4
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self) -> None:
        self.rope_axes = tuple(self.rope_axes)  # type: ignore[assignment]  # from JSON: a list
        if self.vae_factor != 4:
            raise ValueError(f"vae_factor {self.vae_factor}: the toy Flux reuses toy-v2's ×4 VAE")
        if self.image_size % 8:
            raise ValueError(
                f"image_size {self.image_size}: use a multiple of 8 (the ×4 VAE, then 2×2 packing)"
            )
        if sum(self.rope_axes) != self.head_dim:
            raise ValueError(
                f"rope_axes {self.rope_axes} sum to {sum(self.rope_axes)}: they must sum to "
                f"head_dim {self.head_dim} (FLUX.1: 16/56/56 of 128)"
            )

    @classmethod
    def smoke(cls, out: Any, **changes: Any) -> FluxTrainConfig:
        """A few steps of every stage: the CI path of the real script."""
        small: dict[str, Any] = {
            "text_batch": 8, "text_warmup": 2, "max_text_steps": 3, "pool": 32, "batch": 4,
            "warmup": 2, "max_transformer_steps": 3,
        }  # fmt: skip
        return cls(out=out, **(small | changes))


def toy_t5_encoder(vocab_size: int, width: int = 64, layers: int = 4) -> T5EncoderModel:
    """A T5 encoder (gated-GELU, relative position buckets, RMS norms) of ``layers`` blocks,
    4 heads × ``width // 4``, feed-forward ``2 × width``; pad id 0, ``</s>`` id 1 (as
    :func:`probe.models.tiny_dit.tiny_t5_tokenizer` numbers them)."""
    config = T5Config(
        vocab_size=vocab_size, d_model=width, d_kv=width // 4, d_ff=2 * width,
        num_layers=layers, num_heads=4, relative_attention_num_buckets=16,
        relative_attention_max_distance=TEXT_TOKENS, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5EncoderModel(config)


def toy_flux_transformer(cfg: FluxTrainConfig, pooled_dim: int = 64) -> FluxTransformer2DModel:
    """The toy Flux's denoiser, adaLN-Zero initialised (see :func:`zero_adaln`).

    Args:
        cfg: the blocks, heads, head width and RoPE axes; ``text_dim`` (T5's width) is the
            ``joint_attention_dim``.
        pooled_dim: the CLIP text encoder's width (``pooled_projection_dim``).

    Returns:
        A ``FluxTransformer2DModel`` on 16-channel packed tokens, no guidance embedding, its
        config's ``sample_size`` the latent side (FLUX.1's config has none).

    Example:
        >>> t = toy_flux_transformer(FluxTrainConfig())
        >>> len(t.transformer_blocks), len(t.single_transformer_blocks)
        (4, 8)
    """
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=cfg.double_blocks,
        num_single_layers=cfg.single_blocks, attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.heads, joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=pooled_dim, guidance_embeds=False, axes_dims_rope=cfg.rope_axes,
    )  # fmt: skip
    transformer.register_to_config(sample_size=cfg.latent_size)
    return zero_adaln(transformer)


def zero_adaln(transformer: FluxTransformer2DModel) -> FluxTransformer2DModel:
    """DiT's adaLN-Zero: the modulation of every block and of the output norm, and the output
    projection, start at zero, so each block starts as the identity and the first velocity
    is 0 (diffusers' constructor leaves them at PyTorch's default initialisation)."""
    norms = (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous)
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, norms):
                module.linear.weight.zero_()
                module.linear.bias.zero_()
        transformer.proj_out.weight.zero_()
        transformer.proj_out.bias.zero_()
    return transformer

"""The random models built in memory for tests: ``tiny`` (SD 1.x topology) and ``tiny-xl``
(SDXL's), small and deterministic for a seed. Nothing here touches the network.

    pipe = build_tiny_pipeline()        # StableDiffusionPipeline, 16 layers, 64 px
    xl = build_tiny_xl_pipeline()       # StableDiffusionXLPipeline, 28 layers, 64 px

``tiny-xl`` keeps what makes SDXL SDXL: a first down block without attention, attention blocks
holding several transformer blocks (``transformer_layers_per_block`` 1/2/3, so 28 layers), two
CLIP text encoders of unequal width whose penultimate hidden states are concatenated
(32 + 48 = the UNet's ``cross_attention_dim`` 80), the second one's pooled projection and six
time ids as added conditioning (``addition_embed_type="text_time"``), one vocabulary for both
tokenizers (the second pads with ``!``, id 0, as OpenCLIP's), and SDXL's Euler scheduler config.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from probe.models.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer

BASE_WORDS = [
    *("a", "an", "the", "of", "and", "with", "in", "on", "at", "standing", "sitting"),
    *("photo", "picture", "man", "woman", "car", "dog", "cat", "park", "street", "beach"),
]


def sd_ddim_scheduler() -> DDIMScheduler:
    """The DDIM schedule of SD 1.x, as the official FPE code sets it up."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_unet(cross_attention_dim: int = 32, sample_size: int = 8) -> UNet2DConditionModel:
    """A randomly initialised UNet with the SD 1.x topology (16 transformer blocks)."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=2,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,  # diffusers' SD 1.x naming: this is the number of heads
        norm_num_groups=16,
    )


def tiny_vae() -> AutoencoderKL:
    """A randomly initialised factor-8 AutoencoderKL (4 blocks, 4 latent channels)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def _text_config(vocab_size: int, bos: int, eos: int, hidden: int, **extra: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        **extra,
    )


def tiny_text_encoder(vocab_size: int, bos: int, eos: int, hidden: int = 32) -> CLIPTextModel:
    """A randomly initialised 2-layer CLIP text encoder."""
    return CLIPTextModel(_text_config(vocab_size, bos, eos, hidden))


def tiny_words() -> list[str]:
    """The tiny/toy vocabulary: a few common words plus every word of ``data_templates/``."""
    from probe.prompts.templates import template_words

    return sorted(set(BASE_WORDS) | set(template_words()))


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Build the ``tiny`` pipeline: SD 1.x topology, random weights, deterministic for ``seed``.

    Images are 64×64 px (8×8 latents). The global RNG state is left as it was.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_clip_tokenizer(write_clip_tokenizer(tiny_words(), tmp))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = tiny_text_encoder(
            len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id
        )
        unet = tiny_unet()
        vae = tiny_vae()
    pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble_pipeline(
    vae: Any, text_encoder: Any, tokenizer: Any, unet: Any
) -> StableDiffusionPipeline:
    """An SD pipeline of these parts on the SD DDIM schedule, without safety checker."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


TINY_XL_TEXT = (32, 48)
"""Hidden sizes of ``tiny-xl``'s two text encoders (SDXL base: 768 and 1280)."""
TIME_EMBED_DIM = 8
"""``tiny-xl``'s ``addition_time_embed_dim`` (SDXL base: 256)."""


def tiny_xl_unet(sample_size: int = 8) -> UNet2DConditionModel:
    """A randomly initialised UNet with SDXL's topology, scaled down (28 transformer blocks)."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 4),  # diffusers' SDXL naming: heads (SDXL base: 5/10/20)
        cross_attention_dim=sum(TINY_XL_TEXT),
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TINY_XL_TEXT[1] + 6 * TIME_EMBED_DIM,
        use_linear_projection=True,
        norm_num_groups=16,
    )


def sdxl_euler_scheduler() -> EulerDiscreteScheduler:
    """The scheduler SDXL base 1.0 ships (Euler, SD's betas, ``leading`` spacing, offset 1)."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def build_tiny_xl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """Build ``tiny-xl``: SDXL topology, random weights, deterministic for ``seed``.

    Images are 64×64 px (8×8 latents; attention at 4×4 and 2×2, as SDXL's 64×64 and 32×32 at
    1024 px). The global RNG state is left as it was.

    Example:
        >>> pipe = build_tiny_xl_pipeline()
        >>> len(unet_layers(pipe.unet)), pipe.text_encoder_2.config.projection_dim
        (28, 48)
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_clip_tokenizer(tiny_words(), tmp)
        tokenizer = load_clip_tokenizer(folder)
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, pad_token="!")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ids = (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        text_encoder = tiny_text_encoder(*ids, hidden=TINY_XL_TEXT[0])
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(*ids, hidden=TINY_XL_TEXT[1], projection_dim=TINY_XL_TEXT[1])
        )
        unet = tiny_xl_unet()
        vae = tiny_vae()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=sdxl_euler_scheduler(),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe

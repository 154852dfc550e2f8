"""``tiny-sd3`` and ``tiny-flux``: random DiT pipelines built in memory for tests (no network).

    pipe = build_tiny_sd3_pipeline()     # StableDiffusion3Pipeline: 3 joint blocks, 128 px, no T5
    pipe35 = build_tiny_sd35_pipeline()  # the same, shaped as SD3.5 Medium: attn2 in blocks 0-1
    flux = build_tiny_flux_pipeline()    # FluxPipeline: 2 double- + 2 single-stream blocks, 128 px

It keeps what makes SD3 SD3: an ``SD3Transformer2DModel`` (patch 2, 16 latent channels, joint
attention over [image; text] tokens, the last block ``context_pre_only``), two CLIP text
encoders with projection whose penultimate hidden states are concatenated (32 + 48) and
zero-padded to the joint width (96, T5-XXL's 4096 on SD3), their pooled embeddings concatenated
into ``pooled_projections`` (80; SD3: 2048), no third encoder (``text_encoder_3=None``: the 256 T5
tokens are zeros, as diffusers does), a 16-channel VAE with SD3's scaling and shift factors
and no quant convs, and ``FlowMatchEulerDiscreteScheduler`` with SD3's shift 3.0.
At 128 px the latent is 16×16 and every block attends over 8×8 = 64 image tokens and
77 + 256 = 333 text tokens. :func:`build_tiny_sd35_pipeline` keeps what SD3.5 Medium adds: q/k
RMS norms and, in its first blocks (``dual_attention_layers``; Medium: 0-12 of 24, here 0-1 of
3), a second, image-only attention ``attn2``. It is built directly by tests, not a built-in name.

``tiny-flux`` keeps Flux's: a ``FluxTransformer2DModel`` (latents packed 2×2 into 64-channel
tokens, rotary embeddings, double-stream then single-stream blocks, a guidance embedding as
FLUX.1-dev), a CLIP text encoder read for its pooled output only, a T5 encoder whose 512 tokens
are the joint text sequence (its tokenizer a SentencePiece-style unigram model over the same
words, built offline: :func:`tiny_t5_tokenizer`), a 16-channel VAE with Flux's factors, and
Flux-dev's dynamically shifted flow-match Euler schedule. It is sampled at 128 px
(``default_sample_size`` 16; FLUX.1: 128, i.e. 1024 px): 8×8 = 64 image tokens.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from probe.models.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer
from probe.models.tiny import _text_config, tiny_words

TINY_SD3_TEXT = (32, 48)
"""Hidden (and projection) sizes of ``tiny-sd3``'s two CLIP encoders (SD3: 768 and 1280)."""
TINY_SD3_JOINT_DIM = 96
"""``tiny-sd3``'s ``joint_attention_dim``, the width CLIP states are padded to (SD3: 4096)."""


TINY_SD35_DUAL_LAYERS = (0, 1)
"""The blocks of ``build_tiny_sd35_pipeline``'s transformer with an image-only ``attn2``."""


def tiny_sd3_transformer(
    sample_size: int = 16,
    dual_attention_layers: tuple[int, ...] = (),
    qk_norm: str | None = None,
) -> SD3Transformer2DModel:
    """A randomly initialised SD3 transformer: 3 joint blocks of 4 heads × 8 channels
    (``dual_attention_layers`` and ``qk_norm`` as SD3.5's config names them; SD3: none)."""
    return SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=16,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=TINY_SD3_JOINT_DIM,
        caption_projection_dim=32,
        pooled_projection_dim=sum(TINY_SD3_TEXT),
        out_channels=16,
        pos_embed_max_size=32,  # latents up to 64x64 (512 px)
        dual_attention_layers=dual_attention_layers,
        qk_norm=qk_norm,
    )


def tiny_sd35_transformer(sample_size: int = 16) -> SD3Transformer2DModel:
    """:func:`tiny_sd3_transformer` shaped as SD3.5 Medium: q/k RMS norms, and an image-only
    ``attn2`` in blocks :data:`TINY_SD35_DUAL_LAYERS`."""
    return tiny_sd3_transformer(sample_size, TINY_SD35_DUAL_LAYERS, "rms_norm")


def tiny_sd3_vae(scaling: float = 1.5305, shift: float = 0.0609) -> AutoencoderKL:
    """A randomly initialised factor-8 AutoencoderKL with 16 latent channels (SD3's and Flux's),
    scaling and shift factors SD3's by default."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=16,
        sample_size=128,
        scaling_factor=scaling,
        shift_factor=shift,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_sd3_pipeline(
    seed: int = 0, transformer: Callable[[], SD3Transformer2DModel] = tiny_sd3_transformer
) -> StableDiffusion3Pipeline:
    """Build ``tiny-sd3``: SD3 topology, random weights, deterministic for ``seed``.

    Images are 128×128 px. The global RNG state is left as it was. ``transformer`` builds the
    denoiser (:func:`build_tiny_sd35_pipeline` passes SD3.5 Medium's shape).

    Example:
        >>> pipe = build_tiny_sd3_pipeline()
        >>> len(pipe.transformer.transformer_blocks), pipe.text_encoder_3
        (3, None)
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_clip_tokenizer(tiny_words(), tmp)
        tokenizer = load_clip_tokenizer(folder)
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, pad_token="!")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ids = (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        encoders = [
            CLIPTextModelWithProjection(_text_config(*ids, hidden=h, projection_dim=h))
            for h in TINY_SD3_TEXT
        ]
        denoiser = transformer()
        vae = tiny_sd3_vae()
    pipe = StableDiffusion3Pipeline(
        transformer=denoiser, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1],
        tokenizer_2=tokenizer_2, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd35_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """``tiny-sd3`` shaped as SD3.5 Medium (:func:`tiny_sd35_transformer`): the same text
    encoders, VAE and scheduler, deterministic for ``seed``.

    Example:
        >>> pipe = build_tiny_sd35_pipeline()
        >>> [b.attn2 is not None for b in pipe.transformer.transformer_blocks]
        [True, True, False]
    """
    return build_tiny_sd3_pipeline(seed, tiny_sd35_transformer)


TINY_FLUX_LATENT = 16
"""``tiny-flux``'s latent side (128 px); registered as its transformer's ``sample_size``."""


def tiny_t5_tokenizer(words: list[str]) -> T5TokenizerFast:
    """A T5-style tokenizer (SentencePiece unigram, ``▁`` marking a word's start, ``</s>`` at
    the end, ``<pad>`` id 0) in which every word of ``words`` is one token; any other text
    still tokenizes, character by character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    letters = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in words] + [("\u2581", -4.0)]
    vocab += [(c, -5.0) for c in letters]
    model = Tokenizer(models.Unigram(vocab, unk_id=2))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=model, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_ids=0, model_max_length=512,
    )  # fmt: skip


def tiny_flux_transformer() -> FluxTransformer2DModel:
    """A randomly initialised Flux transformer: 2 double- and 2 single-stream blocks of
    4 heads × 8 channels, with a guidance embedding (as FLUX.1-dev)."""
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    transformer.register_to_config(sample_size=TINY_FLUX_LATENT)
    return transformer


def flux_dev_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler config: flow-match Euler, shift by image size (``mu``)."""
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip


def build_tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """Build ``tiny-flux``: Flux topology, random weights, deterministic for ``seed``.

    Images are 128×128 px. The global RNG state is left as it was.

    Example:
        >>> flux = build_tiny_flux_pipeline().transformer
        >>> len(flux.transformer_blocks), len(flux.single_transformer_blocks)
        (2, 2)
    """
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_clip_tokenizer(write_clip_tokenizer(tiny_words(), tmp))
    tokenizer_2 = tiny_t5_tokenizer(tiny_words())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ids = (len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        text_encoder = CLIPTextModel(_text_config(*ids, hidden=32))
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
            )
        )  # fmt: skip
        transformer = tiny_flux_transformer()
        vae = tiny_sd3_vae(scaling=0.3611, shift=0.1159)  # FLUX.1's factors
    pipe = FluxPipeline(
        scheduler=flux_dev_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=transformer,
    )  # fmt: skip
    pipe.default_sample_size = TINY_FLUX_LATENT
    pipe.set_progress_bar_config(disable=True)
    return pipe

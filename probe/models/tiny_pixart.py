"""``tiny-pixart``: a random PixArt-Σ pipeline built in memory for tests, the real configs of
PixArt-Σ XL 2 1024 MS, and a replica folder laid out as the downloaded one. No network.

    pipe = build_tiny_pixart_pipeline()           # PixArtSigmaPipeline: 4 DiT blocks, 64 px
    image = pipe("a red car", num_inference_steps=2, height=64, width=64,
                 use_resolution_binning=False, output_type="pt").images
    folder = pixart_sigma_replica(Path("/tmp/pixart-sigma"))   # real layout, small weights

``tiny-pixart`` keeps what makes PixArt-Σ PixArt-Σ: a ``PixArtTransformer2DModel`` of DiT blocks
(``BasicTransformerBlock``: self-attention ``attn1``, cross-attention ``attn2`` over the projected
T5 states, AdaLN-single modulation from the timestep alone, ``use_additional_conditions``
false), patch 2, 4 latent channels in and 8 out (learned sigma: the pipeline keeps the first 4),
a T5 encoder read at ``max_sequence_length`` 300 with its padding masked in ``attn2``, a
factor-8 VAE with SDXL's scaling factor 0.13025, and the DPM-Solver++ schedule the real folder
ships. Its latents are 8×8 (64 px), so the pipeline's resolution binning (defined for
``sample_size`` 32/64/128/256 only) must be turned off: ``use_resolution_binning=False``.

The replica keeps every config of the real folder as shipped, key for key, and replaces only the
size keys (:data:`REPLICA_SIZES`); the tokenizer is the toy's words (the real folder's
SentencePiece ``spiece.model`` cannot be written without ``sentencepiece``, so ``tokenizer.json``
stands in for it). Sources of each config: ``docs/pixart_notes.md``.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
)
from transformers import T5Config, T5EncoderModel

from probe.models.tiny import tiny_vae, tiny_words
from probe.models.tiny_dit import tiny_t5_tokenizer

_Model = TypeVar("_Model", bound=torch.nn.Module)

# --- the real folder, PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, as shipped -------------------

PIXART_SIGMA_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "PixArtSigmaPipeline", "_diffusers_version": "0.28.0.dev0",
    "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}  # fmt: skip
"""``model_index.json`` (400 bytes; the transformer still named ``Transformer2DModel``, which
diffusers maps to ``PixArtTransformer2DModel``)."""

PIXART_SIGMA_XL_CONFIG: dict[str, Any] = {
    "_class_name": "Transformer2DModel", "_diffusers_version": "0.28.0.dev0",
    "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 72,
    "attention_type": "default", "caption_channels": 4096, "cross_attention_dim": 1152,
    "double_self_attention": False, "dropout": 0.0, "in_channels": 4, "interpolation_scale": 2,
    "norm_elementwise_affine": False, "norm_eps": 1e-06, "norm_num_groups": 32,
    "norm_type": "ada_norm_single", "num_attention_heads": 16, "num_embeds_ada_norm": 1000,
    "num_layers": 28, "num_vector_embeds": None, "only_cross_attention": False, "out_channels": 8,
    "patch_size": 2, "sample_size": 128, "upcast_attention": False,
    "use_additional_conditions": False, "use_linear_projection": False,
}  # fmt: skip
"""``transformer/config.json``: 28 blocks of 16 heads × 72 = 1152 channels, 610.9 M parameters.
Build the full-size table on the meta device:
``with torch.device("meta"): PixArtTransformer2DModel.from_config(PIXART_SIGMA_XL_CONFIG)``."""

PIXART_SIGMA_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.22.0.dev0",
    "algorithm_type": "dpmsolver++", "beta_end": 0.02, "beta_schedule": "linear",
    "beta_start": 0.0001, "dynamic_thresholding_ratio": 0.995, "euler_at_final": False,
    "lambda_min_clipped": float("-inf"), "lower_order_final": True, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "solver_order": 2,
    "solver_type": "midpoint", "steps_offset": 0, "thresholding": False,
    "timestep_spacing": "linspace", "trained_betas": None, "use_karras_sigmas": False,
    "use_lu_lambdas": False, "variance_type": None,
}  # fmt: skip
"""``scheduler/scheduler_config.json``: DPM-Solver++ (2M), linear betas 1e-4 to 0.02, epsilon."""

PIXART_SIGMA_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.18.0.dev0", "_name_or_path": ".",
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4, "force_upcast": False,
}  # fmt: skip
"""``vae/config.json``: SDXL's VAE (the fp16-fix one: ``force_upcast`` false), 631 bytes."""

PIXART_SIGMA_T5_CONFIG: dict[str, Any] = {
    "architectures": ["T5EncoderModel"], "classifier_dropout": 0.0, "d_ff": 10240, "d_kv": 64,
    "d_model": 4096, "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True,
    "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64,
    "num_layers": 24, "output_past": True, "pad_token_id": 0,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.35.2",
    "use_cache": True, "vocab_size": 32128,
}  # fmt: skip
"""``text_encoder/config.json``: T5 v1.1 XXL's encoder (4096 wide, 24 layers). Its values are
T5-XXL's; ``torch_dtype`` and ``transformers_version`` are not verified (see the notes)."""

REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "model_index.json": PIXART_SIGMA_MODEL_INDEX,
    "scheduler/scheduler_config.json": PIXART_SIGMA_SCHEDULER_CONFIG,
    "text_encoder/config.json": PIXART_SIGMA_T5_CONFIG,
    "transformer/config.json": PIXART_SIGMA_XL_CONFIG,
    "vae/config.json": PIXART_SIGMA_VAE_CONFIG,
}
"""Every config file of the real folder, by path inside it."""

REPLICA_SIZES: dict[str, dict[str, Any]] = {
    "transformer/config.json": {"attention_head_dim": 4, "caption_channels": 32,
                                "cross_attention_dim": 64},
    "vae/config.json": {"block_out_channels": [16, 32, 64, 64], "norm_num_groups": 4},
    "text_encoder/config.json": {"d_ff": 64, "d_kv": 8, "d_model": 32, "num_decoder_layers": 2,
                                 "num_heads": 4, "num_layers": 2},
}  # fmt: skip
"""The only keys the replica changes (and ``vocab_size``, set to its tokenizer's): channels and
text sizes. Heads (16), blocks (28), patch, sample size (128 latents, 1024 px) and every other
topology key stay real, so the replica has PixArt-Σ's 28 × 2 attention layers, 16 heads each."""

REPLICA_SEED = 1024
"""Added to ``seed`` for the replica's weights (the components get +0, +1, +2)."""

# --- tiny-pixart ----------------------------------------------------------------------------

TINY_PIXART_T5_DIM = 32
"""``tiny-pixart``'s T5 width, the transformer's ``caption_channels`` (PixArt-Σ: 4096)."""


def tiny_pixart_transformer(seed: int = 0, sample_size: int = 8) -> PixArtTransformer2DModel:
    """A randomly initialised PixArt-Σ transformer: 4 DiT blocks of 2 heads × 8 channels.

    Args:
        seed: the weights' seed; the global RNG state is left as it was.
        sample_size: the latent side it is built for (8: 64 px; PixArt-Σ XL: 128, 1024 px).

    Returns:
        The transformer: patch 2, 4 latent channels in, 8 out (learned sigma),
        ``caption_channels`` :data:`TINY_PIXART_T5_DIM`, AdaLN-single, no micro-conditions.

    Example:
        >>> transformer = tiny_pixart_transformer()
        >>> len(transformer.transformer_blocks), transformer.transformer_blocks[0].attn2.heads
        (4, 2)
    """
    return _seeded(seed, lambda: PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=4,
        cross_attention_dim=16, attention_bias=True, sample_size=sample_size, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
        caption_channels=TINY_PIXART_T5_DIM,
    ))  # fmt: skip


def tiny_t5_encoder(vocab_size: int, d_model: int = TINY_PIXART_T5_DIM) -> T5EncoderModel:
    """A randomly initialised 2-layer T5 v1.1-style encoder, as ``tiny-flux``'s.

    Args:
        vocab_size: its tokenizer's length (``<pad>`` 0, ``</s>`` 1, as T5's).
        d_model: its width, the states' last dimension (T5-XXL: 4096).

    Returns:
        The encoder (gated GELU, 4 heads × 8, no dropout), drawn from the current RNG state.

    Example:
        >>> tiny_t5_encoder(69)(torch.tensor([[3, 1]])).last_hidden_state.shape
        torch.Size([1, 2, 32])
    """
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
            num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        )
    )  # fmt: skip


def pixart_sigma_scheduler() -> DPMSolverMultistepScheduler:
    """The scheduler PixArt-Σ XL 2 1024 MS ships: :data:`PIXART_SIGMA_SCHEDULER_CONFIG`.

    Example:
        >>> pixart_sigma_scheduler().config.algorithm_type
        'dpmsolver++'
    """
    return DPMSolverMultistepScheduler.from_config(_public(PIXART_SIGMA_SCHEDULER_CONFIG))


def build_tiny_pixart_pipeline(seed: int = 0) -> PixArtSigmaPipeline:
    """Build ``tiny-pixart``: PixArt-Σ topology, random weights, deterministic for ``seed``.

    Images are 64×64 px (8×8 latents, 4×4 = 16 image tokens after patch 2); every ``attn2``
    attends over the 300 T5 positions, those past the prompt masked. Call it with
    ``use_resolution_binning=False``: PixArt-Σ's binning knows latent sides 32-256 only. The
    global RNG state is left as it was.

    Args:
        seed: the weights' seed.

    Returns:
        A ``PixArtSigmaPipeline`` on the CPU, progress bar off.

    Example:
        >>> pipe = build_tiny_pixart_pipeline()
        >>> out = pipe("a red car", num_inference_steps=2, height=64, width=64,
        ...            use_resolution_binning=False, output_type="pt")
        >>> tuple(out.images.shape)
        (1, 3, 64, 64)
    """
    tokenizer = tiny_t5_tokenizer(tiny_words())
    tokenizer.model_max_length = 300  # the pipeline's max_sequence_length, as load() sets it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = tiny_t5_encoder(len(tokenizer))
        vae = tiny_vae()
    vae.register_to_config(scaling_factor=PIXART_SIGMA_VAE_CONFIG["scaling_factor"])
    pipe = PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        transformer=tiny_pixart_transformer(seed), scheduler=pixart_sigma_scheduler(),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- the replica folder -------------------------------------------------------------------


def pixart_sigma_replica(folder: Path, seed: int = 0) -> Path:
    """Write a replica of the PixArt-Σ XL 2 1024 MS folder into ``folder``, replacing it.

    The folder holds ``model_index.json``, ``scheduler/``, ``text_encoder/`` (two weight shards
    and their index, as the real one), ``tokenizer/``, ``transformer/`` and ``vae/``; every
    config is the real one with only :data:`REPLICA_SIZES` (and ``vocab_size``) replaced, and
    the weights are small, random and deterministic for ``seed``.

    Args:
        folder: where to write it; an existing folder there is removed first.
        seed: the weights' seed.

    Returns:
        ``folder``, which ``PixArtSigmaPipeline.from_pretrained(folder, local_files_only=True)``
        loads.

    Raises:
        ValueError: ``folder`` is a file.

    Example:
        >>> path = pixart_sigma_replica(Path("/tmp/pixart-sigma"))
        >>> sorted(p.name for p in path.iterdir())
        ['model_index.json', 'scheduler', 'text_encoder', 'tokenizer', 'transformer', 'vae']
    """
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"{folder} is a file: give a folder path to write the replica into")
    if folder.exists():
        shutil.rmtree(folder)
    tokenizer = tiny_t5_tokenizer(tiny_words())
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    for rel, real in REAL_CONFIGS.items():
        _write_json(folder / rel, replica_config(rel, real, len(tokenizer)))
    _write_weights(folder, seed + REPLICA_SEED)
    return folder


def replica_config(rel: str, real: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The real config ``rel`` with its size keys replaced, keys and their order kept.

    Args:
        rel: the file's path in the folder, a key of :data:`REAL_CONFIGS`.
        real: the real file's content (left unchanged).
        vocab_size: the replica tokenizer's length, for ``text_encoder/config.json``.

    Returns:
        A new dict, what the replica writes to ``rel``.

    Raises:
        KeyError: :data:`REPLICA_SIZES` names a key the real file lacks (fix the table).

    Example:
        >>> replica_config("vae/config.json", PIXART_SIGMA_VAE_CONFIG, 0)["norm_num_groups"]
        4
    """
    config = copy.deepcopy(real)
    for key, value in REPLICA_SIZES.get(rel, {}).items():
        if key not in config:
            raise KeyError(f"{rel}: REPLICA_SIZES replaces {key!r}, which the real file lacks")
        config[key] = value
    if rel.startswith("text_encoder/"):
        config["vocab_size"] = vocab_size
    return config


def _write_weights(folder: Path, seed: int) -> None:
    """Random weights for the three models, each from its written config, in safetensors."""
    transformer = _seeded(
        seed, lambda: PixArtTransformer2DModel.from_config(_load(folder / "transformer"))
    )
    vae = _seeded(seed + 1, lambda: AutoencoderKL.from_config(_load(folder / "vae")))
    text_encoder = _seeded(
        seed + 2, lambda: T5EncoderModel(T5Config.from_pretrained(str(folder / "text_encoder")))
    )
    _copy_weights(transformer, folder / "transformer")
    _copy_weights(vae, folder / "vae")
    _copy_weights(text_encoder, folder / "text_encoder", shards=2)


def _copy_weights(model: Any, into: Path, shards: int = 1) -> None:
    """``model``'s safetensors weights (and shard index) into ``into``; its config stays."""
    with tempfile.TemporaryDirectory() as tmp:
        size = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        model.save_pretrained(tmp, max_shard_size=size // shards + 1 if shards > 1 else "10GB")
        written = sorted(Path(tmp).glob("*.safetensors"))
        if len(written) != shards:
            raise RuntimeError(
                f"{into.name}: save_pretrained wrote {len(written)} weight files, not {shards}: "
                "adjust the shard size rule in _copy_weights"
            )
        for path in [*written, *Path(tmp).glob("*.safetensors.index.json")]:
            shutil.copy(path, into / path.name)


def _seeded(seed: int, build: Callable[[], _Model]) -> _Model:
    """``build()`` with the RNG seeded to ``seed``; the global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _public(config: dict[str, Any]) -> dict[str, Any]:
    """A config without its ``_``-keys (class name, versions), for ``from_config``."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _load(folder: Path) -> dict[str, Any]:
    return _public(json.loads((folder / "config.json").read_text()))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")

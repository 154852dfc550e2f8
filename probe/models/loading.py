"""Load a Stable Diffusion pipeline: the embedded ``toy`` model, the random ``tiny`` one, or a
diffusers folder on disk. Nothing here touches the network.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from probe.attention.layers import LayerInfo, unet_layers
from probe.models.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer

TOY_DIR = Path(__file__).resolve().parents[1] / "toy" / "weights"

BASE_WORDS = [
    *("a", "an", "the", "of", "and", "with", "in", "on", "at", "standing", "sitting"),
    *("photo", "picture", "man", "woman", "car", "dog", "cat", "park", "street", "beach"),
]

HOW_TO_GET_WEIGHTS = (
    "attnprobe never downloads weights. On a machine with internet, save a diffusers Stable "
    "Diffusion 1.x/2.x folder, e.g. `huggingface-cli download stable-diffusion-v1-5/"
    "stable-diffusion-v1-5 --local-dir ./sd15` (or `StableDiffusionPipeline.from_pretrained(...)"
    ".save_pretrained('./sd15')`), copy it here and pass its path; or use the built-in 'toy' or "
    "'tiny' models."
)


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


def tiny_text_encoder(vocab_size: int, bos: int, eos: int, hidden: int = 32) -> CLIPTextModel:
    """A randomly initialised 2-layer CLIP text encoder."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return CLIPTextModel(config)


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


GENERATION_DEFAULTS = {"num_inference_steps": 20, "guidance_scale": 7.5}


def generation_defaults(pipe: StableDiffusionPipeline) -> dict[str, Any]:
    """Steps, guidance and image size a model is meant to be sampled with.

    Read from ``attnprobe.json`` in the model's folder when there is one (the toy model ships
    its own), else 20 steps, guidance 7.5 and the UNet's native size.
    """
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    defaults: dict[str, Any] = {**GENERATION_DEFAULTS, "height": size, "width": size}
    folder = getattr(pipe, "name_or_path", None)
    if folder and (Path(folder) / "attnprobe.json").is_file():
        saved = json.loads((Path(folder) / "attnprobe.json").read_text())
        defaults.update({k: saved[k] for k in defaults if k in saved})
    return defaults


def load_pipeline(
    spec: str | Path = "toy",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> StableDiffusionPipeline:
    """Load a Stable Diffusion pipeline, offline.

    Args:
        spec: ``"toy"`` (the embedded trained toy model), ``"tiny"`` (random weights, SD 1.x
            topology, for tests) or the path of a diffusers SD 1.x/2.x folder.
        device: where to put it (default: CPU).
        dtype: weights' dtype (default: float32).

    Returns:
        A ``StableDiffusionPipeline`` with the safety checker off.

    Raises:
        FileNotFoundError: the spec is neither a built-in model nor a folder on disk, or the
            folder is not a diffusers pipeline.

    Example:
        >>> pipe = load_pipeline("tiny")
        >>> image = pipe("a red car", num_inference_steps=5).images[0]
    """
    tiny = str(spec) == "tiny"
    pipe = build_tiny_pipeline() if tiny else _load_folder(_resolve_folder(spec))
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    return pipe


def layer_table(spec: str | Path = "toy") -> list[LayerInfo]:
    """The attention-layer table of a model without loading its weights: its UNet is built
    from its config on the meta device (0.07 s for SD 1.5's config on this CPU).

    Raises:
        FileNotFoundError: as :func:`load_pipeline`.

    Example:
        >>> resolve_layers(layer_table("~/models/sd15"), "fpe")
        [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    """
    if str(spec) == "tiny":
        return unet_layers(tiny_unet())
    config = UNet2DConditionModel.load_config(str(_resolve_folder(spec) / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return unet_layers(unet)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """A torch device from a command-line value.

    Args:
        spec: ``"auto"`` (or None): this process's GPU when CUDA is available (``cuda:LOCAL_RANK``,
            so each process of ``accelerate launch`` / ``torchrun`` takes its own), else the
            CPU; or any torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Raises:
        ValueError: not a device name, or a GPU that this machine does not have.

    Example:
        >>> resolve_device("auto")          # on a CPU-only machine
        device(type='cpu')
    """
    import os

    if spec is None or str(spec) == "auto":
        if torch.cuda.is_available():
            rank = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {spec!r} is not a torch device: use auto, cpu, cuda or cuda:N"
        ) from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {spec!r}: this machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {spec!r}: this machine has {count} GPU(s), cuda:0-{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r}: MPS is not available here; use --device cpu")
    return device


def _resolve_folder(spec: str | Path) -> Path:
    if str(spec) == "toy":
        if not (TOY_DIR / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the toy model's weights are not in {TOY_DIR}: train them with "
                "`attnprobe toy train --out <dir>` or use --model tiny"
            )
        return TOY_DIR
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"model {str(spec)!r} is not 'toy', 'tiny' or a folder on disk. {HOW_TO_GET_WEIGHTS}"
        )
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json). "
            f"{HOW_TO_GET_WEIGHTS}"
        )
    return folder


def _load_folder(folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe

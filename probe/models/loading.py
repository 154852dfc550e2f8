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


GENERATION_DEFAULTS: dict[str, dict[str, Any]] = {
    # a diffusers SD 1.x/2.x folder: the settings of the official FPE, Prompt-to-Prompt and
    # MasaCtrl code (50 DDIM steps, guidance 7.5), at the UNet's native size
    "sd": {"num_inference_steps": 50, "guidance_scale": 7.5},
    # a pipeline assembled in memory (the random "tiny"): few steps, for tests
    "tiny": {"num_inference_steps": 20, "guidance_scale": 7.5},
}
"""Sampling defaults per model family. A folder's ``attnprobe.json`` (the toy ships one) wins."""


def generation_defaults(pipe: StableDiffusionPipeline) -> dict[str, Any]:
    """Steps, guidance and image size a model is meant to be sampled with.

    Read from ``attnprobe.json`` in the model's folder when there is one (the toy model ships
    its own: 20 steps, guidance 4.0, 64 px), else the family's row of
    :data:`GENERATION_DEFAULTS` (an SD 1.x/2.x folder: 50 steps, guidance 7.5; ``tiny`` and
    other pipelines built in memory: 20 steps, guidance 7.5), at the native size (the UNet's
    ``sample_size`` × the VAE's scale factor: 512 px for SD 1.5, 768 for SD 2.1).

    Returns:
        ``num_inference_steps``, ``guidance_scale``, ``height``, ``width``: keyword arguments of
        the pipeline's call (``pipe(prompt, **generation_defaults(pipe))``).

    Example:
        >>> generation_defaults(load_pipeline("~/models/sd15"))
        {'num_inference_steps': 50, 'guidance_scale': 7.5, 'height': 512, 'width': 512}
    """
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    folder = getattr(pipe, "name_or_path", None)
    family = GENERATION_DEFAULTS["sd" if folder else "tiny"]
    defaults: dict[str, Any] = {**family, "height": size, "width": size}
    saved = _saved_defaults(Path(folder)) if folder else {}
    defaults.update({k: saved[k] for k in defaults if k in saved})
    return defaults


def defaults_origin(pipe: StableDiffusionPipeline) -> dict[str, str]:
    """Where :func:`generation_defaults` took this model's defaults from (for settings files).

    Returns:
        ``{"family": ..., "source": ...}``: family ``"own"`` (the folder's ``attnprobe.json``,
        e.g. the toy), ``"sd"`` (an SD 1.x/2.x folder) or ``"tiny"`` (built in memory).

    Example:
        >>> defaults_origin(load_pipeline("tiny"))["family"]
        'tiny'
    """
    folder = getattr(pipe, "name_or_path", None)
    if folder and (Path(folder) / "attnprobe.json").is_file():
        return {"family": "own", "source": str(Path(folder) / "attnprobe.json")}
    if folder:
        return {"family": "sd", "source": "SD 1.x/2.x folder: GENERATION_DEFAULTS['sd']"}
    return {"family": "tiny", "source": "built in memory: GENERATION_DEFAULTS['tiny']"}


def _vae_scale(vae_config: Any) -> int:
    """Pixels per latent position, as diffusers' SD pipelines compute it (8 without a VAE)."""
    if vae_config is None:
        return 8
    return int(2 ** (len(vae_config["block_out_channels"]) - 1))


def _saved_defaults(folder: Path) -> dict[str, Any]:
    """The model folder's ``attnprobe.json`` (its sampling defaults), or ``{}``."""
    path = folder / "attnprobe.json"
    return dict(json.loads(path.read_text())) if path.is_file() else {}


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


def run_layer_table(
    pipe: StableDiffusionPipeline, height: int | None = None, width: int | None = None
) -> list[LayerInfo]:
    """The layer table of a run of ``pipe`` that generates ``height × width`` pixels.

    A layer table belongs to a run: resolution rules (``res<=16``, ``res<max``) mean query
    positions at the latent size generated. This is the table to resolve a spec with before the
    run's first UNet call (a dataset's memory plan, a sweep's ranges); from that call on the
    hooks hold the same table (``hooks.layers``).

    Args:
        pipe: the pipeline.
        height, width: image size in pixels (default: the model's,
            see :func:`generation_defaults`).

    Example:
        >>> [layer.resolution for layer in run_layer_table(load_pipeline("tiny"), 128)][:1]
        [(16, 8)]
    """
    defaults = generation_defaults(pipe)
    scale = pipe.vae_scale_factor
    h, w = height or defaults["height"], width or defaults["width"]
    return unet_layers(pipe.unet, h // scale, w // scale)


def layer_table(
    spec: str | Path = "toy", height: int | None = None, width: int | None = None
) -> list[LayerInfo]:
    """The attention-layer table of a model without loading its weights: its UNet is built
    from its config on the meta device (0.07 s for SD 1.5's config on this CPU).

    For commands with no run (``attnprobe layers``); a run's own table is
    :func:`run_layer_table` (or ``hooks.layers``, ``maps.layers``, ``ProbeResults.layer_table``).

    Args:
        spec: as :func:`load_pipeline`.
        height, width: image size in pixels (default: the model's own size).

    Raises:
        FileNotFoundError: as :func:`load_pipeline`.

    Example:
        >>> resolve_layers(layer_table("~/models/sd15"), "fpe")
        [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    """
    if str(spec) == "tiny":
        unet, scale, saved = tiny_unet(), _vae_scale(tiny_vae().config), {}
    else:
        folder = _resolve_folder(spec)
        config = UNet2DConditionModel.load_config(str(folder / "unet"))
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        vae = folder / "vae" / "config.json"
        scale = _vae_scale(json.loads(vae.read_text()) if vae.is_file() else None)
        saved = _saved_defaults(folder)
    size = unet.config.sample_size * scale
    h = height or saved.get("height", size)
    w = width or saved.get("width", size)
    return unet_layers(unet, h // scale, w // scale)


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
    pipeline_class = str(json.loads((folder / "model_index.json").read_text()).get("_class_name"))
    if pipeline_class.startswith("StableDiffusionXL"):
        # StableDiffusionPipeline would load it, dropping text_encoder_2, and fail at generation
        raise NotImplementedError(
            f"{folder} is an SDXL folder ({pipeline_class} in model_index.json): attnprobe loads "
            "SD 1.x/2.x folders only so far; SDXL support is issue 14. Use an SD 1.x/2.x folder "
            "or --model toy."
        )
    # The safety checker is never loaded: safety_checker=None drops it (SD 1.x folders list it,
    # SD 2.x list [null, null]), and requires_safety_checker=False keeps diffusers from warning
    # that it is missing; images come back unfiltered. The feature extractor still loads.
    # dtype: SD 2.x configs record float16 (their save dtype), which transformers 5 would load
    # the text encoder in, next to a float32 UNet; load_pipeline's dtype casts afterwards.
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
        dtype=torch.float32,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe

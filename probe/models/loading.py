"""Load a Stable Diffusion pipeline: the embedded ``toy`` model, the random ``tiny``,
``tiny-xl``, ``tiny-sd3`` and ``tiny-flux`` ones, or a diffusers SD 1.x/2.x, SDXL, SD3 or Flux
folder on disk.
Nothing here touches the network. What differs per model family is in :mod:`probe.models.family`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from probe.attention.dit_layers import denoiser_of, dit_layers, is_dit, native_latent
from probe.attention.layers import LayerInfo, unet_layers
from probe.models.family import family_of, family_of_folder
from probe.models.tiny import BASE_WORDS as BASE_WORDS
from probe.models.tiny import assemble_pipeline as assemble_pipeline
from probe.models.tiny import build_tiny_pipeline as build_tiny_pipeline
from probe.models.tiny import build_tiny_xl_pipeline as build_tiny_xl_pipeline
from probe.models.tiny import sd_ddim_scheduler as sd_ddim_scheduler
from probe.models.tiny import tiny_text_encoder as tiny_text_encoder
from probe.models.tiny import tiny_unet as tiny_unet
from probe.models.tiny import tiny_vae as tiny_vae
from probe.models.tiny import tiny_words as tiny_words
from probe.models.tiny import tiny_xl_unet as tiny_xl_unet
from probe.models.tiny_dit import (
    build_tiny_flux_pipeline,
    build_tiny_sd3_pipeline,
    tiny_flux_transformer,
    tiny_sd3_transformer,
)

TOY_DIR = Path(__file__).resolve().parents[1] / "toy" / "weights"
TOY_V2_DIR = Path(__file__).resolve().parents[1] / "toy" / "weights_v2"
TOY_FOLDERS: dict[str, Path] = {"toy": TOY_DIR, "toy-v2": TOY_V2_DIR}
"""The embedded trained toys by name: ``toy`` (world v1, ten colours, the default) and
``toy-v2`` (world v2, sixteen colours, a frozen contrastive text encoder; docs/toy_v2)."""

HOW_TO_GET_WEIGHTS = (
    "attnprobe never downloads weights. On a machine with internet, save a diffusers Stable "
    "Diffusion 1.x/2.x, SDXL, SD3 or Flux folder, e.g. `huggingface-cli download "
    "stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir ./sd15` (or "
    "`StableDiffusionPipeline.from_pretrained(...).save_pretrained('./sd15')`), copy it here "
    "and pass its path; or use the built-in 'toy', 'toy-v2', 'tiny', 'tiny-xl', 'tiny-sd3' or "
    "'tiny-flux' models."
)


GENERATION_DEFAULTS: dict[str, dict[str, Any]] = {
    # a diffusers SD 1.x/2.x folder: the settings of the official FPE, Prompt-to-Prompt and
    # MasaCtrl code (50 DDIM steps, guidance 7.5), at the UNet's native size
    "sd": {"num_inference_steps": 50, "guidance_scale": 7.5},
    # a diffusers SDXL folder: the same (MasaCtrl's SDXL script: DDIM, 50 steps, guidance 7.5;
    # diffusers' own SDXL call defaults to 5.0), at the UNet's native size (1024 px)
    "sdxl": {"num_inference_steps": 50, "guidance_scale": 7.5},
    # a diffusers SD3 folder: diffusers' StableDiffusion3Pipeline defaults (28 flow-match Euler
    # steps, guidance 7.0, as on the SD3 medium model card), at 1024 px
    "sd3": {"num_inference_steps": 28, "guidance_scale": 7.0},
    # a diffusers Flux folder: FluxPipeline's defaults for FLUX.1-dev (28 steps, distilled
    # guidance 3.5, no unconditional batch half), at 1024 px
    "flux": {"num_inference_steps": 28, "guidance_scale": 3.5},
    # a pipeline assembled in memory (the random "tiny", "tiny-xl"): few steps, for tests
    "tiny": {"num_inference_steps": 20, "guidance_scale": 7.5},
}
"""Sampling defaults per model family. A folder's ``attnprobe.json`` (the toy ships one) wins."""


def generation_defaults(pipe: StableDiffusionPipeline) -> dict[str, Any]:
    """Steps, guidance and image size a model is meant to be sampled with.

    Read from ``attnprobe.json`` in the model's folder when there is one (the toy model ships
    its own: 20 steps, guidance 4.0, 64 px), else the family's row of
    :data:`GENERATION_DEFAULTS` (an SD 1.x/2.x or SDXL folder: 50 steps, guidance 7.5; ``tiny``,
    ``tiny-xl`` and other pipelines built in memory: 20 steps, guidance 7.5), at the native size
    (the UNet's ``sample_size`` × the VAE's scale factor: 512 px for SD 1.5, 768 for SD 2.1,
    1024 for SDXL).

    Returns:
        ``num_inference_steps``, ``guidance_scale``, ``height``, ``width``: keyword arguments of
        the pipeline's call (``pipe(prompt, **generation_defaults(pipe))``).

    Example:
        >>> generation_defaults(load_pipeline("~/models/sd15"))
        {'num_inference_steps': 50, 'guidance_scale': 7.5, 'height': 512, 'width': 512}
    """
    size = native_latent(denoiser_of(pipe))[0] * pipe.vae_scale_factor
    folder = getattr(pipe, "name_or_path", None)
    family = GENERATION_DEFAULTS[family_of(pipe).name if folder else "tiny"]
    defaults: dict[str, Any] = {**family, "height": size, "width": size}
    saved = _saved_defaults(Path(folder)) if folder else {}
    defaults.update({k: saved[k] for k in defaults if k in saved})
    return defaults


def defaults_origin(pipe: StableDiffusionPipeline) -> dict[str, str]:
    """Where :func:`generation_defaults` took this model's defaults from (for settings files).

    Returns:
        ``{"family": ..., "source": ...}``: family ``"own"`` (the folder's ``attnprobe.json``,
        e.g. the toy), ``"sd"`` (an SD 1.x/2.x folder), ``"sdxl"`` (an SDXL folder) or
        ``"tiny"`` (built in memory).

    Example:
        >>> defaults_origin(load_pipeline("tiny"))["family"]
        'tiny'
    """
    folder = getattr(pipe, "name_or_path", None)
    if folder and (Path(folder) / "attnprobe.json").is_file():
        return {"family": "own", "source": str(Path(folder) / "attnprobe.json")}
    if folder:
        family = family_of(pipe)
        return {
            "family": family.name,
            "source": f"{family.title} folder: GENERATION_DEFAULTS['{family.name}']",
        }
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


BUILT_IN = {
    "tiny": build_tiny_pipeline,
    "tiny-xl": build_tiny_xl_pipeline,
    "tiny-sd3": build_tiny_sd3_pipeline,
    "tiny-flux": build_tiny_flux_pipeline,
}
"""The random models built in memory, by name (:mod:`probe.models.tiny`)."""


def load_pipeline(
    spec: str | Path = "toy",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Load a Stable Diffusion pipeline, offline.

    Args:
        spec: ``"toy"`` (the embedded trained toy model), ``"toy-v2"`` (the toy of world v2,
            sixteen colours), ``"tiny"`` (random weights, SD 1.x
            topology, for tests), ``"tiny-xl"``, ``"tiny-sd3"``, ``"tiny-flux"`` (random weights,
            SDXL / SD3 / Flux topology, for tests) or the path of a diffusers SD 1.x/2.x, SDXL,
            SD3 or Flux folder (told apart by the ``_class_name`` of its model_index.json).
        device: where to put it (default: CPU).
        dtype: weights' dtype (default: float32).

    Returns:
        A ``StableDiffusionPipeline`` (safety checker off) or, for an SDXL folder and
        ``tiny-xl``, a ``StableDiffusionXLPipeline`` (its invisible watermark off); a
        ``StableDiffusion3Pipeline`` or ``FluxPipeline`` for those folders and models. A model
        with a closed vocabulary (the toy) refuses prompts with a word it never learned
        (:mod:`probe.models.vocabulary`); real checkpoints and ``tiny`` take any word.

    Raises:
        FileNotFoundError: the spec is neither a built-in model nor a folder on disk, or the
            folder is not a diffusers pipeline.
        NotImplementedError: a folder of a family attnprobe does not load yet (PixArt, Flux
            Kontext, ...).

    Example:
        >>> pipe = load_pipeline("tiny")
        >>> image = pipe("a red car", num_inference_steps=5).images[0]
        >>> type(load_pipeline("~/models/sdxl-base")).__name__
        'StableDiffusionXLPipeline'
    """
    from probe.models.vocabulary import refuse_unknown_words

    built = BUILT_IN.get(str(spec))
    pipe = built() if built else _load_folder(_resolve_folder(spec))
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    refuse_unknown_words(pipe)  # the toy's closed vocabulary: a word it never learned fails
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
    denoiser = denoiser_of(pipe)
    table = dit_layers if is_dit(denoiser) else unet_layers
    return table(denoiser, h // scale, w // scale)


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
    if str(spec) in BUILT_IN:
        built: dict[str, Any] = {
            "tiny": tiny_unet, "tiny-xl": tiny_xl_unet, "tiny-sd3": tiny_sd3_transformer,
            "tiny-flux": tiny_flux_transformer,
        }  # fmt: skip
        unet = built[str(spec)]()
        scale, saved = _vae_scale(tiny_vae().config), {}
    else:
        folder = _resolve_folder(spec)
        unet = _empty_denoiser(folder)
        vae = folder / "vae" / "config.json"
        scale = _vae_scale(json.loads(vae.read_text()) if vae.is_file() else None)
        saved = _saved_defaults(folder)
    size = native_latent(unet)[0] * scale
    h = height or saved.get("height", size)
    w = width or saved.get("width", size)
    table = dit_layers if is_dit(unet) else unet_layers
    return table(unet, h // scale, w // scale)


def _empty_denoiser(folder: Path) -> Any:
    """The folder's UNet (or SD3 transformer) built from its config on the meta device."""
    if (folder / "transformer" / "config.json").is_file():
        config = SD3Transformer2DModel.load_config(str(folder / "transformer"))
        flux = "num_single_layers" in config
        cls: Any = FluxTransformer2DModel if flux else SD3Transformer2DModel
    else:
        cls = UNet2DConditionModel
        config = cls.load_config(str(folder / "unet"))
    with torch.device("meta"):
        return cls.from_config(config)


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
    toy = TOY_FOLDERS.get(str(spec))
    if toy is not None:
        if not (toy / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the {spec} model's weights are not in {toy}: train them with "
                "`attnprobe toy train --out <dir>` or use --model tiny"
            )
        return toy
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"model {str(spec)!r} is not 'toy', 'toy-v2', 'tiny', 'tiny-xl', 'tiny-sd3', "
            "'tiny-flux' or a folder on disk. "
            f"{HOW_TO_GET_WEIGHTS}"
        )
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json). "
            f"{HOW_TO_GET_WEIGHTS}"
        )
    return folder


def _load_folder(folder: Path) -> Any:
    pipeline_class = str(json.loads((folder / "model_index.json").read_text()).get("_class_name"))
    family = family_of_folder(pipeline_class, folder).name
    if family == "sdxl":
        return _load_sdxl_folder(folder)
    if family == "sd3":
        return _load_sd3_folder(folder)
    if family == "flux":
        flux = FluxPipeline.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        flux.set_progress_bar_config(disable=True)
        return flux
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


def _load_sdxl_folder(folder: Path) -> StableDiffusionXLPipeline:
    """An SDXL folder (StableDiffusionPipeline would load it without text_encoder_2 and fail
    at generation). No invisible watermark: it would change every image decoded after the
    VAE, and attnprobe compares images (recording leaves them unchanged, identity edits); the
    dtype as for SD folders (SDXL's configs record float16)."""
    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(folder), local_files_only=True, add_watermarker=False, dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_sd3_folder(folder: Path) -> StableDiffusion3Pipeline:
    """An SD3 folder, in float32 (its configs record float16); a folder without T5
    (``text_encoder_3`` null in model_index.json) loads without it, and its T5 tokens are zeros,
    as diffusers does."""
    index = json.loads((folder / "model_index.json").read_text())
    absent = {  # diffusers refuses a null T5 in model_index.json unless it is passed as None
        name: None
        for name in ("text_encoder_3", "tokenizer_3")
        if (index.get(name) or [None])[0] is None or not (folder / name).is_dir()
    }
    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(folder), local_files_only=True, dtype=torch.float32, **absent
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe

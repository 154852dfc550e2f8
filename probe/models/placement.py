"""Where a pipeline's weights live and in which dtype: ``--dtype`` and ``--offload``.

    pipe = load_pipeline("~/models/flux-dev", dtype=torch.bfloat16, offload="model")
    execution_device(pipe)       # cuda:0, though every weight waits on the CPU between uses

A folder loads in the dtype asked, with no float32 copy on the way: a float16 (or bfloat16) load
reads the folder's ``fp16`` variant files where it has them (``unet/*.fp16.safetensors``, as SD
1.5 and SDXL ship), which diffusers loads into weights of that dtype straight from disk.
Offload is diffusers' own: ``model`` moves each model to the device for its forward and back
(``enable_model_cpu_offload``), ``sequential`` streams every submodule's weights
(``enable_sequential_cpu_offload``). Under offload ``pipe.device`` says ``cpu``; the device
attnprobe computes on is :func:`execution_device`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""The ``--dtype`` names."""

OFFLOAD_MODES = ("none", "model", "sequential")
"""The ``--offload`` values."""

HALF = (torch.float16, torch.bfloat16)
FP16_VARIANT = "fp16"


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype of a ``--dtype`` value (``None`` stays ``None``: the default, float32).

    Raises:
        ValueError: not one of :data:`DTYPES`.

    Example:
        >>> parse_dtype("bfloat16")
        torch.bfloat16
    """
    if name is None or isinstance(name, torch.dtype):
        return name
    dtype = DTYPES.get(str(name).removeprefix("torch."))
    if dtype is None:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return dtype


def cast_pipeline(pipe: Any, dtype: torch.dtype) -> Any:
    """``pipe.to(dtype=dtype)`` for a pipeline built in memory, without diffusers' warning that
    casting may undo modules kept in float32 (it warns even when a model keeps none)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return pipe.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def pretrained_options(folder: Path, dtype: torch.dtype | None) -> dict[str, Any]:
    """``from_pretrained`` keywords that load ``folder`` in ``dtype`` (default float32) without
    a float32 detour: ``variant="fp16"`` for a half dtype when the folder has ``fp16`` variant
    weight files (components without one load their plain files, cast per tensor).

    Folders record their save dtype (float16 for SD 2.x and SDXL), which transformers would
    load the text encoders in next to a float32 UNet: the dtype is always passed.

    A bfloat16 load from an ``fp16`` variant rounds twice (float32 to float16 when the file was
    written, float16 to bfloat16 now): at most one bfloat16 unit in the last place apart from
    a cast of the float32 file, for half the bytes read.
    """
    dtype = dtype or torch.float32
    options: dict[str, Any] = {"dtype": dtype}
    if dtype in HALF and has_fp16_variant(folder):
        options["variant"] = FP16_VARIANT
    return options


def has_fp16_variant(folder: Path) -> bool:
    """Whether a component of ``folder`` has ``fp16`` variant weights (``*.fp16.safetensors``,
    or shards ``*.fp16-00001-of-00002.safetensors``)."""
    return any(
        p.is_file() for pattern in ("*/*.fp16.safetensors", "*/*.fp16-*.safetensors")
        for p in folder.glob(pattern)
    )  # fmt: skip


def place_pipeline(pipe: Any, device: str | torch.device | None, offload: str = "none") -> Any:
    """Put ``pipe`` on ``device``, or offload it to the CPU between uses on ``device``.

    Args:
        pipe: a diffusers pipeline.
        device: where it computes (default: CPU; with offload, this process's GPU when CUDA is
            available, else the CPU).
        offload: ``"none"``, ``"model"`` (diffusers' ``enable_model_cpu_offload``: a whole
            model on the device for its forward) or ``"sequential"``
            (``enable_sequential_cpu_offload``: one submodule's weights at a time).

    Raises:
        ValueError: an unknown offload, or ``sequential`` on the CPU.
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload {offload!r} is not one of {', '.join(OFFLOAD_MODES)}")
    if offload == "none":
        return pipe if device is None else pipe.to(device=device)
    from probe.models.devices import resolve_device

    target = resolve_device(device)
    if offload == "sequential" and target.type == "cpu":
        raise ValueError(
            "offload 'sequential' computes on the CPU here: every layer's weights would be "
            "moved from the CPU to the CPU (accelerate fails on the tied text embedding "
            "there); use --offload none on a CPU, or --offload model, or --device cuda"
        )
    if offload == "model":
        pipe.enable_model_cpu_offload(device=target)
    else:
        pipe.enable_sequential_cpu_offload(device=target)
    return pipe


def execution_device(pipe: Any) -> torch.device:
    """The device ``pipe``'s models compute on: the offload target under diffusers' CPU
    offload (where ``pipe.device`` is the CPU), else ``pipe.device``."""
    device = getattr(pipe, "_execution_device", None)
    return torch.device(device) if device is not None else torch.device(pipe.device)

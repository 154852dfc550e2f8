"""The steps, guidance and size a model is meant to be sampled with, and where they came from.

    generation_defaults(load_pipeline("~/models/sd15"))   # {'num_inference_steps': 50, ...}
    defaults_origin(load_pipeline("toy"))                 # {'family': 'own', 'source': ...}

A folder's own ``attnprobe.json`` (the toys ship one) wins over its family's row
(:attr:`probe.families.base.ModelFamily.generation_defaults`); pipelines built in memory (the
random ``tiny`` models) take :data:`BUILT_IN_DEFAULTS`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from probe.families import family_of

BUILT_IN_DEFAULTS: dict[str, Any] = {"num_inference_steps": 20, "guidance_scale": 7.5}
"""A pipeline assembled in memory (the random ``tiny``, ``tiny-xl``, ...): few steps, for tests."""


def generation_defaults(pipe: Any) -> dict[str, Any]:
    """Steps, guidance and image size a model is meant to be sampled with.

    Read from ``attnprobe.json`` in the model's folder when there is one (the toy model ships
    its own: 20 steps, guidance 4.0, 64 px), else the family's defaults (an SD 1.x/2.x or SDXL
    folder: 50 steps, guidance 7.5; SD3: 28, 7.0; Flux: 28, 3.5; pipelines built in memory:
    20 steps, guidance 7.5), at the native size (the denoiser's ``sample_size`` × the VAE's
    scale factor: 512 px for SD 1.5, 768 for SD 2.1, 1024 for SDXL).

    Returns:
        ``num_inference_steps``, ``guidance_scale``, ``height``, ``width``: keyword arguments of
        the pipeline's call (``pipe(prompt, **generation_defaults(pipe))``).

    Example:
        >>> generation_defaults(load_pipeline("~/models/sd15"))
        {'num_inference_steps': 50, 'guidance_scale': 7.5, 'height': 512, 'width': 512}
    """
    family = family_of(pipe)
    size = family.native_latent(family.denoiser(pipe))[0] * pipe.vae_scale_factor
    folder = getattr(pipe, "name_or_path", None)
    row = family.generation_defaults if folder else BUILT_IN_DEFAULTS
    defaults: dict[str, Any] = {**row, "height": size, "width": size}
    saved = saved_defaults(Path(folder)) if folder else {}
    defaults.update({k: saved[k] for k in defaults if k in saved})
    return defaults


def defaults_origin(pipe: Any) -> dict[str, str]:
    """Where :func:`generation_defaults` took this model's defaults from (for settings files).

    Returns:
        ``{"family": ..., "source": ...}``: family ``"own"`` (the folder's ``attnprobe.json``,
        e.g. the toy), the family's name (``"sd"``, ``"sdxl"``, ...; a folder of that family)
        or ``"tiny"`` (built in memory).

    Example:
        >>> defaults_origin(load_pipeline("tiny"))["family"]
        'tiny'
    """
    folder = getattr(pipe, "name_or_path", None)
    if folder and (Path(folder) / "attnprobe.json").is_file():
        return {"family": "own", "source": str(Path(folder) / "attnprobe.json")}
    if folder:
        family = family_of(pipe)
        source = f"{family.title} folder: probe.families.{family.name} generation_defaults"
        return {"family": family.name, "source": source}
    return {"family": "tiny", "source": "built in memory: BUILT_IN_DEFAULTS"}


def saved_defaults(folder: Path) -> dict[str, Any]:
    """The model folder's ``attnprobe.json`` (its sampling defaults), or ``{}``."""
    path = folder / "attnprobe.json"
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def saved_vital_blocks(pipe: Any) -> list[int] | None:
    """The vital blocks measured for this model (``vital_blocks`` in its folder's
    ``attnprobe.json``: layer indices in attnprobe's numbering), or ``None`` when the folder
    has none (or the pipeline was built in memory). The ``vital`` layer preset reads it where
    the pipeline is known (:class:`editing.methods.kv_injection.KVInjection`); without it the
    family's rule applies (FLUX.1-dev's published set, :meth:`ModelFamily.vital_rule`).

    Raises:
        ValueError: ``vital_blocks`` is not a list of non-negative ints.
    """
    folder = getattr(pipe, "name_or_path", None)
    if not folder:
        return None
    saved = saved_defaults(Path(folder)).get("vital_blocks")
    if saved is None:
        return None
    if not isinstance(saved, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in saved
    ):
        raise ValueError(
            f"{Path(folder) / 'attnprobe.json'}: vital_blocks={saved!r} is not a list of layer "
            "indices: write e.g. [0, 1, 5] (see `attnprobe layers --model ...`)"
        )
    return list(saved)


def vae_scale(vae_config: Any) -> int:
    """Pixels per latent position, as diffusers' pipelines compute it (8 without a VAE)."""
    if vae_config is None:
        return 8
    return int(2 ** (len(vae_config["block_out_channels"]) - 1))

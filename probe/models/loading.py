"""Load a pipeline, offline: the embedded ``toy`` models, the random ``tiny`` ones, or a
diffusers folder of any family attnprobe knows (:mod:`probe.families`).

    pipe = load_pipeline("toy")                 # or "toy-v2", "tiny", "tiny-xl", "tiny-sd3", ...
    pipe = load_pipeline("~/models/sd15", dtype=torch.float16)   # its fp16 files, no float32 copy
    pipe = load_pipeline("~/models/flux-dev", dtype=torch.bfloat16, offload="model")

Nothing here touches the network. Which family a folder is, and how it loads, is the family's
knowledge; this module resolves names and folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from probe.families import FAMILIES, family_of_folder
from probe.toy.weight_folders import TOY_DIR as TOY_DIR
from probe.toy.weight_folders import TOY_FOLDERS as TOY_FOLDERS
from probe.toy.weight_folders import TOY_TRAIN_COMMANDS
from probe.toy.weight_folders import TOY_V2_DIR as TOY_V2_DIR

BUILT_IN: dict[str, Any] = {
    name: build for f in reversed(FAMILIES) for name, build in f.built_in.items()
}
"""The random models built in memory, by name (each family's ``built_in``)."""

HOW_TO_GET_WEIGHTS = (
    "attnprobe never downloads weights. On a machine with internet, save a diffusers folder "
    "of a family attnprobe loads (SD 1.x/2.x, SDXL, SD3, Flux, PixArt-Σ), e.g. "
    "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir ./sd15` "
    "(or `StableDiffusionPipeline.from_pretrained(...).save_pretrained('./sd15')`), copy it here "
    "and pass its path; or use a built-in model: "
    + ", ".join(repr(n) for n in [*TOY_FOLDERS, *BUILT_IN])
    + "."
)


def load_pipeline(
    spec: str | Path = "toy",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    offload: str = "none",
) -> Any:
    """Load a pipeline, offline.

    Args:
        spec: ``"toy"`` (the embedded trained toy model), ``"toy-v2"`` (the toy of world v2,
            sixteen colours), ``"toy-flux"`` (world v2 on Flux's topology), a random model
            built in memory for tests (``"tiny"``, ``"tiny-xl"``, ``"tiny-sd3"``,
            ``"tiny-flux"``, ``"tiny-pixart"``: SD 1.x, SDXL, SD3, Flux, PixArt-Σ topology)
            or the path of a diffusers folder of a family attnprobe knows, told apart by the
            ``_class_name`` of its model_index.json (:func:`probe.families.family_of_folder`).
        device: where it computes (default: CPU; with ``offload``, this process's GPU when
            CUDA is available).
        dtype: weights' dtype, a torch dtype or ``"float32"`` / ``"float16"`` /
            ``"bfloat16"`` (default: float32). A folder is loaded in it with no float32 copy
            on the way, from its ``fp16`` variant files for a half dtype where it has them
            (:func:`probe.models.placement.pretrained_options`).
        offload: ``"none"`` (default), ``"model"`` or ``"sequential"``: diffusers' CPU
            offload onto ``device`` (:func:`probe.models.placement.place_pipeline`); the hooks,
            recording and editing run under it.

    Returns:
        The family's pipeline (``StableDiffusionPipeline`` with the safety checker off,
        ``StableDiffusionXLPipeline`` without the invisible watermark,
        ``StableDiffusion3Pipeline``, ``FluxPipeline``, ``PixArtSigmaPipeline``). A model with
        a closed vocabulary (the toy) refuses prompts with a word it never learned
        (:mod:`probe.models.vocabulary`); real checkpoints and ``tiny`` take any word.

    Raises:
        FileNotFoundError: the spec is neither a built-in model nor a folder on disk, or the
            folder is not a diffusers pipeline.
        NotImplementedError: a folder of a family attnprobe does not load yet (PixArt-α, Sana,
            Flux Kontext, ...).
        ValueError: an unknown dtype or offload, or ``offload="sequential"`` on the CPU.

    Example:
        >>> pipe = load_pipeline("tiny")
        >>> image = pipe("a red car", num_inference_steps=5).images[0]
        >>> type(load_pipeline("~/models/sdxl-base")).__name__
        'StableDiffusionXLPipeline'
    """
    from probe.models.placement import OFFLOAD_MODES, cast_pipeline, parse_dtype, place_pipeline
    from probe.models.vocabulary import refuse_unknown_words

    dtype = parse_dtype(dtype)
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload {offload!r} is not one of {', '.join(OFFLOAD_MODES)}")
    built = BUILT_IN.get(str(spec))
    if built is not None:
        pipe = built()  # built in float32 (small): cast whole
        if dtype is not None:
            pipe = cast_pipeline(pipe, dtype)
    else:  # loaded in the dtype; no cast after: it would put back in half precision what
        folder = resolve_folder(spec)  # transformers keeps in float32 (T5's ``wo`` layers)
        pipe = family_of_folder(folder).load(folder, dtype)
    pipe = place_pipeline(pipe, device, offload)
    refuse_unknown_words(pipe)  # the toy's closed vocabulary: a word it never learned fails
    return pipe


def resolve_folder(spec: str | Path) -> Path:
    """The folder of a toy name or a path, checked to be a diffusers pipeline folder.

    Raises:
        FileNotFoundError: neither a built-in model nor a folder; no model_index.json.
    """
    toy = TOY_FOLDERS.get(str(spec))
    if toy is not None:
        if not (toy / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the {spec} model's weights are not in {toy}: train them with "
                f"`{TOY_TRAIN_COMMANDS[str(spec)]}` and copy <dir>/model there, or use --model tiny"
            )
        return toy
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"model {str(spec)!r} is not "
            f"{', '.join(repr(n) for n in [*TOY_FOLDERS, *BUILT_IN])} or a folder on disk. "
            f"{HOW_TO_GET_WEIGHTS}"
        )
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json). "
            f"{HOW_TO_GET_WEIGHTS}"
        )
    return folder

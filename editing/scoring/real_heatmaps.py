"""Heat maps of real images scored against masks from a folder: ``segment-score --images DIR``.

    report = score_folder(load_pipeline("/models/sd15"), "data/seg")
    report.summary()["cross/all"]["miou"]

The folder (see docs/segmentation.md):

- ``NAME.png`` (or ``.jpg``, ``.jpeg``): an RGB image;
- ``NAME_mask.png``: its object's mask, white (> 127 in grey) = object;
- ``prompts.json``: ``{"NAME": {"prompt": "a photo of a car", "word": "car"}, ...}``, the prompt
  the model sees the image with and the word whose maps are scored (a word of the prompt);
  optional ``"concepts": ["road", "sky"]`` (SD3, Flux: the concepts the word competes with in
  ConceptAttention's softmax; default ``["background"]``).

How the model sees a real image: it is inverted with its prompt and no guidance (DDIM on a UNet:
:func:`editing.inversion.ddim_invert`; the flow's Euler sampler run backwards on SD3/Flux:
:func:`editing.flow_inversion.flow_invert`), then denoised back from the inversion's noisiest
latent with the same prompt and no guidance (:func:`editing.inversion.reconstruct`) while the
maps are recorded. Nothing is forced: an unguided DDIM/Euler reconstruction with the prompt it
was inverted with follows the inverted trajectory up to the inversion's error, which the report
gives per image (``reconstruction_psnr``: the reconstruction against the VAE round trip of the
image, in dB). This was chosen over denoising from a noised latent of the image (img2img-style)
because the inversion gives the maps of every step, from pure noise on, as a generation does, so
the real images' numbers read like the toys'; and over forcing the source row onto the
inverted latents because a forced row would be recorded at latents the model did not produce,
which differ from the unforced ones by the reconstruction error that is reported.

Sizes: an image of another size than the model's is resized to it (bicubic) and the mask is
scored at the image's own size (the maps are upsampled to it, as for the toys); a mask of another
size than its image is resized to the image (nearest) and the report's ``notes`` say so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from probe.scoring.heatmap_scores import SegmentReport, heatmaps_of
from probe.scoring.segmentation import segment_scores

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_TAIL = "_mask"
PROMPTS_FILE = "prompts.json"
DEFAULT_CONCEPTS = ("background",)


@dataclass
class RealImage:
    """One image of the folder: its files, prompt, word and (SD3, Flux) concepts."""

    name: str
    image: Path
    mask: Path
    prompt: str
    word: str
    concepts: list[str] = field(default_factory=lambda: list(DEFAULT_CONCEPTS))


def read_folder(folder: str | Path) -> list[RealImage]:
    """The images, masks and prompts of ``folder``, checked (see the module for the layout).

    Raises:
        FileNotFoundError: no such folder, no ``prompts.json``, no image, or an image without
            its ``NAME_mask.png`` (every missing mask named).
        ValueError: an image missing from ``prompts.json``, an entry without ``prompt`` or
            ``word``, or a word that is not a word of its prompt (the image and the word named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [p for p in files if not p.stem.endswith(MASK_TAIL)]
    if not images:
        raise FileNotFoundError(
            f"{folder} holds no image (NAME.png, .jpg or .jpeg beside NAME_mask.png)"
        )
    missing = [f"{p.name} ({p.stem}{MASK_TAIL}.png)" for p in images
               if not (folder / f"{p.stem}{MASK_TAIL}.png").is_file()]  # fmt: skip
    if missing:
        raise FileNotFoundError(
            f"{folder}: no mask for {', '.join(missing)}: each image NAME.png needs "
            f"NAME{MASK_TAIL}.png beside it (white = the object)"
        )
    prompts_file = folder / PROMPTS_FILE
    if not prompts_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no {PROMPTS_FILE}: write "
            '{"NAME": {"prompt": "a photo of a car", "word": "car"}} for each image'
        )
    table = json.loads(prompts_file.read_text())
    out = []
    for path in images:
        entry = table.get(path.stem)
        if not isinstance(entry, dict) or "prompt" not in entry or "word" not in entry:
            raise ValueError(
                f"{prompts_file}: no entry for image {path.name}: add "
                f'"{path.stem}": {{"prompt": "...", "word": "..."}}'
            )
        prompt, word = str(entry["prompt"]), str(entry["word"])
        if word.lower() not in re.findall(r"[\w'-]+", prompt.lower()):
            raise ValueError(
                f"image {path.name}: the word {word!r} is not in its prompt {prompt!r}: the maps "
                "scored are those of a word of the prompt"
            )
        concepts = [str(c) for c in entry.get("concepts", DEFAULT_CONCEPTS)]
        out.append(RealImage(path.stem, path, folder / f"{path.stem}{MASK_TAIL}.png", prompt,
                             word, concepts))  # fmt: skip
    return out


def read_mask(path: Path, size: tuple[int, int], notes: list[str]) -> np.ndarray:
    """The mask at ``size`` (width, height) as bool ``[H, W]`` (grey > 127); resized nearest,
    with a note, where it has another size."""
    mask = Image.open(path).convert("L")
    if mask.size != size:
        notes.append(f"{path.name} is {mask.size[0]}x{mask.size[1]}, its image {size[0]}x"
                     f"{size[1]}: resized nearest to the image")  # fmt: skip
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return np.asarray(mask) > 127


def score_folder(
    pipe: Any,
    folder: str | Path,
    num_steps: int | None = None,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> SegmentReport:
    """Invert each image of ``folder``, record its maps while denoising back, score them.

    Args:
        pipe: any pipeline attnprobe records (UNets: DDIM inversion; SD3, Flux: flow inversion,
            and concept maps).
        folder: images, masks and ``prompts.json`` (see the module).
        num_steps: inversion and denoising steps (default the model's).
        progress: show a progress bar.
        settings: extra entries for the report's settings.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_folder`.
    """
    from editing.inversion import ddim_invert
    from editing.sampling import decode
    from editing.scoring.images import psnr
    from probe.families import family_of
    from probe.models import generation_defaults
    from probe.models.vocabulary import check_known_words
    from probe.recording.concepts import record_concepts
    from probe.recording.recorder import record_attention

    items = read_folder(folder)
    check_known_words(pipe, [it.prompt for it in items])
    d = generation_defaults(pipe)
    steps = int(num_steps or d["num_inference_steps"])
    size = (int(d["width"]), int(d["height"]))
    concepts = "text_image" in family_of(pipe).kinds
    flow = _is_flow(pipe, steps)
    notes: list[str] = []
    report = SegmentReport(settings={
        "model": str(getattr(pipe, "name_or_path", "") or ""), "images_folder": str(folder),
        "num_inference_steps": steps, "guidance_scale": 1.0, "height": size[1],
        "width": size[0],
        "inversion": "flow_invert (inverse Euler)" if flow else "ddim_invert",
        "recorded_while": "denoising back from the inversion with the prompt, unguided "
                          "(as editing.inversion.reconstruct)",
        "mask": "NAME_mask.png of the folder, white = object",
        "protocol": "Chefer et al.: min-max, nearest upsampling, binarised at the mean",
        "left_out_reason": "their mask is empty or full",
        "notes": notes, **dict(settings or {}),
    })  # fmt: skip
    bar = tqdm(total=len(items), desc="segment-score", unit="image", disable=not progress)
    for it in items:
        image = Image.open(it.image).convert("RGB")
        mask = read_mask(it.mask, image.size, notes)
        if image.size != size:
            notes.append(
                f"{it.image.name} is {image.size[0]}x{image.size[1]}: resized to the model's "
                f"{size[0]}x{size[1]} (bicubic); scored at its own size"
            )
            image = image.resize(size, Image.Resampling.BICUBIC)
        inv = _invert(pipe, image, it.prompt, steps, flow, ddim_invert)
        back, maps = _denoise_recording(pipe, inv, lambda h, it=it: record_attention(
            pipe, kinds=("cross",), prompts=[it.prompt], hooks=h))  # fmt: skip
        cmaps = None
        if concepts:
            words = [it.word, *[c for c in it.concepts if c != it.word]]
            _, cmaps = _denoise_recording(pipe, inv, lambda h, w=words: record_concepts(
                pipe, w, hooks=h))  # fmt: skip
        round_trip = decode(pipe, inv.trajectory[-1])[0]
        report.images.append({
            "name": it.name, "prompt": it.prompt, "word": it.word,
            "object_pixels": int(mask.sum()), "mask_size": [mask.shape[1], mask.shape[0]],
            "reconstruction_psnr": round(float(psnr(back, round_trip)), 2),
            **({"concepts": [it.word, *it.concepts]} if concepts else {}),
        })  # fmt: skip
        for kind, heat in heatmaps_of(maps, it.word, 0, cmaps, concept_sample=0).items():
            report.scores.setdefault(kind, []).append(segment_scores(heat, mask))
        bar.update(1)
    bar.close()
    return report


def _is_flow(pipe: Any, steps: int) -> bool:
    """Whether the family samples with a flow-match Euler sampler (SD3, Flux): flow inversion."""
    from probe.families import family_of
    from probe.families.sampler import FlowSampler
    from probe.models import generation_defaults

    d, scale = generation_defaults(pipe), pipe.vae_scale_factor
    hw = (int(d["height"]) // scale, int(d["width"]) // scale)
    return isinstance(family_of(pipe).sampler(pipe, steps, hw), FlowSampler)


def _denoise_recording(pipe: Any, inv: Any, recording: Any) -> tuple[Image.Image, Any]:
    """Denoise ``inv``'s noisiest latent with its prompt and no guidance, as
    :func:`editing.inversion.reconstruct` does, inside ``recording(hooks)`` (a recording context
    added to the loop's hooks): the image and what was recorded."""
    import torch

    from editing.sampling import as_conditioning, decode, encode_prompts, loop_hooks, plain_step
    from probe.attention.batch import BatchLayout
    from probe.attention.clock import denoising_steps
    from probe.families import family_of

    latents = inv.trajectory[0].clone()
    latent_hw = (int(latents.shape[-2]), int(latents.shape[-1]))
    sampler = family_of(pipe).sampler(pipe, inv.num_steps, latent_hw)
    size = inv.pixel_size(pipe.vae_scale_factor)
    cond = as_conditioning(pipe, encode_prompts(pipe, [inv.prompt], False, size))
    hooks = loop_hooks(pipe, [], BatchLayout.for_samples(1, False), inv.num_steps, latent_hw)
    step = inv.step_rule() or plain_step
    with torch.no_grad(), hooks, recording(hooks) as recorded:
        for i, t in denoising_steps(pipe, sampler.timesteps):
            latents = step(sampler, i, t, latents, cond, False, 1.0)
    return decode(pipe, latents)[0], recorded


def _invert(pipe: Any, image: Image.Image, prompt: str, steps: int, flow: bool, ddim: Any) -> Any:
    if flow:
        from editing.flow_inversion import flow_invert

        return flow_invert(pipe, image, prompt, num_steps=steps)
    return ddim(pipe, image, prompt, num_steps=steps)

"""A toy PIE-Bench: the benchmark's format, drawn by the toy world, judged exactly.

    write_toy_pie_bench("runs/toy_pie", per_type=5, world="v2")   # mapping_file.json + PNGs
    judge_toy_edit(source, edited, item.extra["toy"])             # {"toy_success": 1.0, ...}

Three of PIE-Bench's edit types, each from a random scene of the world (category, colour,
background, layout from ``seed``):

- ``6`` change color: ``a [red] car in the park`` → ``a [blue] car …``; mask = the object;
- ``1`` change object: ``a red [dog] …`` → ``a red [horse] …`` in the same layout; mask = the
  source's object ∪ the target's (both rendered, so exact);
- ``8`` change background: ``… in the [park]`` → ``… in the [street]``; mask = everything but
  the object.

Masks are the renderer's own (the object's coverage > 1/2), run-length coded as PIE-Bench's
(:func:`~editing.bench.pie_metrics.encode_mask`); the reader then applies the reference's border
rule as for the real benchmark. Each item carries ``toy`` (world, slot, source and target
labels, the scene) so the runner adds the judges' columns (:func:`judge_toy_edit`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from editing.bench.pie_metrics import encode_mask
from editing.scoring.images import ImageLike, to_array
from probe.toy.world.world import Scene, get_world, random_layout, render_scene

TOY_TYPES = {"6": "colour", "1": "category", "8": "background"}
"""The PIE-Bench edit types the toy draws, and the scene slot each changes."""
_FOLDERS = {"6": "6_change_color", "1": "1_change_object", "8": "8_change_background"}


def toy_prompt(scene: Scene, bracket: str = "") -> str:
    """``a red car in the park``, the slot ``bracket`` (``colour``/``category``/``background``)
    in brackets."""
    words = {"colour": scene.colour, "category": scene.category, "background": scene.background}
    shown = {k: f"[{v}]" if k == bracket else v for k, v in words.items()}
    return f"a {shown['colour']} {shown['category']} in the {shown['background']}"


def write_toy_pie_bench(
    out: str | Path, per_type: int = 5, world: str = "v2", size: int = 64, seed: int = 0
) -> Path:
    """Write a toy PIE-Bench folder; the same arguments give the same files.

    Args:
        out: the folder (created): ``mapping_file.json`` and ``annotation_images/<type>/*.png``.
        per_type: items per edit type (3 types).
        world: the toy world (``v2``: toy-v2's; ``v1``: the shipped toy's).
        size: image side in pixels (the toy models' is 64).
        seed: seeds every scene and target.

    Returns:
        The path of ``mapping_file.json``.

    Example:
        >>> write_toy_pie_bench("runs/toy_pie", per_type=2)
        PosixPath('runs/toy_pie/mapping_file.json')
    """
    if per_type < 1:
        raise ValueError(f"per_type={per_type}: give at least 1 item per edit type")
    root = Path(out)
    rng = np.random.default_rng(seed)
    mapping: dict[str, Any] = {}
    for type_id, slot in TOY_TYPES.items():
        (root / "annotation_images" / _FOLDERS[type_id]).mkdir(parents=True, exist_ok=True)
        for i in range(per_type):
            key = f"{type_id}{i:011d}"
            mapping[key] = _toy_item(rng, root, key, type_id, slot, world, size)
    path = root / "mapping_file.json"
    path.write_text(json.dumps(mapping, indent=1))
    return path


def _toy_item(
    rng: np.random.Generator, root: Path, key: str, type_id: str, slot: str, world: str, size: int
) -> dict[str, Any]:
    w = get_world(world)
    options = {"colour": list(w.palette), "category": list(w.categories),
               "background": list(w.backgrounds)}  # fmt: skip
    labels = {k: str(rng.choice(v)) for k, v in options.items()}
    scene = random_layout(rng, Scene(labels["category"], labels["colour"], labels["background"],
                                     seed=int(rng.integers(2**31)), world=w.name))  # fmt: skip
    target_label = str(rng.choice([v for v in options[slot] if v != labels[slot]]))
    changes: dict[str, Any] = {slot: target_label}
    target = replace(scene, **changes)
    source, edited = render_scene(scene, size), render_scene(target, size)
    mask = source.mask | edited.mask if slot == "category" else source.mask
    mask = ~source.mask if slot == "background" else mask
    image_path = f"{_FOLDERS[type_id]}/{key}.png"
    Image.fromarray(source.image).save(root / "annotation_images" / image_path)
    return {
        "image_path": image_path,
        "original_prompt": toy_prompt(scene, slot),
        "editing_prompt": toy_prompt(target, slot),
        "editing_instruction": f"Change the {slot} to {target_label}",
        "editing_type_id": type_id,
        "blended_word": f"{labels[slot]} {target_label}",
        "mask": encode_mask(mask),
        "toy": {"world": w.name, "slot": slot, "source": labels[slot], "target": target_label,
                "scene": scene.to_dict()},
    }  # fmt: skip


def judge_background(image: ImageLike, object_mask: np.ndarray, world: str = "v2") -> str:
    """The world's background nearest (mean absolute RGB difference) to the image outside
    ``object_mask`` grown by 2 pixels."""
    from scipy.ndimage import binary_dilation

    pixels = to_array(image).astype(np.float64)
    outside = ~binary_dilation(np.asarray(object_mask, bool), iterations=2)
    rows = np.arange(pixels.shape[0])[:, None, None]
    best, name = np.inf, ""
    for candidate, (top, bottom, horizon) in get_world(world).backgrounds.items():
        drawn = np.where(rows < round(horizon * pixels.shape[0]), top, bottom)
        distance = float(np.abs(pixels - drawn)[outside].mean()) if outside.any() else np.inf
        if distance < best:
            best, name = distance, candidate
    return name


def judge_toy_edit(source: ImageLike, edited: ImageLike, toy: dict[str, Any]) -> dict[str, Any]:
    """The toy judges' columns of one edit.

    Returns:
        ``toy_success`` (1/0: the edited slot reads as the target), ``toy_kept`` (1/0: the two
        other slots read as the source's), ``toy_iou`` (object masks of source and edit; 0 when
        one is missing), ``toy_judged`` (what the judge read in the edited slot; "" for no
        object).
    """
    from probe.toy.judges.judge import find_object, judge, mask_iou

    world = toy["world"]
    src, out = to_array(source), to_array(edited)
    src_mask = np.asarray(find_object(src, world), bool)
    seen = judge(out, world)
    scene = toy["scene"]
    expected = {"colour": scene["colour"], "category": scene["category"],
                "background": scene["background"], toy["slot"]: toy["target"]}  # fmt: skip
    read = {"colour": seen.colour, "category": seen.category,
            "background": judge_background(out, seen.mask | src_mask, world)}  # fmt: skip
    slot = toy["slot"]
    both = bool(seen.found and src_mask.any())
    return {
        "toy_success": float(read[slot] == toy["target"]),
        "toy_kept": float(all(read[k] == v for k, v in expected.items() if k != slot)),
        "toy_iou": float(mask_iou(src_mask, seen.mask)) if both else 0.0,
        "toy_judged": read[slot] or "",
    }

"""Toy-world renders for a template's prompts, with their labels (``attnprobe toy render``).

write_renders("colour_car", 16, Path("runs/renders"), seed=0)  # 0000.png ... labels.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from probe.prompts.templates import load_template
from probe.toy.world.world import get_world, lists_name, render_scene, scene_for_prompt


def write_renders(
    template: str | Path,
    n: int,
    out: Path,
    seed: int = 0,
    size: int = 64,
    world: str | None = None,
) -> Path:
    """Render ``n`` scenes for a template's prompts and write PNGs and ``labels.jsonl``.

    Image ``i`` draws the template's prompt ``i mod len(template)`` (so every prompt is used
    before any repeats) with a scene seed taken from ``numpy.random.default_rng(seed)``; what the
    prompt leaves open (colour, background, layout) comes from that scene seed. Each JSONL line
    holds ``file``, ``prompt``, ``labels`` (the template's), ``label_words`` and ``scene`` (every
    scene parameter, enough to redraw it with ``render_scene(Scene(**scene))``).

    Args:
        template: built-in template name (``"colour_car"``) or path of a template file.
        n: how many images.
        out: output folder (created).
        seed: seeds the whole set; the same seed gives the same files.
        size: image side in pixels.
        world: the toy world (default: the shipped toy's); the template takes its word lists.

    Returns:
        The path of ``labels.jsonl``.

    Raises:
        ValueError: ``n`` or ``size`` is not positive, or a prompt names no toy category.
        TemplateError: the template is malformed.

    Example:
        >>> write_renders("colour_car", 16, Path("runs/renders"), seed=0)
        PosixPath('runs/renders/labels.jsonl')
    """
    if n < 1:
        raise ValueError(f"--n {n}: need at least one image")
    if size < 8:
        raise ValueError(f"--size {size}: images need at least 8 pixels a side")
    w = get_world(world)
    prompts = load_template(template, lists_name(w))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in tqdm(range(n), desc=f"render {prompts.name}", disable=n < 100):
        item = prompts[i % len(prompts)]
        scene = scene_for_prompt(item.prompt, seed=int(rng.integers(2**31)), world=w)
        render = render_scene(scene, size=size)
        name = f"{i:04d}.png"
        Image.fromarray(render.image).save(out / name)
        record = {
            "file": name,
            "prompt": item.prompt,
            "labels": item.labels,
            "label_words": item.label_words,
            "scene": scene.to_dict(),
        }
        lines.append(json.dumps(record))
    labels = out / "labels.jsonl"
    labels.write_text("\n".join(lines) + "\n")
    return labels

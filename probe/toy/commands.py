"""``attnprobe toy``: the toy world's commands (``render``; ``train`` and ``evaluate`` plug in).

``attnprobe toy render --template colour_car --n 16 --seed 0 --out DIR`` draws scenes for the
prompts of a template and writes ``DIR/0000.png ...`` and ``DIR/labels.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from probe.templates import load_template
from probe.toy.world import render_scene, scene_for_prompt


def write_renders(template: str | Path, n: int, out: Path, seed: int = 0, size: int = 64) -> Path:
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
    prompts = load_template(template)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in tqdm(range(n), desc=f"render {prompts.name}", disable=n < 100):
        item = prompts[i % len(prompts)]
        scene = scene_for_prompt(item.prompt, seed=int(rng.integers(2**31)))
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


def _cmd_render(args: argparse.Namespace) -> int:
    labels = write_renders(args.template, args.n, Path(args.out), args.seed, args.size)
    print(f"wrote {args.n} images to {labels.parent}\nlabels: {labels}")
    return 0


def _add_render(toy_sub: argparse._SubParsersAction) -> None:
    p = toy_sub.add_parser("render", help="draw toy scenes for a template's prompts")
    p.add_argument("--template", required=True, help="template name (e.g. colour_car) or path")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_render)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``toy`` command group to the ``attnprobe`` command line.

    ``render`` is defined here; ``train`` and ``evaluate`` join the same group from
    ``probe.toy.train_commands.add_train_commands`` when that module exists.
    """
    toy = sub.add_parser("toy", help="the toy world: render scenes (and train/evaluate the toy)")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND")
    toy.set_defaults(func=lambda _args: toy.print_help() or 0)
    _add_render(toy_sub)
    try:
        from probe.toy.train_commands import add_train_commands  # type: ignore[import-not-found]
    except ImportError as err:
        if not (isinstance(err, ModuleNotFoundError) and err.name == "probe.toy.train_commands"):
            # the module exists but cannot be imported: keep `toy render` working, say why
            warnings.warn(f"`attnprobe toy train/evaluate` unavailable: {err}", stacklevel=2)
    else:
        add_train_commands(toy_sub)

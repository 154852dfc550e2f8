"""Judge a model on the toy world: generate every template prompt on held-out seeds.

    from probe.models import load_pipeline
    from probe.toy.evaluation.evaluate import evaluate
    report = evaluate(load_pipeline("toy"), ["colour_car", "animal_park"], seeds=[1000, 1001])
    print(report.table())

The colour is scored on prompts that name one, the category on every prompt (the car of
``colour_car`` included), and "found" counts images in which the judge finds an object at all.
Everything is read in the model's toy world (:func:`probe.toy.world.world.world_of`): the templates
take that world's word lists, and the judges its palette, backgrounds and category judge.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm

from probe.families import family_of
from probe.models import generation_defaults
from probe.prompts.templates import load_template
from probe.toy.world.world import World, get_world, lists_name, world_of
from probe.viz.grid import image_grid


@dataclass(frozen=True)
class EvalRow:
    """The judgement of one generated image."""

    template: str
    prompt: str
    seed: int
    colour: str
    category: str
    found: bool
    judged_colour: str
    judged_category: str

    @property
    def colour_ok(self) -> bool | None:
        return None if not self.colour else self.judged_colour == self.colour

    @property
    def category_ok(self) -> bool | None:
        return None if not self.category else self.judged_category == self.category


@dataclass
class EvalReport:
    """All judged images and their summary by template."""

    rows: list[EvalRow]
    settings: dict[str, Any]

    def summary(self) -> list[dict[str, Any]]:
        groups: dict[str, list[EvalRow]] = {}
        for r in self.rows:
            groups.setdefault(r.template, []).append(r)
        groups["all"] = self.rows
        return [_summarise(name, rows) for name, rows in groups.items()]

    def table(self) -> str:
        head = "| template | images | object found | colour correct | category correct |"
        lines = [head, "|---|---:|---:|---:|---:|"]
        for s in self.summary():
            lines.append(
                f"| {s['template']} | {s['images']} | {_pct(s['found'])} | "
                f"{_pct(s['colour'])} | {_pct(s['category'])} |"
            )
        return "\n".join(lines)


def _rate(values: list[bool | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _summarise(name: str, rows: list[EvalRow]) -> dict[str, Any]:
    return {
        "template": name,
        "images": len(rows),
        "found": _rate([r.found for r in rows]),
        "colour": _rate([r.colour_ok for r in rows]),
        "category": _rate([r.category_ok for r in rows]),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def expected_labels(prompt: str, world: World | str | None = None) -> tuple[str, str]:
    """The colour and category a prompt asks for in ``world`` ("" where it names none)."""
    w = get_world(world)
    words = re.findall(r"[a-z]+", prompt.lower())
    colour = next((x for x in words if x in w.palette), "")
    category = next((x for x in words if x in w.categories), "")
    return colour, category


def generate(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    guidance_scale: float,
    num_steps: int,
    size: int,
) -> np.ndarray:
    """Images ``[n, H, W, 3]`` uint8, one per (prompt, seed), each from its own generator."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    out = pipe(
        list(prompts),
        num_inference_steps=num_steps,
        generator=gens,
        height=size,
        width=size,
        output_type="np",
        **family_of(pipe).pipe_kwargs(pipe, prompts, guidance_scale),
    ).images
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def evaluate(
    pipe: Any,
    templates: Sequence[str] = ("colour_car", "animal_park", "colour_animal"),
    seeds: Sequence[int] = tuple(range(1000, 1008)),
    out: str | Path | None = None,
    guidance_scale: float | None = None,
    num_steps: int | None = None,
    batch_size: int = 16,
) -> EvalReport:
    """Generate every prompt of ``templates`` for every seed and judge the images.

    Args:
        pipe: a toy-world pipeline (its world: :func:`~probe.toy.world.world.world_of`).
        templates: template names or paths, read with the world's word lists.
        seeds: held-out seeds (training never sees a seed: it draws from an endless stream).
        out: if given, write ``evaluation.csv``, ``evaluation.md`` and ``grid.png`` there.
        guidance_scale, num_steps: default to the model's own (``attnprobe.json``).
        batch_size: images per pipeline call.

    Returns:
        An ``EvalReport``; ``report.table()`` is the markdown summary.
    """
    from probe.toy.judges.judge import judge

    defaults = generation_defaults(pipe)
    guidance = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    steps = defaults["num_inference_steps"] if num_steps is None else num_steps
    world = world_of(pipe)
    lists = lists_name(world)
    jobs = [(t, i.prompt, s) for t in templates for i in load_template(t, lists) for s in seeds]
    rows: list[EvalRow] = []
    images: dict[tuple[str, int], np.ndarray] = {}
    for i in tqdm(range(0, len(jobs), batch_size), desc="evaluate", unit="batch"):
        chunk = jobs[i : i + batch_size]
        imgs = generate(
            pipe, [j[1] for j in chunk], [j[2] for j in chunk], guidance, steps, defaults["height"]
        )
        for (template, prompt, seed), img in zip(chunk, imgs, strict=True):
            verdict = judge(img, world)
            colour, category = expected_labels(prompt, world)
            rows.append(
                EvalRow(
                    template,
                    prompt,
                    seed,
                    colour,
                    category,
                    bool(verdict.found),
                    verdict.colour or "",
                    verdict.category or "",
                )
            )
            images.setdefault((prompt, seed), img)
    settings = {
        "world": world.name,
        "templates": list(templates),
        "seeds": [int(s) for s in seeds],
        "guidance_scale": guidance,
        "num_inference_steps": steps,
    }
    report = EvalReport(rows, settings)
    if out is not None:
        write_evaluation(report, images, Path(out))
    return report


def write_evaluation(
    report: EvalReport, images: dict[tuple[str, int], np.ndarray], out: Path
) -> None:
    """``evaluation.csv`` (one row per image), ``evaluation.md`` and ``grid.png``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "evaluation.csv", "w", newline="") as f:
        fields = [*EvalRow.__dataclass_fields__, "colour_ok", "category_ok"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in report.rows:
            writer.writerow(asdict(r) | {"colour_ok": r.colour_ok, "category_ok": r.category_ok})
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    (out / "evaluation.md").write_text(f"Settings: {settings}\n\n{report.table()}\n")
    sample_grid(report, images).savefig(out / "grid.png", dpi=100)


def sample_grid(report: EvalReport, images: dict[tuple[str, int], np.ndarray]) -> Figure:
    """One image per prompt at the first seed: rows by category, columns by colour if the
    prompts have both, else the first 40 prompts in order."""
    seed = report.settings["seeds"][0]
    world = get_world(report.settings.get("world"))
    prompts = list(dict.fromkeys(r.prompt for r in report.rows))
    by_label = {expected_labels(p, world): p for p in prompts}
    colours = [c for c in world.palette if any(k[0] == c for k in by_label)]
    cats = [c for c in world.categories if any(k[0] and k[1] == c for k in by_label)]
    if colours and cats:
        cells = [[by_label.get((c, k)) for c in colours] for k in cats]
        row_names, col_names = cats, colours
    else:
        flat: list[str | None] = list(prompts[:40])
        cells = [flat[i : i + 8] for i in range(0, len(flat), 8)]
        row_names, col_names = [""] * len(cells), [""] * 8
    ncols = len(col_names)
    prompts_flat = [row[j] if j < len(row) else None for row in cells for j in range(ncols)]
    pictures = [None if p is None else images.get((p, seed)) for p in prompts_flat]
    titles = [col_names[j] if i == 0 else "" for i in range(len(cells)) for j in range(ncols)]
    fig = image_grid(pictures, titles, ncols, row_names, size=1.1)
    fig.suptitle(f"seed {seed}, guidance {report.settings['guidance_scale']}", fontsize=9)
    return fig


def save_images(images: dict[tuple[str, int], np.ndarray], out: Path) -> None:
    """Every generated image as a PNG (for inspection)."""
    out.mkdir(parents=True, exist_ok=True)
    for (prompt, seed), img in images.items():
        Image.fromarray(img).save(out / f"{prompt.replace(' ', '_')}_{seed}.png")

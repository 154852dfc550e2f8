"""Vitality of every block: bypass it, generate from the same noise, score the change.

    from probe.models import load_pipeline
    from probe.vital.vitality import measure_vitality, vital_layers
    report = measure_vitality(load_pipeline("toy-flux"), n_prompts=8, seeds=[1000, 1001])
    report.vitality()                      # {layer: (mean, std over seeds)}
    vital_layers(report.means(), threshold=0.1)

Stable Flow (Avrahami et al., CVPR 2025, sec. 3.1) generates each prompt/seed pair once with
the full model and once per block with that block bypassed (:mod:`probe.vital.bypass`), measures
the perceptual similarity of the two images (DINOv2), and calls *vital* the blocks whose
similarity falls below a threshold; their detection script and threshold are not released.
Here a sample's **vitality** is ``1 − similarity`` (:mod:`probe.vital.scores`: the toy judges,
pixels, or DINOv2), a block's vitality the mean over prompts and seeds, and its spread the
standard deviation over seeds of the per-seed means over prompts (ddof 1; 0 with one seed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from probe.families import family_of
from probe.models import generation_defaults
from probe.vital.bypass import bypass_blocks
from probe.vital.scores import SCORES, PerceptualModel, judge_change, pixel_rmse

TEMPLATES = ("colour_car", "colour_animal")
"""Where the prompts come from: every colour × category the toy worlds draw."""


@dataclass(frozen=True)
class SampleChange:
    """One prompt/seed generated with ``layer`` bypassed, against the full generation.

    Attributes:
        layer: the bypassed layer (``None``: the full generation, scored against itself for
            its judges' ``colour_ok``/``category_ok``).
        prompt, seed: the pair generated.
        vitality: ``1 − similarity`` by the report's score.
        rmse: root-mean-square pixel difference in [0, 1].
        colour_ok, category_ok, iou: the toy judges (``None`` without them).
        perceptual: DINOv2 cosine similarity (``None`` without a perceptual model).
    """

    layer: int | None
    prompt: str
    seed: int
    vitality: float
    rmse: float
    colour_ok: bool | None = None
    category_ok: bool | None = None
    iou: float | None = None
    perceptual: float | None = None


@dataclass
class VitalityReport:
    """Every sample's change and the settings they were measured with.

    Attributes:
        rows: one :class:`SampleChange` per (layer, prompt, seed), the full generation's first.
        layers: the layer table's rows as JSON (index, name, place, ...).
        score: ``judges``, ``pixel`` or ``perceptual``.
        settings: model, prompts, seeds, steps, guidance, size, perceptual folder or why missing.
    """

    rows: list[SampleChange]
    layers: list[dict[str, Any]]
    score: str
    settings: dict[str, Any] = field(default_factory=dict)

    def vitality(self) -> dict[int, tuple[float, float]]:
        """Layer → (mean vitality, standard deviation over seeds of the per-seed means)."""
        out: dict[int, tuple[float, float]] = {}
        for layer in sorted({r.layer for r in self.rows if r.layer is not None}):
            rows = [r for r in self.rows if r.layer == layer]
            per_seed = [
                float(np.mean([r.vitality for r in rows if r.seed == s]))
                for s in sorted({r.seed for r in rows})
            ]
            spread = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
            out[layer] = (float(np.mean([r.vitality for r in rows])), spread)
        return out

    def means(self) -> dict[int, float]:
        """Layer → mean vitality (what :func:`vital_layers` takes)."""
        return {layer: mean for layer, (mean, _) in self.vitality().items()}

    def summary(self) -> list[dict[str, Any]]:
        """One dict per layer (the full generation first, ``layer`` None): vitality mean and
        spread, and the mean of every other score."""
        table = []
        for layer in [None, *self.vitality()]:
            rows = [r for r in self.rows if r.layer == layer]
            entry: dict[str, Any] = {"layer": layer, "name": self._name(layer)}
            if layer is not None:
                entry["vitality"], entry["vitality_std"] = self.vitality()[layer]
            for key in ("rmse", "colour_ok", "category_ok", "iou", "perceptual"):
                entry[key] = _mean([getattr(r, key) for r in rows])
            table.append(entry)
        return table

    def _name(self, layer: int | None) -> str:
        return "full" if layer is None else str(self.layers[layer]["name"])

    def save(self, path: str | Path, rule: dict[str, Any] | None = None) -> Path:
        """Write ``vital.json``: settings, the per-layer summary, the rule and every sample."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "score": self.score,
            "settings": self.settings,
            "vital": rule or {},
            "layers": self.summary(),
            "samples": [asdict(r) for r in self.rows],
            "layer_table": self.layers,
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


def _mean(values: Sequence[float | bool | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def vital_layers(
    vitality: Mapping[int, float], threshold: float | None = None, top_k: int | None = None
) -> list[int]:
    """The vital layers: vitality above ``threshold`` (Stable Flow's rule: similarity below
    ``1 − threshold``), or the ``top_k`` most vital (ties broken by the lower index).

    Raises:
        ValueError: neither or both of ``threshold`` and ``top_k``, or ``top_k`` < 1.

    Example:
        >>> vital_layers({0: 0.5, 1: 0.05, 2: 0.2}, threshold=0.1)
        [0, 2]
        >>> vital_layers({0: 0.5, 1: 0.05, 2: 0.2}, top_k=1)
        [0]
    """
    if (threshold is None) == (top_k is None):
        raise ValueError("give a vital rule: either a threshold or top_k (not both)")
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k {top_k} keeps no layer: give 1 or more")
        ranked = sorted(vitality, key=lambda layer: (-vitality[layer], layer))
        return sorted(ranked[:top_k])
    assert threshold is not None
    return sorted(layer for layer, v in vitality.items() if v > threshold)


def vital_prompts(n: int, world: Any = None, templates: Sequence[str] = TEMPLATES) -> list[str]:
    """``n`` prompts spread evenly over the templates' prompts (colours × categories).

    Raises:
        ValueError: ``n`` < 1 or more prompts than the templates hold.
    """
    from probe.prompts.templates import load_template
    from probe.toy.world.world import lists_name

    lists = lists_name(world) if world is not None else None
    pool = [item.prompt for t in templates for item in load_template(t, lists)]
    pool = list(dict.fromkeys(pool))
    if not 1 <= n <= len(pool):
        raise ValueError(f"--prompts {n}: the templates {list(templates)} hold 1-{len(pool)}")
    return [pool[(i * len(pool)) // n] for i in range(n)]


def measure_vitality(
    pipe: Any,
    prompts: Sequence[str] | int = 8,
    seeds: Sequence[int] = (1000, 1001),
    score: str = "judges",
    layers: Sequence[int] | None = None,
    perceptual: PerceptualModel | None = None,
    batch_size: int = 8,
    num_steps: int | None = None,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
) -> VitalityReport:
    """Generate every prompt/seed pair with the full model and with each block bypassed.

    Args:
        pipe: a pipeline of any family (toys for ``score="judges"``).
        prompts: the prompts, or how many to draw from :data:`TEMPLATES` in the model's world.
        seeds: one noise per seed; the full and every bypassed generation share it.
        score: ``judges`` (toys), ``pixel`` or ``perceptual`` (needs ``perceptual``).
        layers: the layers to bypass, one at a time (default every layer).
        perceptual: the DINOv2 model; when given, its similarity is recorded for every sample.
        batch_size: images per pipeline call.
        num_steps: denoising steps (default the model's, ``attnprobe.json``).
        progress: show a progress bar.
        settings: extra entries for the report's settings (the command line's).

    Raises:
        ValueError: an unknown score, or ``perceptual`` asked for without a model.

    Example:
        >>> report = measure_vitality(load_pipeline("toy-flux"), 4, [1000], layers=[0, 4])
    """
    from probe.toy.evaluation.evaluate import generate
    from probe.toy.world.world import world_of

    if score not in SCORES:
        raise ValueError(f"score {score!r} is not one of {', '.join(SCORES)}")
    if score == "perceptual" and perceptual is None:
        raise ValueError("score 'perceptual' needs a DINOv2 folder: pass --perceptual PATH")
    family = family_of(pipe)
    table = family.layers(family.denoiser(pipe))
    chosen = list(range(len(table))) if layers is None else list(layers)
    world = world_of(pipe) if score == "judges" else None
    texts = vital_prompts(prompts, world) if isinstance(prompts, int) else list(prompts)
    d = generation_defaults(pipe)
    if num_steps is not None:
        d = {**d, "num_inference_steps": num_steps}
    jobs = [(p, int(s)) for s in seeds for p in texts]

    def run() -> np.ndarray:
        parts = [
            generate(pipe, [j[0] for j in jobs[i : i + batch_size]],
                     [j[1] for j in jobs[i : i + batch_size]], d["guidance_scale"],
                     d["num_inference_steps"], d["height"])
            for i in range(0, len(jobs), batch_size)
        ]  # fmt: skip
        return np.concatenate(parts)

    compare = _comparer(score, world, perceptual)
    bar = tqdm(total=len(chosen) + 1, desc="vital", unit="block", disable=not progress)
    full = run()
    bar.update()
    rows = [compare(None, job, image, image) for job, image in zip(jobs, full, strict=True)]
    for layer in chosen:
        with bypass_blocks(pipe, [layer]):
            bypassed = run()
        pairs = zip(jobs, full, bypassed, strict=True)
        rows += [compare(layer, job, a, b) for job, a, b in pairs]
        bar.update()
    bar.close()
    info = {
        "model": str(getattr(pipe, "name_or_path", "") or ""),
        "family": family.name,
        "prompts": texts,
        "seeds": [int(s) for s in seeds],
        **{k: d[k] for k in ("num_inference_steps", "guidance_scale", "height", "width")},
        **dict(settings or {}),
    }
    return VitalityReport(rows, [layer.to_json() for layer in table], score, info)


def _comparer(
    score: str, world: Any, perceptual: PerceptualModel | None
) -> Callable[[int | None, tuple[str, int], np.ndarray, np.ndarray], SampleChange]:
    """``(layer, (prompt, seed), full, bypassed) → SampleChange`` for one score."""

    def compare(
        layer: int | None, job: tuple[str, int], full: np.ndarray, bypassed: np.ndarray
    ) -> SampleChange:
        rmse = pixel_rmse(full, bypassed)
        seen = None if perceptual is None else perceptual.similarity(full, bypassed)
        judged = None if world is None else judge_change(full, bypassed, job[0], world)
        similarity = {
            "judges": judged.similarity if judged is not None else math.nan,
            "pixel": 1.0 - rmse,
            "perceptual": seen if seen is not None else math.nan,
        }[score]
        return SampleChange(
            layer, job[0], job[1], 1.0 - similarity, rmse,
            colour_ok=None if judged is None else judged.colour_ok,
            category_ok=None if judged is None else judged.category_ok,
            iou=None if judged is None else judged.iou, perceptual=seen,
        )  # fmt: skip

    return compare

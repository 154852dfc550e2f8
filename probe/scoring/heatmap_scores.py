"""Every kind of heat map attnprobe draws, scored against the object's mask on a toy world.

    report = score_heatmaps(load_pipeline("toy-flux"), prompts=16)
    report.summary()["cross/all"]["miou"]          # DAAM's word map: all layers and steps
    report.markdown()                               # one table: pixel accuracy, mIoU, mAP per kind

For each held-out prompt of the toy world (the colour templates, one seed each from 1000), the
model generates an image while attnprobe records its word maps, and the word naming the object
(``car``, ``cat``, ...) is scored with Chefer et al.'s protocol
(:mod:`probe.scoring.segmentation`: min-max normalise, upsample, binarise at the mean; pixel
accuracy, mIoU, mAP) against **the judges' mask of the generated image**
(:func:`probe.toy.judges.masks.find_object`: the background of a toy image is known, so the
object's pixels are found exactly up to anti-aliasing; an image in which the judges find no
object is left out and counted). A render of the prompt's scene would not do: the model draws
its own layout, not the renderer's.

Map kinds (keys of the report):

- ``cross/all``: the word's cross-attention (a DiT's image→text part of its joint softmax),
  mean over heads, the word's tokens, every layer and every step, each layer upsampled
  bilinearly to the largest map first: :meth:`AttentionMaps.word_map`, DAAM's aggregation.
- ``cross/L05``: the same map from one layer (mean over steps); the best layer is reported.
- ``concept/all``, ``concept/L01`` (SD3, Flux): ConceptAttention's concept map
  (:mod:`probe.recording.concepts`) of the object word against the world's background words
  (``park``, ``street``), mean over every double-stream block and step, or one block.

attnprobe draws no self-attention-propagated maps (nothing multiplies a word map by
self-attention), so none is scored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

from probe.recording.maps import AttentionMaps
from probe.scoring.segmentation import SegmentScores, segment_scores, summarise

METRICS = ("pixel_accuracy", "miou", "map")


def heatmaps_of(
    maps: AttentionMaps, word: str, sample: int = 0, concepts: AttentionMaps | None = None,
    concept_sample: int | None = None,
) -> dict[str, Tensor]:  # fmt: skip
    """The heat maps of ``word`` in one recorded sample, by kind (see the module).

    Args:
        maps: a recording with kind ``cross`` and the prompts' tokens.
        word: the word to map (in the prompt; and a concept of ``concepts``).
        sample: which recorded sample.
        concepts: a concept recording of the same image (:func:`record_concepts`), or ``None``.
        concept_sample: the image's sample in ``concepts`` (default ``sample``).

    Returns:
        ``{"cross/all": [h, w], "cross/L00": ..., "concept/all": ..., "concept/L00": ...}``.

    Example:
        >>> heatmaps_of(maps, "car")["cross/all"].shape
        torch.Size([8, 8])
    """
    from probe.recording.concepts import KIND, concept_map

    out = {"cross/all": maps.word_map(word, sample)}
    for layer in maps.recorded_layers("cross"):
        out[f"cross/L{layer:02d}"] = maps.word_map(word, sample, layers=[layer])
    if concepts is not None:
        at = sample if concept_sample is None else concept_sample
        out["concept/all"] = concept_map(concepts, word, at)
        for layer in concepts.recorded_layers(KIND):
            out[f"concept/L{layer:02d}"] = concept_map(concepts, word, at, layers=[layer])
    return out


@dataclass
class SegmentReport:
    """Scores of every map kind on every image.

    Attributes:
        scores: kind → one :class:`SegmentScores` per image (NaN where no object was found).
        images: per image: prompt, seed, word, object pixels.
        settings: model, steps, guidance, size, concepts, mask source.
    """

    scores: dict[str, list[SegmentScores]] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Kind → :func:`~probe.scoring.segmentation.summarise` of its images."""
        return {kind: summarise(rows) for kind, rows in self.scores.items()}

    def best_layer(self, kind: str, metric: str = "miou") -> str | None:
        """The per-layer key of ``kind`` (``cross``, ``concept``) with the highest ``metric``."""
        table = self.summary()
        keys = [k for k in table if k.startswith(f"{kind}/L") and not math.isnan(table[k][metric])]
        return max(keys, key=lambda k: table[k][metric], default=None)

    def rows(self) -> list[tuple[str, dict[str, float]]]:
        """The table's rows: each aggregated kind, then its best layer (by mIoU)."""
        table = self.summary()
        out = []
        for kind in ("cross", "concept"):
            if f"{kind}/all" not in table:
                continue
            out.append((f"{kind}/all", table[f"{kind}/all"]))
            best = self.best_layer(kind)
            if best is not None:
                out.append((f"{best} (best layer)", table[best]))
        return out

    def markdown(self) -> str:
        """One table: pixel accuracy, mIoU and mAP per map kind (aggregated and best layer)."""
        lines = [
            "| map | images | pixel accuracy | mIoU | mAP |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s in self.rows():
            lines.append(
                f"| {name} | {s['images']:.0f} | {s['pixel_accuracy']:.3f} | {s['miou']:.3f} "
                f"| {s['map']:.3f} |"
            )
        left = max((s["left_out"] for s in self.summary().values()), default=0)
        if left:
            why = self.settings.get("left_out_reason", "the judges found no object in them")
            lines.append(f"\n{left:.0f} image(s) left out: {why}.")
        return "\n".join(lines)

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``segment.json`` (summary per kind, per image scores, settings) and
        ``segment.md`` (the table) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        per_image = {
            kind: [{m: _num(getattr(s, m)) for m in ("pixel_accuracy", "miou", "ap")} for s in rows]
            for kind, rows in self.scores.items()
        }
        data = {
            "settings": self.settings,
            "summary": {k: {m: _num(v) for m, v in s.items()} for k, s in self.summary().items()},
            "best_layer": {k: self.best_layer(k) for k in ("cross", "concept")},
            "images": self.images,
            "per_image": per_image,
        }
        js, md = folder / "segment.json", folder / "segment.md"
        js.write_text(json.dumps(data, indent=2) + "\n")
        md.write_text(self.markdown() + "\n")
        return js, md


def _num(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def score_heatmaps(
    pipe: Any,
    prompts: Sequence[str] | int = 16,
    seed: int = 1000,
    num_steps: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
) -> SegmentReport:
    """Generate the prompts, record every map kind, score each against the judges' masks.

    Args:
        pipe: a toy-world pipeline (toy, toy-v2: UNets; toy-flux: a DiT, also concept maps).
        prompts: the prompts, or how many to draw from the colour templates of its world.
        seed: the first seed; prompt ``i`` is generated from ``seed + i`` (held out: the toys
            train on an endless stream of random scenes and evaluate on seeds from 1000).
        num_steps: denoising steps (default the model's).
        batch_size: images per pipeline call.
        progress: show a progress bar.
        settings: extra entries for the report's settings (the command line's).

    Raises:
        ValueError: a model without a toy world (its images have no masks to score against).

    Example:
        >>> score_heatmaps(load_pipeline("toy-v2"), prompts=4).summary()["cross/all"]["miou"]
    """
    from probe.models import generation_defaults
    from probe.toy.evaluation.evaluate import expected_labels
    from probe.toy.world.world import world_of
    from probe.vital.vitality import vital_prompts

    world = world_of(pipe)
    texts = vital_prompts(prompts, world) if isinstance(prompts, int) else list(prompts)
    d = generation_defaults(pipe)
    steps = int(num_steps or d["num_inference_steps"])
    concepts_of = _concepts(pipe, world)
    report = SegmentReport(settings={
        "model": str(getattr(pipe, "name_or_path", "") or ""), "prompts": texts, "seed": seed,
        "num_inference_steps": steps, "guidance_scale": d["guidance_scale"], "height": d["height"],
        "mask": "the judges' mask of the generated image (probe.toy.judges.masks.find_object)",
        "protocol": "Chefer et al.: min-max, nearest upsampling, binarised at the mean",
        "concepts": "object word + " + "/".join(concepts_of("")) if concepts_of else None,
        **dict(settings or {}),
    })  # fmt: skip
    bar = tqdm(total=len(texts), desc="segment-score", unit="image", disable=not progress)
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        words = [expected_labels(p, world)[1] for p in batch]
        seeds = [seed + start + i for i in range(len(batch))]
        images, maps, concept_maps = _generate(pipe, batch, seeds, words, concepts_of, d, steps)
        for i, (prompt, word) in enumerate(zip(batch, words, strict=True)):
            _score_one(report, images[i], maps, concept_maps, i, prompt, seeds[i], word, world)
        bar.update(len(batch))
    bar.close()
    return report


def _concepts(pipe: Any, world: Any) -> Any:
    """For a DiT: word → the concepts recorded with it (the word, then the world's background
    words); ``None`` for a UNet (no concept maps)."""
    from probe.families import family_of
    from probe.toy.world.world import BACKGROUND_WORDS

    if "text_image" not in family_of(pipe).kinds:
        return None
    backgrounds = sorted(set(BACKGROUND_WORDS.values()) & set(world.backgrounds))

    def of(word: str) -> list[str]:
        return ([word] if word else []) + [b for b in backgrounds if b != word]

    return of


def _generate(
    pipe: Any, prompts: list[str], seeds: list[int], words: list[str], concepts_of: Any,
    d: Mapping[str, Any], steps: int,
) -> tuple[np.ndarray, AttentionMaps, list[AttentionMaps | None]]:  # fmt: skip
    """One batch with its cross maps; concept maps (a DiT) need one run per concept set, so
    each prompt is generated again alone under :func:`record_concepts` (same seed, same
    image: recording concepts leaves it unchanged)."""
    from probe.recording.concepts import record_concepts
    from probe.recording.recorder import record_attention
    from probe.toy.evaluation.evaluate import generate

    args = (d["guidance_scale"], steps, d["height"])
    with record_attention(pipe, kinds=("cross",), prompts=prompts) as maps:
        images = generate(pipe, prompts, seeds, *args)
    concept_maps: list[AttentionMaps | None] = [None] * len(prompts)
    if concepts_of is not None:
        for i, (prompt, seed, word) in enumerate(zip(prompts, seeds, words, strict=True)):
            if word:
                with record_concepts(pipe, concepts_of(word)) as cm:
                    generate(pipe, [prompt], [seed], *args)
                concept_maps[i] = cm
    return images, maps, concept_maps


def _score_one(
    report: SegmentReport, image: np.ndarray, maps: AttentionMaps,
    concept_maps: list[AttentionMaps | None], i: int, prompt: str, seed: int, word: str,
    world: Any,
) -> None:  # fmt: skip
    from probe.toy.judges.masks import NoObjectError, find_object

    try:
        mask = find_object(image, world)
    except NoObjectError:  # no toy background: no object to score against
        mask = np.zeros(image.shape[:2], bool)
    report.images.append({"prompt": prompt, "seed": seed, "word": word,
                          "object_pixels": int(mask.sum())})  # fmt: skip
    if not word:
        return
    for kind, heat in heatmaps_of(maps, word, i, concept_maps[i], concept_sample=0).items():
        report.scores.setdefault(kind, []).append(segment_scores(heat, mask))

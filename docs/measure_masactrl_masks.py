"""Measure MasaCtrl and its word mask on the toy: every ordered colour pair, one seed.

For each source colour, one edit with the nine other colours as targets (one shared source
branch), MasaCtrl at the published defaults (start step 4, start layer 10); arms:

- ``plain``: no mask (``MutualSelfAttentionControl``);
- ``word mask, published``: the mask from ``car``'s cross-attention maps at a quarter of the
  latent's side (the authors' 16×16 at 512 px: 4×4 on the toy), threshold 0.1 (``...MaskAuto``);
- ``word mask, 16x16 positions``: the authors' literal check (maps of 16×16 positions, the toy's
  finest), threshold 0.1.

Each edit is scored by the toy judges (success; background PSNR against the source outside both
object masks); mask coverage is the share of the query map inside the mask, source and targets,
mean over every masked call. Run from the repository root (prints a markdown table, writes
``docs/masactrl_masks.json``)::

    OMP_NUM_THREADS=1 nice python docs/measure_masactrl_masks.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from editing import edit
from editing.methods.masactrl import MutualSelfAttention, WordMask
from editing.scoring.toy_metrics import score_edit, summarise
from probe.models import load_pipeline
from probe.prompts.templates import load_edit_pairs

SEED = 100
ARMS: dict[str, str | None] = {
    "plain": None,
    "word mask, published (res==max/4)": "res==max/4",
    "word mask, 16x16 positions (positions==256)": "positions==256",
}


class CoverageMask(WordMask):
    """A word mask that remembers how much of each query map it called the object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.coverage: list[tuple[float, float]] = []

    def regions(self, call: Any) -> Any:
        found = super().regions(call)
        if found is not None:
            self.coverage.append((float(found[0].float().mean()), float(found[1].float().mean())))
        return found


def run(pipe: Any) -> dict[str, Any]:
    """Scores and mask coverage per arm."""
    by_source: dict[str, list[Any]] = {}
    for pair in load_edit_pairs("colour_edits").pairs:
        by_source.setdefault(pair.source, []).append(pair)
    out: dict[str, Any] = {}
    for arm, layers in ARMS.items():
        scores, coverage = [], []
        for source, group in by_source.items():
            mask = None if layers is None else CoverageMask("car", layers=layers)
            result = edit(pipe, source, [p.target for p in group], seed=SEED,
                          controllers=[MutualSelfAttention(4, 10, mask)])  # fmt: skip
            images = zip(result.targets, group, strict=True)
            scores += [score_edit(result.source, image, pair) for image, pair in images]
            if mask is not None:
                coverage += mask.coverage
        row: dict[str, Any] = dict(summarise(scores))
        row["successes"] = int(sum(s.success for s in scores))
        if coverage:
            row["coverage_source"] = float(np.mean([c[0] for c in coverage]))
            row["coverage_targets"] = float(np.mean([c[1] for c in coverage]))
        out[arm] = row
        print(arm, {k: round(v, 3) for k, v in row.items()}, flush=True)
    return out


def main() -> None:
    start = time.perf_counter()
    out = run(load_pipeline("toy"))
    out["_meta"] = {"seed": SEED, "pairs": 90, "minutes": (time.perf_counter() - start) / 60}
    Path("docs/masactrl_masks.json").write_text(json.dumps(out, indent=2))
    print("| arm | success | background PSNR (dB) | IoU | source shift | mask (source / targets) |")
    print("|---|---:|---:|---:|---:|---:|")
    for arm, row in out.items():
        if arm.startswith("_"):
            continue
        cover = (f"{row['coverage_source']:.3f} / {row['coverage_targets']:.3f}"
                 if "coverage_source" in row else "–")  # fmt: skip
        cells = [f"{row['successes']}/{int(row['n'])} ({row['success']:.3f})"]
        cells += [f"{row[k]:.3f}" for k in ("background_psnr", "iou", "source_shift")]
        print(f"| {arm} | " + " | ".join(cells) + f" | {cover} |")


if __name__ == "__main__":
    main()

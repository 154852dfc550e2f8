"""Measure Prompt-to-Prompt's LocalBlend on the toy: every ordered colour pair, two seeds.

For each source colour, one edit with the nine other colours as targets (one shared source
branch), P2P word swap at the published defaults, blend word ``car``; arms:

- ``none``: no LocalBlend;
- ``published``: LocalBlend as published (the maps at a quarter of the latent's side, 0.3);
- ``toy maps``: the toy's finest (16×16) maps and threshold 0.6, an adaptation (chosen on seed 3,
  5 steps, "a red car" -> "a blue car", which this run does not use).

Each edit is scored by the toy judges (success; background PSNR against the source outside both
object masks); the mask coverage is the share of the latent inside the last step's mask. Run
from the repository root (prints a markdown table, writes ``docs/p2p_local_blend.json``; one
thread per process avoids contention on a shared machine)::

    OMP_NUM_THREADS=1 nice python docs/measure_p2p_local_blend.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from editing import edit
from editing.methods.local_blend import LocalBlend
from editing.methods.p2p import prompt_to_prompt
from editing.scoring.toy_metrics import score_edit, summarise
from probe.models import load_pipeline
from probe.prompts.templates import load_edit_pairs

SEEDS = (100, 101)
ARMS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "published": {},
    "toy maps": {"layers": "res==max", "threshold": 0.6},
}


def run(pipe: Any) -> dict[str, Any]:
    """Scores and mask coverage per arm."""
    pairs = load_edit_pairs("colour_edits").pairs
    by_source: dict[str, list[Any]] = {}
    for pair in pairs:
        by_source.setdefault(pair.source, []).append(pair)
    out: dict[str, Any] = {}
    for arm, blend_args in ARMS.items():
        scores, coverage = [], []
        for seed in SEEDS:
            for source, group in by_source.items():
                controllers: list[Any] = list(prompt_to_prompt("replace"))
                blend = None
                if blend_args is not None:
                    blend = LocalBlend(["car"], **blend_args)
                    controllers.append(blend)
                result = edit(pipe, source, [p.target for p in group], controllers=controllers,
                              seed=seed)  # fmt: skip
                images = zip(result.targets, group, strict=True)
                scores += [score_edit(result.source, img, p) for img, p in images]
                if blend is not None and blend.masks is not None:
                    coverage += blend.masks.float().mean(dim=(1, 2)).tolist()
        summary: dict[str, Any] = dict(summarise(scores))
        summary["mask_coverage"] = float(np.mean(coverage)) if coverage else None
        summary["successes"] = int(sum(s.success for s in scores))
        out[arm] = summary
        print(arm, summary, flush=True)
    return out


def main() -> None:
    start = time.time()
    pipe = load_pipeline("toy")
    results = run(pipe)
    results["_meta"] = {"seeds": list(SEEDS), "minutes": round((time.time() - start) / 60, 1)}
    Path("docs/p2p_local_blend.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| LocalBlend | success | background PSNR (dB) | IoU | mask coverage |")
    print("|---|---:|---:|---:|---:|")
    for arm in ARMS:
        r = results[arm]
        cells = [f"{r['successes']}/{int(r['n'])} ({r['success']:.3f})"]
        cells += [
            f"{r[k]:.3f}" if r[k] is not None else "–"
            for k in ("background_psnr", "iou", "mask_coverage")
        ]
        print(f"| {arm} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

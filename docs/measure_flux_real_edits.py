"""Measure real-image colour edits on toy-flux: held-out renders of world v2 (seeds 7000-7015,
which no test uses), a car of each of eight colours twice, each edited to the colour three
places on in the list.

Arms: inverse Euler (``flow_invert`` with the source prompt, the model's 20 steps, guidance 1),
with and without Stable Flow's latent nudging (×1.15), then ``edit`` with method ``none`` (the
target prompt alone from the inverted noise, source row forced) or ``fpe`` (every block, first
80% of steps); and FlowEdit (no inversion, the authors' FLUX.1-dev defaults: 28 steps, n_max
24, guidance 1.5 / 5.5 applied as true CFG). Each edit is scored by the toy judges against the
render (success: judged colour = target; structure IoU of the object masks; background PSNR);
``reconstruction`` is the PSNR of the inversion sampled back at guidance 1. Run from the
repository root (prints a markdown table, writes ``docs/flux_real_edits.json``)::

    OMP_NUM_THREADS=1 python docs/measure_flux_real_edits.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from editing import edit, flow_invert
from editing.inversion import reconstruct
from editing.methods.flowedit import flowedit
from editing.scoring.images import psnr
from editing.scoring.toy_metrics import score_edit
from probe.models import load_pipeline
from probe.toy.world.world import render_scene, scene_for_prompt

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan"]


def main() -> None:
    pipe = load_pipeline("toy-flux")
    rows = []
    for i, colour in enumerate(COLOURS * 2):
        target = COLOURS[(COLOURS.index(colour) + 3) % len(COLOURS)]
        source_prompt = f"a {colour} car on the street"
        target_prompt = f"a {target} car on the street"
        render = render_scene(scene_for_prompt(source_prompt, 7000 + i, "v2"), 64)

        def score(image, arm, reconstruction=float("nan")):
            s = score_edit(render.image, image, slot="colour", target=target,
                           source_label=colour, world="v2")  # fmt: skip
            rows.append({"arm": arm, "success": bool(s.success), "iou": s.iou,
                         "background_psnr": s.background_psnr, "reconstruction": reconstruction})  # fmt: skip

        for inversion, nudge in (("euler", 1.0), ("euler, nudge 1.15", 1.15)):
            inv = flow_invert(pipe, render.image, source_prompt, nudge=nudge)
            rec = psnr(render.image, reconstruct(pipe, inv, guidance_scale=1.0))
            for method in ("none", "fpe"):
                result = edit(pipe, source_prompt, [target_prompt], method=method, inversion=inv)
                score(result.targets[0], f"{inversion} + {method}", rec)
        score(flowedit(pipe, render.image, source_prompt, target_prompt).image, "FlowEdit")
    by_arm = defaultdict(list)
    for row in rows:
        by_arm[row["arm"]].append(row)
    print("| arm | edits | success | structure IoU | background PSNR | reconstruction PSNR |")
    print("|---|---:|---:|---:|---:|---:|")
    summary = {}
    for arm, group in by_arm.items():
        mean = {k: float(np.nanmean([r[k] for r in group])) if not all(np.isnan(r[k]) for r in group)
                else float("nan") for k in ("iou", "background_psnr", "reconstruction")}  # fmt: skip
        mean["success"] = float(np.mean([r["success"] for r in group]))
        summary[arm] = {"n": len(group), **mean}
        print(f"| {arm} | {len(group)} | {mean['success']:.2f} | {mean['iou']:.2f} | "
              f"{mean['background_psnr']:.1f} | {mean['reconstruction']:.1f} |")  # fmt: skip
    out = Path(__file__).with_name("flux_real_edits.json")
    out.write_text(json.dumps({"summary": summary, "edits": rows}, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()

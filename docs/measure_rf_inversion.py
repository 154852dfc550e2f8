"""Measure RF-Inversion's reconstruction on toy-flux against inverse Euler: four held-out renders
of world v2 (seeds 5000-5003), each inverted and sampled back with nothing forced
(``reconstruct``), PSNR against the VAE round trip ``decode(encode(render))`` (the ceiling) and
against the render itself, and the seconds each inversion and reconstruction takes.

Arms, all with the empty prompt (the authors' inversion prompt), reconstruction at guidance 1:

- ``flow_invert`` (inverse Euler, γ = 0, plain sampling back);
- ``rf_invert`` at the authors' settings (28 steps, γ 0.5, η 0.9 for the first 7/28 of steps,
  inversion guidance 0, seed 999) and at the community pipeline's η 1.0;
- ``rf_invert`` with η 0 (the controlled forward alone, sampled back plainly);
- ``rf_invert`` with η 0.9 for the first half and three quarters of the steps;
- the community pipeline's forward grid (the model at timestep ``i/(N+1)``, that time in
  ``u_cond``, the denoising intervals in denoising order), then attnprobe's controlled reverse.

Times: one thread (two threads on this shared machine were slowed up to 30× by the other jobs),
wall and CPU seconds of the process, the minimum over the four renders.

Run from the repository root (prints a markdown table, writes ``docs/rf_inversion.json``)::

    OMP_NUM_THREADS=2 python docs/measure_rf_inversion.py [--size 64] [--steps 28]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from editing import RFInversion, flow_invert, rf_invert
from editing.flow_inversion import flow_sampler
from editing.inversion import encode_image, load_image, reconstruct
from editing.rf_inversion import RF_INVERSION_SEED
from editing.sampling import decode, encode_prompts
from editing.scoring.images import psnr
from probe.models import load_pipeline
from probe.toy.world.world import render_scene, scene_for_prompt

PROMPTS = ["a red car on the street", "a blue car in the park", "a green car on the street",
           "a yellow car in the park"]  # fmt: skip


def arms(steps: int) -> dict:
    return {
        "inverse Euler (flow_invert)": lambda p, im, s: flow_invert(p, im, num_steps=steps,
                                                                    height=s, width=s),
        "RF-Inversion, authors (γ 0.5, η 0.9, 7/28)": lambda p, im, s: rf_invert(
            p, im, num_steps=steps, height=s, width=s),
        "RF-Inversion, η 1.0 (community default)": lambda p, im, s: rf_invert(
            p, im, num_steps=steps, eta=1.0, height=s, width=s),
        "RF-Inversion, η 0 (controlled forward only)": lambda p, im, s: rf_invert(
            p, im, num_steps=steps, eta=0.0, height=s, width=s),
        "RF-Inversion, η 0.9, stop 0.5": lambda p, im, s: rf_invert(
            p, im, num_steps=steps, stop=0.5, height=s, width=s),
        "RF-Inversion, η 0.9, stop 0.75": lambda p, im, s: rf_invert(
            p, im, num_steps=steps, stop=0.75, height=s, width=s),
        "RF-Inversion, the community's forward grid": lambda p, im, s: community_grid(
            p, im, steps, s),
    }  # fmt: skip


@torch.no_grad()
def community_grid(pipe, image, steps: int, size: int) -> RFInversion:
    """The forward loop on the community pipeline's grid (see the module): only ``x_0`` and
    ``y_0`` of the result are read by ``reconstruct``."""
    ours = rf_invert(pipe, image, num_steps=steps, gamma=0.0, height=size, width=size)
    y0 = ours.trajectory[-1].float()
    sampler = flow_sampler(pipe, steps, tuple(y0.shape[-2:]), "the community grid")
    noise, cond = sampler.noise(RF_INVERSION_SEED, 1).float(), encode_prompts(pipe, [""], False)
    sigmas, x = sampler.scheduler.sigmas, y0
    for i in range(steps):
        t = i / (steps + 1)
        u = sampler.predict(torch.tensor(1000.0 * t), x, cond, False, 0.0).float()
        x = x + float(sigmas[i] - sigmas[i + 1]) * (u + 0.5 * ((noise - x) / (1 - t) - u))
    return RFInversion([x, *ours.trajectory[1:]], "", steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline("toy-flux")
    rows = []
    for i, prompt in enumerate(PROMPTS):
        render = render_scene(scene_for_prompt(prompt, 5000 + i, "v2"), args.size).image
        with torch.no_grad():
            image = load_image(render, (args.size, args.size))
            round_trip = decode(pipe, encode_image(pipe, image))[0]
        for arm, invert in arms(args.steps).items():
            t0, c0 = time.perf_counter(), time.process_time()
            inv = invert(pipe, render, args.size)
            t1, c1 = time.perf_counter(), time.process_time()
            back = reconstruct(pipe, inv)
            t2, c2 = time.perf_counter(), time.process_time()
            rows.append({"arm": arm, "seed": 5000 + i, "psnr_vs_vae": psnr(round_trip, back),
                         "psnr_vs_render": psnr(render, back),
                         "vae_ceiling": psnr(render, round_trip),
                         "invert_s": t1 - t0, "reconstruct_s": t2 - t1,
                         "invert_cpu_s": c1 - c0, "reconstruct_cpu_s": c2 - c1})  # fmt: skip
    by_arm = defaultdict(list)
    for row in rows:
        by_arm[row["arm"]].append(row)
    print(f"toy-flux, {args.size} px, {args.steps} steps, 4 renders (seeds 5000-5003)\n")
    print("| arm | PSNR vs VAE round trip | PSNR vs render | invert s (CPU s) | reconstruct s |")
    print("|---|---:|---:|---:|---:|")
    summary = {}
    for arm, group in by_arm.items():
        mean = {k: float(np.mean([r[k] for r in group])) for k in ("psnr_vs_vae", "psnr_vs_render")}
        times = ("invert_s", "reconstruct_s", "invert_cpu_s", "reconstruct_cpu_s")
        fastest = {k: min(r[k] for r in group) for k in times}
        low = min(r["psnr_vs_vae"] for r in group)
        summary[arm] = {**mean, **fastest, "psnr_vs_vae_min": low}
        print(f"| {arm} | {mean['psnr_vs_vae']:.1f} (min {low:.1f}) | "
              f"{mean['psnr_vs_render']:.1f} | {fastest['invert_s']:.2f} "
              f"({fastest['invert_cpu_s']:.2f}) | {fastest['reconstruct_s']:.2f} |")  # fmt: skip
    ceiling = float(np.mean([r["vae_ceiling"] for r in rows]))
    print(f"\nVAE round trip vs render (the ceiling): {ceiling:.1f} dB")
    out = Path(__file__).with_name(f"rf_inversion_{args.size}px.json")
    out.write_text(json.dumps({"size": args.size, "steps": args.steps, "summary": summary,
                               "vae_ceiling": ceiling, "rows": rows}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

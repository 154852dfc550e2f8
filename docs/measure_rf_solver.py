"""Measure RF-Solver's and FireFlow's reconstruction on toy-flux against inverse Euler: four
held-out renders of world v2 (seeds 7000-7003, as docs/measure_flux_methods.py makes them),
each inverted with the source prompt at guidance 1 and sampled back (``reconstruct``) at
guidance 1; PSNR against the VAE round trip (``decode(encode(image))``, the ceiling) and the
seconds of the inversion and of the reconstruction. Arms: inverse Euler (``flow_invert``) at
the model's steps; RF-Solver and FireFlow at the same steps and at their authors' (25, 8), the
values stored as the authors do (RF-Solver: 5 steps of its blocks; FireFlow: 1 step of every
single-stream block). Run from the repository root (prints a markdown table)::

    OMP_NUM_THREADS=1 python docs/measure_rf_solver.py
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from editing import flow_invert
from editing.inversion import encode_image, load_image, reconstruct
from editing.rf_solver import solver_invert
from editing.sampling import decode
from editing.scoring.images import psnr
from probe.models import generation_defaults, load_pipeline
from probe.toy.world.world import render_scene, scene_for_prompt

COLOURS = ["red", "green", "blue", "yellow"]


def main() -> None:
    pipe = load_pipeline("toy-flux")
    steps = int(generation_defaults(pipe)["num_inference_steps"])
    arms = [("euler", steps), ("rf-solver", steps), ("fireflow", steps), ("rf-solver", 25),
            ("fireflow", 8), ("euler", 8)]  # fmt: skip
    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for i, colour in enumerate(COLOURS):
        prompt = f"a {colour} car on the street"
        image = render_scene(scene_for_prompt(prompt, 7000 + i, "v2"), 64).image
        size = (image.shape[1], image.shape[0])
        vae = np.asarray(decode(pipe, encode_image(pipe, load_image(image, size)))[0])
        for kind, n in arms:
            t0 = time.perf_counter()
            if kind == "euler":
                inv = flow_invert(pipe, image, prompt, num_steps=n)
            else:
                inv = solver_invert(pipe, image, prompt, num_steps=n, solver=kind)
            t1 = time.perf_counter()
            out = reconstruct(pipe, inv, guidance_scale=1.0)
            t2 = time.perf_counter()
            rows[f"{kind}, {n} steps"].append((psnr(vae, out), t1 - t0, t2 - t1))
    print("| inversion | renders | PSNR vs VAE round trip | inversion s | reconstruction s |")
    print("|---|---:|---:|---:|---:|")
    for arm, group in rows.items():
        p, inv_s, rec_s = (float(np.mean(x)) for x in zip(*group, strict=True))
        print(f"| {arm} | {len(group)} | {p:.1f} | {inv_s:.2f} | {rec_s:.2f} |")


if __name__ == "__main__":
    main()

"""Every real-image edit method × inversion on toy-flux, scored by the toy judges, timed.

Held-out renders of world v2 (seeds 7000-7015, which no test uses): a car of each of eight
colours twice, each edited to the colour three places on in the list. Each inversion runs on the
source prompt at its authors' step count and guidance (inverse Euler: the model's 20 steps, and
Stable Flow's 50 with its nudging 1.15; RF-Inversion 28 steps, γ 0.5, η 0.9 for the first 7/28;
RF-Solver 25 steps storing the values of its blocks; FireFlow 8), then every method that takes
an inversion edits from it at the toy's own guidance 4 (the authors' guidances are FLUX.1-dev's
guidance *input*; the toy guides by true CFG): ``none`` (the target prompt alone from the
inverted noise), ``fpe`` (every block, first 80% of steps), ``stable-flow`` (its vital blocks of
toy-flux, every step), ``masactrl`` (from step 4 and the family's start block) and, on the
solvers' inversions, ``rf-solver`` (their value injection). FlowEdit needs no inversion (the
authors' FLUX.1-dev defaults: 28 steps, n_max 24, guidance 1.5 / 5.5 as true CFG).

Scores: success (judged colour = target), structure IoU of the object masks, background PSNR,
all against the render; the reconstruction PSNR of each inversion sampled back at guidance 1
against the VAE round trip ``decode(encode(render))``; seconds per inversion and per edit,
beside a plain 20-step generation. Run from the repository root (prints markdown tables,
writes ``docs/flux_methods.json``)::

    OMP_NUM_THREADS=1 python docs/measure_flux_methods.py [--renders 16]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from editing import edit, flow_invert
from editing.flow_inversion import encode_flow_image
from editing.inversion import reconstruct
from editing.methods.flowedit import flowedit
from editing.methods.registry import method_names
from editing.rf_inversion import rf_invert
from editing.rf_solver import solver_invert
from editing.sampling import decode
from editing.scoring.images import psnr
from editing.scoring.toy_metrics import score_edit
from probe.models import load_pipeline
from probe.toy.world.world import render_scene, scene_for_prompt

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan"]
GUIDANCE = 4.0  # the toy's own

Inverter = Callable[[Any, Any, str], Any]
INVERSIONS: dict[str, tuple[Inverter, tuple[str, ...]]] = {
    "euler": (lambda p, im, s: flow_invert(p, im, s), ("none", "fpe", "stable-flow", "masactrl")),
    "euler 50, nudge 1.15": (
        lambda p, im, s: flow_invert(p, im, s, num_steps=50, nudge=1.15),
        ("none", "fpe", "stable-flow"),
    ),
    "rf-inversion": (lambda p, im, s: rf_invert(p, im, s), ("none", "fpe", "stable-flow",
                                                            "masactrl")),  # fmt: skip
    "rf-solver": (lambda p, im, s: solver_invert(p, im, s),
                  ("none", "fpe", "rf-solver", "stable-flow", "masactrl")),  # fmt: skip
    "fireflow": (lambda p, im, s: solver_invert(p, im, s, solver="fireflow"),
                 ("none", "fpe", "rf-solver", "stable-flow")),  # fmt: skip
}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=16)
    parser.add_argument("--inversions-only", action="store_true",
                        help="redo the inversions and reconstructions only, keep the edits")  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=None,
                        help="redo only these methods' edits; keep every other row and the "
                        "inversions' table of the last run")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread: 2 threads on a shared 2-core machine ran 10x slower
    pipe = load_pipeline("toy-flux")
    rows: list[dict[str, Any]] = []
    inversions: list[dict[str, Any]] = []
    pipe("a red car on the street", **_plain_kwargs(pipe))  # warm-up
    plain_times = [timed(lambda: pipe("a red car on the street", **_plain_kwargs(pipe)))[1]
                   for _ in range(3)]  # fmt: skip
    for i, colour in enumerate((COLOURS * 4)[: args.renders]):
        target = COLOURS[(COLOURS.index(colour) + 3) % len(COLOURS)]
        source_prompt = f"a {colour} car on the street"
        target_prompt = f"a {target} car on the street"
        render = render_scene(scene_for_prompt(source_prompt, 7000 + i, "v2"), 64)
        round_trip = decode(pipe, encode_flow_image(pipe, render.image, (64, 64)))[0]

        def score(image: Any, arm: str, seconds: float, inversion: str) -> None:
            s = score_edit(render.image, image, slot="colour", target=target,
                           source_label=colour, world="v2")  # fmt: skip
            rows.append({"arm": arm, "inversion": inversion, "success": bool(s.success),
                         "iou": s.iou, "background_psnr": s.background_psnr,
                         "seconds": seconds})  # fmt: skip

        for name, (invert, methods) in INVERSIONS.items():
            inv, seconds = timed(lambda invert=invert: invert(pipe, render.image, source_prompt))
            rec = reconstruct(pipe, inv, guidance_scale=1.0)
            inversions.append({"inversion": name, "steps": inv.num_steps, "seconds": seconds,
                               "reconstruction": psnr(round_trip, rec),
                               "render_psnr": psnr(render.image, rec)})  # fmt: skip
            chosen = [m for m in methods if m in method_names() and not args.inversions_only]
            for method in (m for m in chosen if args.methods is None or m in args.methods):
                result, t = timed(lambda m=method, inv=inv: edit(
                    pipe, source_prompt, [target_prompt], method=m, inversion=inv,
                    guidance_scale=GUIDANCE))  # fmt: skip
                score(result.targets[0], f"{name} + {method}", t, name)
        if not args.inversions_only and args.methods is None:
            result, t = timed(lambda: flowedit(pipe, render.image, source_prompt, target_prompt))
            score(result.image, "FlowEdit", t, "none")
        print(f"render {i + 1}/{args.renders} done", flush=True)
    out = Path(__file__).with_name("flux_methods.json")
    edit_plain = plain_times  # edits and inversions timed against a plain run of their own run
    if args.inversions_only:  # the edits (and their plain generation) of the last full run
        last = json.loads(out.read_text())
        rows, edit_plain = last["edits"], last["plain_generation_seconds"]["edits"]
    if args.methods is not None:  # the other methods' rows and the inversions of the last run
        last = json.loads(out.read_text())
        kept = [r for r in last["edits"] if r["arm"].split(" + ")[-1] not in args.methods]
        rows, inversions = kept + rows, last["inversions"]
    plain = {"edits": edit_plain, "inversions": plain_times}
    summary = _tables(rows, inversions, {k: float(np.median(v)) for k, v in plain.items()})
    out.write_text(json.dumps({"summary": summary, "edits": rows, "inversions": inversions,
                               "plain_generation_seconds": plain}, indent=1,
                              default=float) + "\n")  # fmt: skip


def _plain_kwargs(pipe: Any) -> dict[str, Any]:
    from probe.families import family_of

    return family_of(pipe).pipe_kwargs(pipe, ["a red car on the street"], GUIDANCE) | {
        "num_inference_steps": 20, "height": 64, "width": 64, "output_type": "latent",
    }  # fmt: skip


def _tables(rows: list[dict], inversions: list[dict], plain: dict[str, float]) -> dict[str, Any]:
    by_inv: dict[str, list[dict]] = defaultdict(list)
    for r in inversions:
        by_inv[r["inversion"]].append(r)
    print(f"\nplain 20-step generation: {plain['inversions']:.2f} s (median of 3, this run); "
          f"{plain['edits']:.2f} s in the run of the edits\n")  # fmt: skip
    print("| inversion | steps | seconds (median) | × plain generation | reconstruction PSNR vs "
          "VAE round trip | vs render |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    summary: dict[str, Any] = {"inversions": {}, "arms": {}, "plain_seconds": plain}
    for name, group in by_inv.items():
        m = {k: float(np.median([g[k] for g in group])) for k in ("seconds",)}
        m |= {k: float(np.mean([g[k] for g in group])) for k in ("reconstruction", "render_psnr")}
        summary["inversions"][name] = {"n": len(group), "steps": group[0]["steps"], **m}
        print(f"| {name} | {group[0]['steps']} | {m['seconds']:.2f} | "
              f"{m['seconds'] / plain['inversions']:.1f} | {m['reconstruction']:.1f} | "
              f"{m['render_psnr']:.1f} |")  # fmt: skip
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_arm[r["arm"]].append(r)
    print("\n| inversion + method | edits | success | structure IoU | background PSNR | "
          "seconds per edit (median) | × plain generation |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm, group in by_arm.items():
        m = {k: float(np.mean([g[k] for g in group])) for k in ("success", "iou",
                                                                "background_psnr")}  # fmt: skip
        m["seconds"] = float(np.median([g["seconds"] for g in group]))
        summary["arms"][arm] = {"n": len(group), **m}
        print(f"| {arm} | {len(group)} | {m['success']:.2f} | {m['iou']:.2f} | "
              f"{m['background_psnr']:.1f} | {m['seconds']:.2f} | "
              f"{m['seconds'] / plain['edits']:.1f} |")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()

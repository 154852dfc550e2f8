"""Recording benchmarks: what recording every layer at every step costs, next to plain sampling
and next to a Prompt-to-Prompt style store, and how that grows with latent size and layers.

Each case returns a JSON-ready dict (see :mod:`benchmarks.report`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.baselines import MaterialiseEverywhere
from benchmarks.measure import run_interleaved, summarize
from benchmarks.profiles import Bench
from benchmarks.rigs import UNetRig, random_conditioning, random_latents, toy_like_unet, unet_loop
from probe.attention.hooks import AttentionHooks
from probe.models import generation_defaults
from probe.recording.recorder import record_attention

RECORD_TARGET = 1.3
PROMPT = "a red car in the park"
MIB = 2**20


def _mib(n: int) -> float:
    return round(n / MIB, 1)


def _recording_variants(
    model: Any, run: Callable[[], Any], reduces: tuple[str, ...], layers: str = "all"
) -> tuple[dict[str, Callable[[], Any]], dict[str, dict[str, Any]]]:
    """plain / record (one per ``self_reduce``) / p2p_store variants around ``run``."""
    extra: dict[str, dict[str, Any]] = {}

    def record(reduce: str) -> Callable[[], Any]:
        def go() -> None:
            with record_attention(model, layers=layers, self_reduce=reduce) as maps:
                run()
            extra[f"record[{reduce}]"] = {
                "maps_mib": _mib(maps.nbytes),
                "self_reduce": maps.settings.get("self_reduce"),
            }

        return go

    def p2p_store() -> None:
        store = MaterialiseEverywhere(store=True)
        with AttentionHooks(model, [store]):
            run()
        extra["p2p_store"] = {"maps_mib": _mib(store.nbytes), "self_reduce": "full, all heads"}

    variants: dict[str, Callable[[], Any]] = {"plain": run}
    variants.update({f"record[{r}]": record(r) for r in reduces})
    variants["p2p_store"] = p2p_store
    return variants, extra


def record_toy(bench: Bench) -> dict[str, Any]:
    """Recording overhead on the toy pipeline (text encoder + UNet loop, latents out)."""
    pipe, prof = bench.pipe(), bench.profile
    gen = generation_defaults(pipe)
    steps = prof.pipe_steps or gen["num_inference_steps"]

    def generate() -> Any:
        return pipe(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=gen["guidance_scale"],
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )

    variants, extra = _recording_variants(pipe, generate, ("auto", "svd:8", "pool:8"))
    runs = run_interleaved(variants, prof.repeats, prof.warmup, bench.log)
    table = summarize(runs, "plain")
    latent = gen["height"] // pipe.vae_scale_factor
    group = {
        "label": f"{bench.model}, {latent}x{latent} latents",
        "model": bench.model,
        "settings": {"steps": steps, "guidance": gen["guidance_scale"], "latent": latent,
                     "layers": "all 16", "kinds": "cross+self", "prompt": PROMPT},
        "baseline": "plain",
        "variants": table,
        "extra": extra,
    }  # fmt: skip
    ratio = table["record[auto]"]["time_ratio"]
    return {
        "case": "record_toy",
        "title": "Recording overhead on the toy pipeline",
        "groups": [group],
        "targets": [_target(f"record all layers, every step, on {bench.model}", ratio)],
        "notes": [
            "record[auto] is record_attention's default: cross-attention per token at native "
            "resolution, self-attention whole when it fits the 4 GiB budget (else svd:8), head "
            "mean, fp16. svd:8 / pool:8 reduce self-attention on the fly.",
            "p2p_store materialises every map and keeps the conditional rows' maps, every head, "
            "fp32, summed over steps (Prompt-to-Prompt's AttentionStore, here for all 16 "
            "layers; Prompt-to-Prompt itself stores only layers of <= 32x32 queries at 512 px).",
            "Timed: the pipeline call with output_type='latent' (no VAE decode), so the "
            "overhead is relative to the text encoder + UNet loop only.",
        ],
    }


def _target(what: str, ratio: float | None) -> dict[str, Any]:
    return {
        "name": f"{what}: time <= {RECORD_TARGET}x plain",
        "measured": ratio,
        "limit": RECORD_TARGET,
        "met": ratio is not None and ratio <= RECORD_TARGET,
    }


def rig_group(
    bench: Bench, rig: UNetRig, latent: int, steps: int, repeats: int, warmup: bool,
    reduces: tuple[str, ...], layers: str = "all", with_p2p: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """One UNet-only recording comparison at one latent size."""
    latents = random_latents(rig, 1, latent)
    embeddings = random_conditioning(rig, 2, latent)  # SDXL: pooled embeddings and time ids too

    def loop() -> Any:
        return unet_loop(rig, latents.clone(), embeddings, steps)

    variants, extra = _recording_variants(rig, loop, reduces, layers)
    if not with_p2p:
        variants.pop("p2p_store")
    bench.log(f"  {rig.name}, latent {latent}, layers {layers}")
    table = summarize(run_interleaved(variants, repeats, warmup, bench.log), "plain")
    return {
        "label": f"{rig.name}, {latent}x{latent} latents, layers {layers}",
        "model": rig.name,
        "settings": {"latent": latent, "steps": steps, "guidance": 7.5, "batch": 2,
                     "layers": layers, "weights_mib": rig.params_mib},
        "baseline": "plain",
        "variants": table,
        "extra": extra,
    }  # fmt: skip


def record_sd15(bench: Bench) -> dict[str, Any]:
    """Recording overhead on the SD 1.5 UNet (random weights) at several latent sizes."""
    prof, rig = bench.profile, bench.sd15_rig()
    groups = [
        rig_group(bench, rig, latent, prof.sd15_steps, prof.sd15_repeats, False, ("auto", "svd:8"))
        for latent in prof.sd15_latents
    ]
    return {
        "case": "record_sd15",
        "title": "Recording on the SD 1.5 UNet (random weights, UNet-only loop)",
        "groups": groups,
        "targets": [],
        "notes": [
            f"UNet-only guided DDIM loop, {prof.sd15_steps} step(s), 1 sample (batch 2 with "
            "guidance), random text embeddings [2, 77, 768]; no warm-up run; "
            f"{prof.sd15_repeats} timed run(s) per variant, interleaved.",
            "Per-step costs: more steps multiply time and, for the stores, memory.",
        ],
    }


def record_scaling(bench: Bench) -> dict[str, Any]:
    """How recording cost and memory grow with latent size and the number of layers."""
    prof = bench.profile
    rig = UNetRig(toy_like_unet(), name="toy UNet")
    groups = []
    for latent in prof.scaling_latents:
        for layers in prof.scaling_layers:
            groups.append(
                rig_group(bench, rig, latent, prof.scaling_steps, prof.scaling_repeats, prof.warmup,
                          ("auto",), layers=layers, with_p2p=layers == "all")
            )  # fmt: skip
    return {
        "case": "record_scaling",
        "title": "Recording cost and memory vs latent size and recorded layers (toy UNet)",
        "groups": groups,
        "targets": [],
        "notes": [
            f"The toy UNet architecture (random weights), UNet-only loop, {prof.scaling_steps} "
            "steps, guidance (batch 2), record_attention defaults (self_reduce auto).",
            "Layer sets: 'mid' = 1 layer (coarsest), 'res<max' = every layer but the finest "
            "resolution (11), 'all' = 16.",
        ],
    }

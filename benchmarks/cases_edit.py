"""Editing benchmarks: FPE's fused path vs the materialised one, several targets sharing one
source branch, and real-image editing (DDIM inversion vs null-text inversion).

Each case returns a JSON-ready dict (see :mod:`benchmarks.report`).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.baselines import InPlaceMaterialisedReplace, MaterialiseEverywhere
from benchmarks.measure import release_memory, run_interleaved, summarize
from benchmarks.profiles import Bench
from benchmarks.rigs import UNetRig, random_conditioning, random_latents
from editing import edit
from editing.inversion import ddim_invert
from editing.methods.replace import SelfAttentionReplace
from editing.null_text import null_text_invert
from editing.sampling import denoise
from probe.attention.batch import BatchLayout
from probe.models import generation_defaults

SOURCE = "a red car in the park"
TARGETS = [f"a {c} car in the park" for c in
           ("blue", "green", "yellow", "black", "pink", "purple", "orange", "brown")]  # fmt: skip


def fpe_group(
    bench: Bench, rig: UNetRig, latent: int, steps: int, repeats: int, layers: str
) -> dict[str, Any]:
    """One fused-vs-materialised FPE comparison: 1 source + 1 target with guidance (batch 4),
    ``steps`` DDIM steps, every step edited, random conditioning; ``layers`` names what the
    ``fpe`` preset resolves to (for the table)."""
    layout = BatchLayout.for_edit(1, True)
    latents = random_latents(rig, 2, latent)
    rows = random_conditioning(rig, len(layout), latent)
    finals: dict[str, torch.Tensor] = {}

    def run(name: str, make: Any) -> Any:
        def go() -> None:
            finals[name] = denoise(rig, rows, latents.clone(), layout, make(), steps, 7.5)

        return go

    variants = {
        "materialised": run(
            "materialised",
            lambda: [MaterialiseEverywhere(), InPlaceMaterialisedReplace("fpe", "all")],
        ),
        "fused": run("fused", lambda: [SelfAttentionReplace("fpe", "all")]),
    }
    bench.log(f"  {rig.name}, latent {latent}")
    table = summarize(run_interleaved(variants, repeats, False, bench.log), "materialised")
    diff = float((finals["fused"] - finals["materialised"]).abs().max())
    return {
        "label": f"{rig.name}, {latent}x{latent} latents",
        "model": rig.name,
        "settings": {"latent": latent, "steps": steps, "guidance": 7.5, "batch": len(layout),
                     "layers": layers, "edited steps": "all", "weights_mib": rig.params_mib},
        "baseline": "materialised",
        "variants": table,
        "extra": {},
        "checks": {"max_abs_diff_final_latents": diff},
    }  # fmt: skip


def fpe_targets(fused: dict[str, Any]) -> list[dict[str, Any]]:
    """The fused path's targets against the materialised one (time, peak, peak above start)."""
    return [
        _limit("fused time <= 1.0x materialised", fused["time_ratio"], 1.0),
        _limit("fused peak RSS <= 0.5x materialised", fused["peak_ratio"], 0.5),
        _limit("fused peak above weights <= 0.5x materialised", fused["delta_ratio"], 0.5),
    ]


FPE_NOTES = (
    "materialised = the official FPE code's approach re-implemented on attnprobe's hooks: every "
    "attention call computes softmax(QK^T) and probs @ V; in the FPE layers the source row's "
    "probabilities are copied over the target's (conditional half).",
    "fused = attnprobe's SelfAttentionReplace: the target's queries and keys are the source's, "
    "attention stays on F.scaled_dot_product_attention everywhere.",
)


def fpe_sd15(bench: Bench) -> dict[str, Any]:
    """FPE edit on the SD 1.5 UNet: fused ``SDPA(q_src, k_src, v_tgt)`` vs materialised."""
    prof = bench.profile
    group = fpe_group(bench, bench.sd15_rig(), prof.fpe_latent, prof.sd15_steps,
                      prof.sd15_repeats, "fpe (res<max: 2-12 at 64x64)")  # fmt: skip
    return {
        "case": "fpe_sd15",
        "title": "FPE edit: fused SDPA(q_src, k_src, v_tgt) vs materialised probabilities",
        "groups": [group],
        "targets": fpe_targets(group["variants"]["fused"]),
        "notes": [
            *FPE_NOTES,
            f"1 source + 1 target with guidance (batch {group['settings']['batch']}), "
            f"{prof.sd15_steps} DDIM step(s), every step edited, random text embeddings; "
            f"{prof.sd15_repeats} timed run(s) per variant, interleaved, no warm-up.",
        ],
    }


def _limit(name: str, measured: float | None, limit: float) -> dict[str, Any]:
    met = measured is not None and measured <= limit
    return {"name": name, "measured": measured, "limit": round(limit, 4), "met": met}


def k_targets(bench: Bench) -> dict[str, Any]:
    """K targets sharing one source branch vs K separate one-target edits."""
    pipe, prof = bench.pipe(), bench.profile
    steps = prof.pipe_steps or generation_defaults(pipe)["num_inference_steps"]
    groups, targets = [], []
    for k in prof.k_values:
        variants = {
            "separate": lambda k=k: [
                edit(pipe, SOURCE, [t], "fpe", num_steps=steps) for t in TARGETS[:k]
            ],
            "shared": lambda k=k: edit(pipe, SOURCE, TARGETS[:k], "fpe", num_steps=steps),
        }
        bench.log(f"  K = {k}")
        table = summarize(run_interleaved(variants, prof.k_repeats, prof.warmup, bench.log),
                          "separate")  # fmt: skip
        groups.append({
            "label": f"K = {k}",
            "model": bench.model,
            "settings": {"k": k, "steps": steps, "method": "fpe"},
            "baseline": "separate",
            "variants": table,
            "extra": {},
        })  # fmt: skip
        limit = (k + 1) / (2 * k) * 1.1
        targets.append(
            _limit(f"K={k}: shared <= (K+1)/(2K) x 1.1 = {limit:.3f} of separate",
                   table["shared"]["time_ratio"], limit)
        )  # fmt: skip
    return {
        "case": "k_targets",
        "title": "K targets sharing one source branch vs K separate edits",
        "groups": groups,
        "targets": targets,
        "notes": [
            "separate = K calls of edit(pipe, source, [target]); shared = one call of "
            "edit(pipe, source, targets) (batch 2(K+1) rows with guidance instead of K times "
            "4 rows). Whole edit calls: text encoder, UNet loop, VAE decode of every image.",
            "'plus 10%' is read as a factor 1.1 on (K+1)/(2K) (the stricter reading).",
        ],
    }


def real_image(bench: Bench) -> dict[str, Any]:
    """Real-image editing: DDIM inversion + FPE vs null-text inversion + FPE vs one generation."""
    pipe, prof = bench.pipe(), bench.profile
    gen = generation_defaults(pipe)
    steps = prof.pipe_steps or gen["num_inference_steps"]
    image = pipe(
        SOURCE, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)
    ).images[0]

    def plain() -> Any:
        return pipe(TARGETS[0], num_inference_steps=steps, output_type="pil")

    def ddim_fpe() -> Any:
        inv = ddim_invert(pipe, image, num_steps=steps)
        return edit(pipe, SOURCE, TARGETS[:1], "fpe", inversion=inv)

    def null_text_fpe() -> Any:
        pivot = ddim_invert(pipe, image, prompt=SOURCE, num_steps=steps)
        inv = null_text_invert(pipe, pivot, SOURCE, inner_steps=prof.null_inner_steps)
        return edit(pipe, SOURCE, TARGETS[:1], "fpe", inversion=inv)

    variants = {"plain_generation": plain, "ddim_invert+fpe": ddim_fpe,
                "null_text_invert+fpe": null_text_fpe}  # fmt: skip
    table = summarize(run_interleaved(variants, prof.real_repeats, prof.warmup, bench.log),
                      "plain_generation")  # fmt: skip
    release_memory()
    group = {
        "label": f"{bench.model}, {steps} steps",
        "model": bench.model,
        "settings": {"steps": steps, "guidance": gen["guidance_scale"],
                     "null_text_inner_steps": prof.null_inner_steps, "edit": "fpe"},
        "baseline": "plain_generation",
        "variants": table,
        "extra": {},
    }  # fmt: skip
    return {
        "case": "real_image",
        "title": "Real-image edit: DDIM inversion + FPE vs null-text inversion + FPE",
        "groups": [group],
        "targets": [],
        "notes": [
            "The 'real' image is a generated image of the model (decoded to pixels and "
            "encoded again), so inversion starts from pixels as with a photo.",
            "ddim_invert+fpe: the official FPE real-image path (empty-prompt DDIM inversion; the "
            "source row follows the inverted latents). null_text_invert+fpe: Prompt-to-Prompt's "
            f"path (DDIM inversion with the source prompt, then {prof.null_inner_steps} Adam "
            "steps per DDIM step on the unconditional embedding), followed by the same FPE edit.",
        ],
    }


NULL_TEXT_STEPS = 10
"""DDIM steps of the null-text case (a small case: its cost grows linearly with the steps)."""


def null_text(bench: Bench) -> dict[str, Any]:
    """Null-text inversion with the published schedules, beside the DDIM pivot it starts from."""
    pipe, prof = bench.pipe(), bench.profile
    gen = generation_defaults(pipe)
    steps = prof.pipe_steps or NULL_TEXT_STEPS
    image = pipe(
        SOURCE, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)
    ).images[0]
    traces: list[list[dict[str, float]]] = []

    def pivot() -> Any:
        return ddim_invert(pipe, image, prompt=SOURCE, num_steps=steps)

    def pivot_and_null_text() -> Any:
        traces.append([])
        return null_text_invert(
            pipe, pivot(), SOURCE, inner_steps=prof.null_inner_steps, trace=traces[-1]
        )

    variants = {"ddim_pivot": pivot, "ddim_pivot+null_text": pivot_and_null_text}
    table = summarize(run_interleaved(variants, prof.real_repeats, False, bench.log),
                      "ddim_pivot")  # fmt: skip
    release_memory()
    used = [int(r["iterations"]) for r in traces[-1]]
    seconds = table["ddim_pivot+null_text"]["seconds"] - table["ddim_pivot"]["seconds"]
    group = {
        "label": f"{bench.model}, {steps} steps, up to {prof.null_inner_steps} Adam iterations",
        "model": bench.model,
        "settings": {"steps": steps, "guidance": gen["guidance_scale"],
                     "inner_steps": prof.null_inner_steps, "lr": "1e-2 (1 - i/100)",
                     "early_stop": "loss < 1e-5 + i 2e-5"},
        "baseline": "ddim_pivot",
        "variants": table,
        "extra": {"adam_iterations": sum(used), "early_stopped_steps": sum(u < prof.null_inner_steps
                  for u in used), "null_text_seconds": round(seconds, 2),
                  "seconds_per_adam_iteration": round(seconds / max(sum(used), 1), 3),
                  "last_losses": [round(r["loss"], 6) for r in traces[-1]]},
    }  # fmt: skip
    return {
        "case": "null_text",
        "title": "Null-text inversion (published schedules) vs its DDIM pivot",
        "groups": [group],
        "targets": [],
        "notes": [
            "ddim_pivot: DDIM inversion of a generated image with the source prompt, no "
            "guidance (the published pivot). ddim_pivot+null_text: the same pivot, then null-text "
            "inversion as null_text_w_ptp.ipynb: per DDIM step i a fresh Adam on the previous "
            "step's unconditional embedding, lr 1e-2 (1 - i/100), stop once the loss is below "
            "1e-5 + i 2e-5, at the model's guidance. Each Adam iteration is one UNet pass with "
            "backward; each step adds two passes without (the conditional prediction, the "
            "step with the result).",
            f"{prof.real_repeats} timed run(s) per variant, interleaved, no warm-up.",
        ],
    }

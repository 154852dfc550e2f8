"""What an FPE edit costs over generating its two images, on the toy model.

``plain`` generates the source and the target prompt in one guided batch through the same edit
loop with nothing replaced (``edit(method="none")``: 4 UNet rows, the text encoder, the VAE
decode of both images); ``fpe`` is the same call with FPE's self-attention replacement in the
``fpe`` layers for the first 0.8 of the steps. The limit the issue sets: the edit should cost
what generating the two images costs (≤ 1.05×). Returns a JSON-ready dict
(:mod:`benchmarks.report`).
"""

from __future__ import annotations

from typing import Any

from benchmarks.cases_edit import SOURCE, TARGETS
from benchmarks.measure import run_interleaved, summarize
from benchmarks.profiles import Bench
from editing import edit
from probe.models import generation_defaults

FPE_LIMIT = 1.05


def fpe_overhead(bench: Bench) -> dict[str, Any]:
    """An FPE edit of one target against a guided generation of the same two images."""
    pipe, prof = bench.pipe(), bench.profile
    steps = prof.pipe_steps or generation_defaults(pipe)["num_inference_steps"]
    variants = {
        "plain": lambda: edit(pipe, SOURCE, TARGETS[:1], "none", num_steps=steps),
        "fpe": lambda: edit(pipe, SOURCE, TARGETS[:1], "fpe", num_steps=steps),
    }
    runs = run_interleaved(variants, prof.overhead_repeats, prof.warmup, bench.log)
    table = summarize(runs, "plain")
    ratio = table["fpe"]["time_ratio"]
    group = {
        "label": f"{bench.model}, {steps} steps, 1 source + 1 target with guidance",
        "model": bench.model,
        "settings": {"steps": steps, "method": "fpe", "layers": "fpe", "step_fraction": 0.8},
        "baseline": "plain",
        "variants": table,
        "extra": {},
    }
    met = ratio is not None and ratio <= FPE_LIMIT
    target = {"name": f"fpe <= {FPE_LIMIT}x plain", "measured": ratio, "limit": FPE_LIMIT}
    return {
        "case": "fpe_overhead",
        "title": "FPE edit vs a plain guided generation of the same two images",
        "groups": [group],
        "targets": [{**target, "met": met}],
        "notes": [
            "plain = edit(pipe, source, [target], method='none'); fpe = the same with "
            "method='fpe' (fused SDPA(q_src, k_src, v_tgt) in the target rows). Whole calls.",
        ],
    }

"""SDXL benchmarks: recording and FPE on the full SDXL base UNet built from its config.

The UNet is ``tests/replicas/sdxl-base/unet/config.json`` with random weights (2.6 G parameters,
~9.6 GiB in fp32), fed random text embeddings ``[rows, 77, 2048]``, random pooled embeddings and
the time ids of the size generated. At the default 128x128 latents (1024 px) its finest attention
level has 64x64 = 4096 query positions (10 layers), the other 60 layers 32x32.

The cases run one at a time; the weights alone take ~9.6 GiB, so run each in its own process::

    python benchmarks/run_all.py --cases record_sdxl --out benchmarks/results
    python benchmarks/run_all.py --cases fpe_sdxl --out benchmarks/results

``--sdxl-latent 32`` runs the same full-size UNet at a smaller latent (a smoke run); ``--quick``
puts ``tiny-xl``'s UNet in its place.
"""

from __future__ import annotations

from typing import Any

from benchmarks.cases_edit import FPE_NOTES, fpe_group, fpe_targets
from benchmarks.cases_record import rig_group
from benchmarks.profiles import Bench
from probe.attention.layers import fpe_rule, resolve_layers
from probe.families.unet import unet_layers


def _spans(layers: list[int]) -> str:
    """``[4, 5, 6, 9]`` → ``"4-6,9"``."""
    parts: list[str] = []
    for i in layers:
        if parts and int(parts[-1].split("-")[-1]) == i - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts) or "none"


def _sizes(rig: Any, latent: int) -> str:
    """How many layers at each query resolution, at this latent size."""
    table = unet_layers(rig.unet, latent, latent)
    counts: dict[tuple[int, int], int] = {}
    for layer in table:
        counts[layer.resolution] = counts.get(layer.resolution, 0) + 1
    return ", ".join(f"{n} at {h}x{w}" for (h, w), n in counts.items())


def record_sdxl(bench: Bench) -> dict[str, Any]:
    """Recording every layer at every step on the SDXL UNet: ``svd:8`` self, fp16 cross."""
    prof, rig = bench.profile, bench.sdxl_rig()
    latent = prof.sdxl_latent
    group = rig_group(bench, rig, latent, prof.sdxl_steps, prof.sdxl_repeats, False,
                      ("svd:8",), with_p2p=False)  # fmt: skip
    group["settings"]["layer sizes"] = _sizes(rig, latent)
    return {
        "case": "record_sdxl",
        "title": "Recording on the SDXL base UNet (random weights, UNet-only loop)",
        "groups": [group],
        "targets": [],
        "notes": [
            f"UNet-only guided DDIM loop, {prof.sdxl_steps} step(s), 1 sample (batch 2 with "
            "guidance), random text embeddings [2, 77, 2048], random pooled embeddings and the "
            "time ids of the size generated; no warm-up run; "
            f"{prof.sdxl_repeats} timed run(s) per variant, interleaved.",
            "record[svd:8]: every layer, every step, cross-attention per token at native "
            "resolution and self-attention as its top 8 SVD components, head mean, fp16 "
            "(record_attention's defaults otherwise). No Prompt-to-Prompt store here: every "
            "map of every head in fp32 would take ~11 GiB at 128x128 beside 9.6 GiB of weights.",
        ],
    }


def fpe_sdxl(bench: Bench) -> dict[str, Any]:
    """FPE edit on the SDXL UNet: fused ``SDPA(q_src, k_src, v_tgt)`` vs materialised."""
    prof, rig = bench.profile, bench.sdxl_rig()
    latent = prof.sdxl_latent
    table = unet_layers(rig.unet, latent, latent)
    fpe = _spans(resolve_layers(table, "fpe"))
    layers = f"fpe ({fpe_rule(table)}: {fpe} at {latent}x{latent})"
    group = fpe_group(bench, rig, latent, prof.sdxl_steps, prof.sdxl_repeats, layers)
    group["settings"]["layer sizes"] = _sizes(rig, latent)
    return {
        "case": "fpe_sdxl",
        "title": "FPE edit on the SDXL UNet: fused SDPA(q_src, k_src, v_tgt) vs materialised",
        "groups": [group],
        "targets": fpe_targets(group["variants"]["fused"]),
        "notes": [
            *FPE_NOTES,
            f"1 source + 1 target with guidance (batch {group['settings']['batch']}), "
            f"{prof.sdxl_steps} DDIM step(s), every step edited, random conditioning (text "
            "embeddings, pooled embeddings, time ids); "
            f"{prof.sdxl_repeats} timed run(s) per variant, interleaved, no warm-up.",
            "At 128x128 latents the materialised path holds [4, 10, 4096, 4096] fp32 "
            "probabilities (2.5 GiB) in each of the 10 finest layers, one layer at a time.",
        ],
    }

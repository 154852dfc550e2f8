"""Streaming benchmark: probing a generated dataset of 10,000 samples in memory vs a group of
layers at a time (:func:`probe.probing.stream.probe_dataset` with a ``memory`` budget).

The dataset is generated, not recorded (recording 10,000 samples would take hours here): one
toy sample of the demo's colour set is recorded, at the demo's step stride with ``svd:8`` self
maps, and every generated sample is that sample's tensors plus noise plus a pattern of its class,
written through :class:`probe.recording.store.DatasetFolder` like a recorded sample (index,
checksums). Both variants probe every cell with the same reduced optimiser settings (2 folds,
20 iterations: at 10,000 rows a full fit of all 160 cells would take about an hour, and the
optimiser is the same in both variants), so the difference is how features are read and held.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.measure import run_interleaved, summarize
from benchmarks.profiles import Bench
from editing.experiment.reproduction import ReproduceConfig
from probe.models import generation_defaults
from probe.probing.probes import ProbeConfig, ProbeResults
from probe.probing.stream import plan_features, probe_dataset
from probe.prompts.templates import load_template
from probe.recording.dataset import record_dataset
from probe.recording.maps import AttentionMaps
from probe.recording.store import AttentionDataset, DatasetFolder, SampleSpec

DATA_ENV = "ATTNPROBE_BENCH_STREAM_DATA"  # keep the generated dataset here between runs
BUDGET = 2**30  # the streamed variant's feature budget


def _template(bench: Bench, folder: Path) -> tuple[AttentionMaps, dict[str, Any], list[str]]:
    """One recorded sample of the demo's colour set, its entry, and the set's colours."""
    pipe = bench.pipe()
    demo = ReproduceConfig.preset(bench.model or "toy")
    num_steps = demo.num_steps or int(generation_defaults(pipe)["num_inference_steps"])
    if bench.profile.name == "quick":
        num_steps = bench.profile.pipe_steps or num_steps
    template = load_template("colour_car")
    record_dataset(
        pipe, template, [0], folder, model=bench.model or "", self_reduce="svd:8",
        steps=list(range(0, num_steps, demo.step_stride)), num_steps=num_steps, progress=False,
    )  # fmt: skip
    data = AttentionDataset(folder)
    return data.load(0), data.entries[0], data.classes("colour")


def generate(bench: Bench, out: Path, n: int, seed: int = 0) -> AttentionDataset:
    """``n`` samples from one recorded one: its maps + noise + a pattern per class."""
    if (out / "index.jsonl").is_file() and len(AttentionDataset(out)) == n:
        return AttentionDataset(out)
    maps, entry, _ = _template(bench, out.parent / f"{out.name}-template")
    colours = load_template("colour_car").classes("colour")
    gen = torch.Generator().manual_seed(seed)
    names = list(maps.data)
    flat = torch.cat([maps.data[k].float().flatten() for k in names])
    scale = torch.cat([maps.data[k].float().abs().mean().expand(maps.data[k].numel())
                       for k in names])  # fmt: skip
    scale = scale + 1e-6
    signal = {c: flat + 0.3 * scale * torch.randn(flat.shape, generator=gen) for c in colours}
    sizes = [maps.data[k].numel() for k in names]
    folder = DatasetFolder(out)
    template_meta = (out.parent / f"{out.name}-template" / "meta.json").read_text()
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(template_meta)
    word = entry["label_words"]["colour"]  # every sample's features read this token's column
    for i in range(n):
        colour = colours[i % len(colours)]
        values = signal[colour] + scale * torch.randn(flat.shape, generator=gen)
        data = {
            k: part.view(maps.data[k].shape).to(maps.data[k].dtype)
            for k, part in zip(names, values.split(sizes), strict=True)
        }
        spec = SampleSpec(f"g{i:05d}", entry["prompt"], {"colour": colour}, {"colour": word}, i)
        folder.write_sample(spec, AttentionMaps(maps.layers, maps.latent_hw, maps.tokens,
                                                maps.timesteps, maps.settings, data))  # fmt: skip
    return AttentionDataset(out)


def probe_stream(bench: Bench) -> dict[str, Any]:
    """In-memory vs streamed probing of a generated 10,000-sample dataset."""
    n = 40 if bench.profile.name == "quick" else 10_000
    kept = os.environ.get(DATA_ENV)
    with tempfile.TemporaryDirectory(prefix="attnprobe-bench-stream-") as tmp:
        folder = Path(kept) if kept else Path(tmp) / "generated"
        bench.log(f"  generating {n} samples into {folder}")
        data = generate(bench, folder, n)
        plan = plan_features(data, "colour")
        budget = BUDGET if n >= 10_000 else max(plan.layer_bytes.values())
        config = ProbeConfig(folds=2, max_iter=20)
        results: dict[str, ProbeResults] = {}

        def variant(memory: int | None, name: str) -> Any:
            def go() -> None:
                results[name] = probe_dataset(data, "colour", config, memory=memory, progress=False)

            return go

        runs = run_interleaved(
            {"in_memory": variant(None, "in_memory"), "streamed": variant(budget, "streamed")},
            1, False, bench.log,
        )  # fmt: skip
        disk = sum(e["bytes"] for e in data.entries)
    table = summarize(runs, "in_memory")
    same = [r.acc_mean for r in results["in_memory"].rows] == [
        r.acc_mean for r in results["streamed"].rows
    ]
    group = {
        "label": f"{bench.model}, generated colour set of {n} samples",
        "model": bench.model,
        "settings": {"samples": n, "cells": len(results["streamed"].rows),
                     "features_mib": round(plan.total / 2**20), "disk_mib": round(disk / 2**20),
                     "budget_mib": round(budget / 2**20), "groups": len(plan.groups(budget)),
                     "folds": config.folds, "max_iter": config.max_iter},
        "baseline": "in_memory",
        "variants": table,
        "extra": {},
        "checks": {"same_accuracies": float(same),
                   "mean_acc": float(np.mean([r.acc_mean for r in results["streamed"].rows]))},
    }  # fmt: skip
    return {
        "case": "probe_stream",
        "title": "Probing a large dataset: in memory vs a group of layers at a time",
        "groups": [group],
        "targets": [],
        "notes": [
            "in_memory = probe_dataset(memory=None): every cell's features built in one read of "
            "every file, then probed. streamed = probe_dataset(memory=1 GiB): every file "
            "verified first (checksums), then per group of layers that fits the budget only "
            "those layers' tensors read from the safetensors files, probed, and let go.",
            "The dataset is generated from one recorded toy sample (see the module docstring); "
            "the probe settings are reduced (2 folds, 20 iterations) in both variants.",
        ],
    }

"""``attnprobe probe`` and ``attnprobe select``: probe a recorded dataset, choose edit layers."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

PROBE_META = "probe_meta.json"


def _size(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        h, _, w = spec.lower().partition("x")
        return int(h), int(w or h)
    except ValueError as err:
        raise ValueError(f"--size {spec!r}: write it HxW, e.g. 8x8, or one number") from err


def _cmd_probe(args: argparse.Namespace) -> int:
    from probe.attention.steps import resolve_steps
    from probe.probing.features import FeatureOptions
    from probe.probing.probes import ProbeConfig, table_path
    from probe.probing.stream import plan_features, probe_dataset
    from probe.recording.dataset import parse_bytes
    from probe.recording.recorder import format_bytes
    from probe.recording.store import AttentionDataset
    from probe.viz.probe_figures import save_probe_figures

    start = time.perf_counter()
    data = AttentionDataset(args.data)
    label = args.label or next(iter(data.meta.get("classes") or data.entries[0]["labels"]))
    options = FeatureOptions(args.heads, _size(args.size), args.self_features)
    n_steps = data.meta.get("num_inference_steps")
    steps = None if args.steps == "all" else resolve_steps(args.steps, n_steps)
    kinds = [k.strip() for k in args.kinds.split(",")] if args.kinds else None
    layers = _layers(data, args.layers)
    select = {"layers": layers, "steps": steps, "kinds": kinds, "options": options}
    control = AttentionDataset(args.control_data) if args.control_data else None
    memory = parse_bytes(args.memory)
    plan = plan_features(data, label, **select)  # type: ignore[arg-type]
    if memory is not None and plan.total > memory:
        print(f"features take {format_bytes(plan.total)} > --memory {args.memory}: "
              "probing a group of layers at a time")  # fmt: skip
    config = ProbeConfig(args.probe, folds=args.folds, seed=args.seed)
    results = probe_dataset(data, label, config, control, memory=memory, jobs=args.jobs, **select)  # type: ignore[arg-type]
    out = Path(args.out or Path(args.data) / "probe")
    csv = results.to_csv(out / "results.csv")
    figures = save_probe_figures(results, out)
    seconds = time.perf_counter() - start
    meta = {
        "data": str(args.data), "control_data": args.control_data, "label": label,
        "model": data.meta.get("model"), "config": asdict(config), "features": asdict(options),
        "samples": len(data), "cells": len(results), "feature_mib": round(plan.total / 2**20, 1),
        "seconds": round(seconds, 1),
    }  # fmt: skip
    (out / PROBE_META).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{len(results)} cells probed on {len(data)} samples ({label}) in {seconds:.1f} s")
    for kind in sorted({r.kind for r in results.rows}):
        best = results.best(kind)
        print(
            f"  best {kind}: layer {best.layer} step {best.step}: acc {best.acc_mean:.2f} "
            f"(shuffled {best.shuffled_acc:.2f}, chance {best.chance:.2f})"
        )
    print(f"results: {csv} (layer table: {table_path(csv).name})")
    print(f"figures: {', '.join(str(p) for p in figures)}")
    return 0


def _layers(data: Any, spec: str) -> list[int] | None:
    if spec == "all":
        return None
    from probe.attention.layers import resolve_layers

    table = data.load(0).layers if len(data) else []
    return resolve_layers(table, spec)


def _cmd_select(args: argparse.Namespace) -> int:
    from probe.attention.layer_files import layers_from_json
    from probe.probing.probes import ProbeResults
    from probe.probing.selection import select_layers

    probe_dir = Path(args.probe)
    csv = probe_dir / "results.csv" if probe_dir.is_dir() else probe_dir
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} does not exist: run `attnprobe probe --data DIR` first")
    results = ProbeResults.from_csv(csv)
    meta_path = csv.parent / PROBE_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if not results.layer_table and meta.get("layers"):  # a folder probed before tables were saved
        results.layer_table = layers_from_json(meta["layers"])
    selection = select_layers(
        results,
        rule=args.rule,
        step_fraction=args.step_fraction,
        threshold=args.threshold,
        within=args.within or None,
        model=str(meta.get("model") or ""),
    )
    selection.evidence["probe"] = str(csv)
    path = selection.save(args.out)
    print(
        f"layers {selection.layers} for the first {selection.step_fraction:g} of steps "
        f"(rule {selection.rule}, {results.label}): {path}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe`` and ``select`` to the ``attnprobe`` command line."""
    p = sub.add_parser("probe", help="train probe classifiers on a recorded dataset")
    p.add_argument("--data", required=True, help="a dataset folder (attnprobe record --template)")
    p.add_argument("--out", help="output folder (default DATA/probe)")
    p.add_argument("--label", help="label to probe (default: the template's first)")
    p.add_argument("--control-data", help="the same set recorded with --random-init")
    p.add_argument(
        "--probe", default="linear", choices=["linear", "linear-full", "mlp"],
        help="linear (default): logistic regression fitted in the span of the training rows; "
        "linear-full: the same fitted in all dimensions (slower); mlp: the authors' MLP",
    )  # fmt: skip
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", default="all", help="layer spec (default all)")
    p.add_argument("--steps", default="all", help="step spec (default all)")
    p.add_argument("--kinds", default=None, help="cross,self (default: what was recorded)")
    p.add_argument("--heads", default="mean", choices=["mean", "all"])
    p.add_argument("--size", help="resize cross maps to HxW (default: native resolution)")
    p.add_argument("--self-features", default="auto", help="auto | svd:K | pool:R | map")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (joblib)")
    p.add_argument(
        "--memory", default="4GiB",
        help="memory the features may take (default 4GiB); a larger dataset is read and probed "
        "a group of layers at a time, with the same results",
    )  # fmt: skip
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("select", help="choose the layers an edit acts on from probe results")
    p.add_argument("--probe", required=True, help="a probe folder (or its results.csv)")
    p.add_argument("--out", required=True, help="the selection .json to write")
    p.add_argument(
        "--rule", default="low-leak", choices=["low-leak", "structure"],
        help="low-leak: the longest run of layers whose self-attention selectivity is at most "
        "--threshold (default); structure: the contiguous range with the most selectivity above it",
    )  # fmt: skip
    p.add_argument(
        "--step-fraction", type=float, default=0.8,
        help="first fraction of steps the edit acts in; scores average these steps (default 0.8)",
    )  # fmt: skip
    p.add_argument("--threshold", type=float, default=0.1, help="selectivity bound (default 0.1)")
    p.add_argument("--within", help="candidate layers, any layer spec (e.g. 'res<max')")
    p.set_defaults(func=_cmd_select)

"""``attnprobe sweep``: edit an editing set with attention replaced in many layer ranges and
score every edit with the toy world's judges (or, with ``--clip``, with CLIP)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from editing.methods.registry import sweep_kinds
from probe.cli.args import add_model_arg, add_shard_arg, default_model, loading_options


def _cmd_sweep(args: argparse.Namespace) -> int:
    from editing.sweep.ranges import select_pairs
    from editing.sweep.run import sweep
    from editing.sweep.table import format_summary, summarise_rows
    from probe.models import load_pipeline
    from probe.prompts.templates import load_edit_pairs
    from probe.recording.store import parse_seeds
    from probe.shards import ShardGroup
    from probe.toy.world.world import lists_name, world_of

    seeds = parse_seeds(args.seeds)
    model = args.model or default_model()
    options = loading_options(args)
    device = options["device"]
    scorer = _scorer(args.clip, args.dino, device)
    pipe = load_pipeline(model, **options)
    lists = lists_name(world_of(pipe))  # a toy trained on world v2 edits v2's colours
    pairs = select_pairs(load_edit_pairs(args.pairs, lists).pairs, args.max_pairs)
    with ShardGroup.launched(args.shard, args.out) as group:
        rows = sweep(
            pipe, pairs, args.ranges, kinds=args.kinds, seeds=seeds,
            step_fractions=args.step_fractions, out=args.out, num_steps=args.num_steps,
            guidance_scale=args.guidance, batch_size=args.batch_size, model_name=model,
            save_images=args.save_images, group=group,
            **({"scorer": scorer} if scorer is not None else {}),
        )  # fmt: skip
    if not group.main:  # shard 0 prints the table of every shard's rows
        return 0
    print(format_summary(summarise_rows(rows)))
    out = Path(args.out)
    print(f"\n{len(rows)} edits: {out}/sweep.csv, summary.json, tradeoff.png, windows.png")
    return 0


def _scorer(clip: str | None, dino: str | None, device: Any) -> Any:
    """CLIP (and DINO) scorer for a real checkpoint, or None for the toy judges."""
    from editing.scoring.clip_scorer import clip_scorer

    return clip_scorer(clip, dino, device)


def _cmd_select_from_sweep(args: argparse.Namespace) -> int:
    import json

    from editing.sweep.leaks import select_from_sweep
    from editing.sweep.run import LAYER_TABLE
    from editing.sweep.table import read_rows
    from probe.attention.layer_files import load_layer_table
    from probe.models import layer_table

    folder = Path(args.sweep)
    csv = folder / "sweep.csv" if folder.is_dir() else folder
    if not csv.is_file():
        raise FileNotFoundError(
            f"{csv} does not exist: run `attnprobe sweep --kinds self --ranges none 0 1 ... 15 "
            f"--step-fractions 1.0 --out {folder}` first"
        )
    settings = csv.parent / "sweep.json"
    model = json.loads(settings.read_text()).get("model") or "" if settings.is_file() else ""
    rows = read_rows(csv)
    table = None
    if (csv.parent / LAYER_TABLE).is_file():  # the table the sweep ran on
        table = load_layer_table(csv.parent / LAYER_TABLE)
    elif model and not any(r["range"] == args.base for r in rows):
        table = layer_table(model)  # a sweep from before tables were saved: the model's config
    selection = select_from_sweep(
        rows, base=args.base, step_fraction=args.step_fraction,
        shift_tolerance=args.shift_tolerance, success_tolerance=args.success_tolerance,
        model=str(model), table=table,
    )  # fmt: skip
    selection.evidence["sweep"] = str(csv)
    path = selection.save(args.out)
    left = selection.evidence["left_out"]
    print(
        f"layers {selection.layers} ({args.base} without the leaking layers {left or 'none'}) "
        f"for the first {selection.step_fraction:g} of steps: {path}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep`` and ``select-from-sweep`` to the ``attnprobe`` command line."""
    q = sub.add_parser(
        "select-from-sweep",
        help="FPE layers from a one-layer sweep: a base range without the layers that leak",
    )
    q.add_argument("--sweep", required=True, help="a sweep folder (or its sweep.csv)")
    q.add_argument("--out", required=True, help="the selection file to write (layers.json)")
    q.add_argument("--base", default="fpe", help="layers to start from: a preset (fpe, paper) "
                   "or any layer spec, e.g. 2-12, of the sweep's model (default fpe)")  # fmt: skip
    q.add_argument("--step-fraction", type=float, default=0.8, help="for the selection (0.8)")
    q.add_argument(
        "--shift-tolerance", type=float, default=0.01,
        help="a layer leaks if its source shift is above the plain target's + this (0.01)",
    )  # fmt: skip
    q.add_argument(
        "--success-tolerance", type=float, default=0.02,
        help="... or if its success is below the plain target's - this (0.02)",
    )  # fmt: skip
    q.set_defaults(func=_cmd_select_from_sweep)
    p = sub.add_parser(
        "sweep", help="edit over layer ranges (self/cross replacement) and score the edits"
    )
    add_model_arg(p, device=True)
    p.add_argument("--pairs", default="colour_edits", help="editing set (default colour_edits)")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument(
        "--ranges", nargs="+", default=["default"],
        help="layer ranges: default | presets | windows | prefixes | suffixes | a preset "
        "(none, fpe, paper, all) | a spec such as 4-14 or 2,5,7 | a selection .json",
    )  # fmt: skip
    p.add_argument(
        "--kinds", nargs="+", default=["self", "cross"], choices=tuple(sweep_kinds()),
        help="which attention to replace: "
        + ", ".join(f"{kind} (method {m})" for kind, m in sweep_kinds().items())
        + " (default self cross; inject is a DiT method: give --step-fractions 1.0, as "
        "Stable Flow injects in every step, and --ranges vital-ablation for its ablation)",
    )  # fmt: skip
    p.add_argument("--seeds", default="0", help="noise seeds, e.g. 0-3 or 0,5 (default 0)")
    p.add_argument(
        "--step-fractions", nargs="+", type=float, default=[0.8],
        help="first fraction(s) of steps to replace in (default 0.8)",
    )  # fmt: skip
    p.add_argument("--max-pairs", type=int, default=None, help="at most N pairs, evenly spread")
    p.add_argument("--num-steps", type=int, default=None, help="default: the model's")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's")
    p.add_argument("--batch-size", type=int, default=9, help="targets edited together")
    p.add_argument("--save-images", action="store_true", help="also save every edit (images/)")
    add_shard_arg(p, "edit every N-th (seed, source) from I into sweep.I-of-N.csv",
                  "shard 0 merges them into sweep.csv when all are done")  # fmt: skip
    p.add_argument(
        "--clip", default=None, metavar="DIR",
        help="score with CLIP from this local folder instead of the toy judges (real "
        "checkpoints): success = the edit is closer to the target prompt than the source's",
    )  # fmt: skip
    p.add_argument(
        "--dino", default=None, metavar="DIR",
        help="with --clip: structure as the DINO self-similarity distance from this folder",
    )  # fmt: skip
    p.set_defaults(func=_cmd_sweep)

"""``attnprobe vital``: bypass every block in turn and measure how much the generation changes."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any


def _default_score(spec: str, perceptual: object | None) -> str:
    """``judges`` on a toy-world model, else ``perceptual`` when the DINOv2 folder loaded, else
    ``pixel`` (a missing folder is reported as missing in vital.json, never scored)."""
    from probe.models.loading import resolve_folder
    from probe.toy.weight_folders import TOY_FOLDERS

    if spec in TOY_FOLDERS:
        return "judges"
    try:
        meta = resolve_folder(spec) / "attnprobe.json"
    except (ValueError, FileNotFoundError, KeyError):
        meta = Path()
    if meta.is_file() and "world" in json.loads(meta.read_text()):
        return "judges"
    return "perceptual" if perceptual else "pixel"


def _rule(args: argparse.Namespace, means: dict[int, float]) -> dict[str, Any]:
    from probe.vital.vitality import vital_layers

    top_k = args.top_k
    threshold = None if top_k is not None else args.threshold
    layers = vital_layers(means, threshold=threshold, top_k=top_k)
    rule = f"top-{top_k}" if top_k is not None else f"vitality > {threshold:g}"
    return {"rule": rule, "threshold": threshold, "top_k": top_k, "layers": layers}


def record_in_model(folder: Path, rule: dict[str, Any], note: str) -> Path:
    """Write ``vital_blocks`` (and ``vital_blocks_note``) into ``folder/attnprobe.json``."""
    path = folder / "attnprobe.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    meta["vital_blocks"] = rule["layers"]
    meta["vital_blocks_note"] = note
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _cmd_vital(args: argparse.Namespace) -> int:
    from probe.cli.args import default_model
    from probe.models import load_pipeline
    from probe.models.loading import resolve_folder
    from probe.recording.store import parse_seeds
    from probe.vital.figure import plot_vitality
    from probe.vital.scores import load_perceptual
    from probe.vital.vitality import measure_vitality

    spec = args.model or default_model()
    perceptual, perceptual_note = load_perceptual(args.perceptual)
    score = args.score or _default_score(spec, perceptual)
    if score == "perceptual" and perceptual is None:
        raise FileNotFoundError(f"--score perceptual: DINOv2 {perceptual_note}")
    pipe = load_pipeline(spec)
    report = measure_vitality(
        pipe, args.prompts, parse_seeds(args.seeds), score=score, perceptual=perceptual,
        batch_size=args.batch_size, num_steps=args.steps, progress=not args.no_progress,
        settings={"model": spec, "perceptual": perceptual_note},
    )  # fmt: skip
    rule = _rule(args, report.means())
    out = Path(args.out or f"runs/vital_{spec.replace('/', '_')}")
    path = report.save(out / "vital.json", rule)
    figure = out / "vital.png"
    plot_vitality(report, rule["layers"], rule["threshold"]).savefig(figure, dpi=120)
    for entry in report.summary()[1:]:
        print(f"  layer {entry['layer']:>3} {entry['name']:<32} "
              f"vitality {entry['vitality']:.3f} ± {entry['vitality_std']:.3f}")  # fmt: skip
    print(f"vital layers ({rule['rule']}, {score}): {rule['layers']}")
    print(f"results: {path}; figure: {figure}")
    if args.record:
        date = datetime.date.today().isoformat()
        note = (
            f"measured {date} by `attnprobe vital --model {spec} --prompts {args.prompts} "
            f"--seeds {args.seeds}` ({score}; rule {rule['rule']}); prompts: "
            f"{'; '.join(report.settings['prompts'])}"
        )
        print(f"recorded in {record_in_model(resolve_folder(spec), rule, note)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``vital`` to the ``attnprobe`` command line."""
    from probe.cli.args import add_model_arg

    p = sub.add_parser(
        "vital", help="bypass each block in turn (Stable Flow's vital layers): vitality per block"
    )
    add_model_arg(p)
    p.add_argument("--prompts", type=int, default=8, help="prompts drawn from the colour "
                   "templates in the model's world (default 8)")  # fmt: skip
    p.add_argument("--seeds", default="1000-1001", help="seeds, e.g. 1000-1001 (default)")
    p.add_argument(
        "--score", choices=["judges", "pixel", "perceptual"],
        help="what a change is measured by (default: judges on a toy, else perceptual with "
        "--perceptual, else pixel)",
    )  # fmt: skip
    p.add_argument("--perceptual", help="a local DINOv2 folder (transformers); never downloaded")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="vital: vitality above this (default 0.1)")  # fmt: skip
    p.add_argument("--top-k", type=int, help="vital: the k most vital layers instead")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    p.add_argument("--out", help="output folder (default runs/vital_MODEL)")
    p.add_argument(
        "--record", action="store_true",
        help="write the vital layers into the model folder's attnprobe.json",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_vital)

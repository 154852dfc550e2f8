"""``attnprobe segment-score``: every kind of heat map scored against the toy world's masks, or
(``--images DIR``) against the masks of a folder of real images."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_segment(args: argparse.Namespace) -> int:
    from probe.cli.args import default_model
    from probe.models import load_pipeline
    from probe.scoring.heatmap_scores import score_heatmaps

    spec = args.model or default_model()
    pipe = load_pipeline(spec)
    if args.images:
        from editing.scoring.real_heatmaps import score_folder

        report = score_folder(pipe, args.images, num_steps=args.steps,
                              progress=not args.no_progress, settings={"model": spec})  # fmt: skip
        for note in report.settings["notes"]:
            print(f"note: {note}")
    else:
        report = score_heatmaps(
            pipe, args.prompts, seed=args.seed, num_steps=args.steps, batch_size=args.batch_size,
            progress=not args.no_progress, settings={"model": spec},
        )  # fmt: skip
    out = Path(args.out or f"runs/segment_{spec.replace('/', '_')}")
    js, md = report.save(out)
    print(report.markdown())
    print(f"results: {js}; table: {md}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``segment-score`` to the ``attnprobe`` command line."""
    from probe.cli.args import add_model_arg

    p = sub.add_parser(
        "segment-score",
        help="score word heat maps (cross-attention per layer and aggregated, concept maps on "
        "a DiT) against the objects' masks of a toy model's generations, or of a folder of "
        "images and masks (--images)",
    )  # fmt: skip
    add_model_arg(p)
    p.add_argument("--images", metavar="DIR", help="score real images instead: DIR holds "
                   "NAME.png, NAME_mask.png (white = object) and prompts.json ({NAME: {prompt, "
                   "word}}); each image is inverted and its maps recorded while it is denoised "
                   "back (docs/segmentation.md)")  # fmt: skip
    p.add_argument("--prompts", type=int, default=16, help="prompts drawn from the colour "
                   "templates of the model's world (default 16)")  # fmt: skip
    p.add_argument("--seed", type=int, default=1000, help="seed of the first prompt (default "
                   "1000; prompt i uses seed + i)")  # fmt: skip
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8, help="images per pipeline call")
    p.add_argument("--out", help="output folder (default runs/segment_MODEL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_segment)

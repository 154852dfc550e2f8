"""``attnprobe edit``: edit a generated or real image with FPE, Prompt-to-Prompt or MasaCtrl."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from probe.cli.args import add_model_arg, default_model


def _cmd_edit(args: argparse.Namespace) -> int:
    from editing.edit import METHODS, edit
    from editing.inversion import ddim_invert
    from probe.models import load_pipeline, resolve_device
    from probe.viz.grid import side_by_side

    if args.method not in METHODS:
        raise ValueError(f"--method {args.method!r}: use one of {', '.join(METHODS)}")
    pipe = load_pipeline(args.model or default_model(), device=resolve_device(args.device))
    inversion = None
    if args.image:
        inversion = ddim_invert(pipe, args.image, num_steps=args.num_steps)
        if args.inversion == "null-text":
            from editing.null_text import null_text_invert

            inversion = null_text_invert(pipe, inversion, args.source, args.guidance)
    result = edit(
        pipe, args.source, args.target, method=args.method, layers=args.layers,
        step_fraction=args.step_fraction, seed=args.seed, num_steps=args.num_steps,
        guidance_scale=args.guidance, inversion=inversion,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.source.save(out / "source.png")
    for k, image in enumerate(result.targets):
        image.save(out / f"target_{k}.png")
    labels = [args.source, *args.target]
    side_by_side([result.source, *result.targets], labels).save(out / "grid.png")
    settings = {**result.settings, "model": args.model or default_model(), "image": args.image}
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(f"edited {len(result.targets)} target(s) with {result.settings['method']}: {out}/")
    names = [f"target_{k}.png" for k in range(len(result.targets))]
    print(f"  source.png, {', '.join(names)}, grid.png, settings.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``edit`` to the ``attnprobe`` command line."""
    p = sub.add_parser("edit", help="edit an image from a source prompt to target prompts")
    add_model_arg(p, device=True)
    p.add_argument("--source", required=True, help="source prompt, e.g. 'a red car'")
    p.add_argument("--target", required=True, action="append", help="target prompt (repeatable)")
    p.add_argument("--method", default="fpe", help="fpe (default) | p2p | masactrl | cross | none")
    p.add_argument(
        "--layers", default=None, help="layer spec or selection .json (default: per method)"
    )
    p.add_argument(
        "--step-fraction", type=float, default=0.8, help="edit the first fraction of steps"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-steps", type=int, default=None, help="default: the model's")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's")
    p.add_argument("--image", default=None, help="a real image to edit (DDIM-inverted first)")
    p.add_argument(
        "--inversion", default="ddim", choices=("ddim", "null-text"),
        help="for --image: DDIM inversion with the source following it (FPE's official path), "
        "or null-text inversion (Prompt-to-Prompt's)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_edit)

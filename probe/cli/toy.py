"""``attnprobe toy``: the toy world's commands: ``render``, ``train`` and ``evaluate``.

``attnprobe toy render --template colour_car --n 16 --seed 0 --out DIR`` draws scenes for the
prompts of a template and writes ``DIR/0000.png ...`` and ``DIR/labels.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any


def _cmd_render(args: argparse.Namespace) -> int:
    from probe.toy.renders import write_renders

    labels = write_renders(args.template, args.n, Path(args.out), args.seed, args.size)
    print(f"wrote {args.n} images to {labels.parent}\nlabels: {labels}")
    return 0


def _add_render(toy_sub: argparse._SubParsersAction) -> None:
    p = toy_sub.add_parser("render", help="draw toy scenes for a template's prompts")
    p.add_argument("--template", required=True, help="template name (e.g. colour_car) or path")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_render)


def _add_train(toy_sub: argparse._SubParsersAction) -> None:
    p = toy_sub.add_parser(
        "train",
        help="train the toy Stable Diffusion from scratch (resumable)",
        description="Train tokenizer, VAE, text encoder and UNet on the toy world. Rerun the "
        "same command after an interruption: every stage resumes from OUT/work. Options left "
        "out take the defaults of probe.toy.train.TrainConfig.",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder (model lands in OUT/model)")
    p.add_argument("--vae-minutes", type=float, help="wall-clock budget of the VAE stage")
    p.add_argument(
        "--unet-minutes", type=float, help="wall-clock budget of the UNet + text encoder stage"
    )
    p.add_argument("--batch", type=int, help="UNet batch size")
    p.add_argument("--pool", type=int, help="scenes in the latent pool")
    p.add_argument("--seed", type=int, help="seed of every stage")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--smoke", action="store_true", help="a few steps of every stage (for CI)")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(toy_sub: argparse._SubParsersAction) -> None:
    e = toy_sub.add_parser(
        "evaluate",
        help="generate every template prompt on held-out seeds and judge the images",
    )
    e.add_argument("--model", default="toy", help="toy (default), or a model folder")
    e.add_argument("--out", required=True, type=Path, help="folder for the table and grid")
    e.add_argument(
        "--templates", default="colour_car,animal_park,colour_animal", help="comma-separated"
    )
    e.add_argument("--seeds", default="1000-1007", help="held-out seeds, e.g. 1000-1007")
    e.add_argument("--guidance", type=float, default=None, help="default: the model's own")
    e.add_argument("--num-steps", type=int, default=None, help="default: the model's own")
    e.set_defaults(func=_cmd_evaluate)


def _cmd_train(args: argparse.Namespace) -> int:
    from probe.toy.train import TrainConfig, train

    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("vae_minutes", "unet_minutes", "batch", "pool", "seed", "threads")
        if getattr(args, name) is not None
    }
    cfg = TrainConfig.smoke(args.out) if args.smoke else TrainConfig(out=args.out)
    if args.smoke:  # a smoke run keeps its own sizes; only the thread count is the user's
        given = {k: v for k, v in given.items() if k == "threads"}
    cfg = dataclasses.replace(cfg, **given)
    folder = train(cfg)
    print(f"model: {folder}  (load it with load_pipeline({str(folder)!r}))")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from probe.models import load_pipeline
    from probe.recording.store import parse_seeds
    from probe.toy.evaluate import evaluate

    pipe = load_pipeline(args.model)
    report = evaluate(
        pipe,
        templates=[t.strip() for t in args.templates.split(",") if t.strip()],
        seeds=parse_seeds(args.seeds),
        out=args.out,
        guidance_scale=args.guidance,
        num_steps=args.num_steps,
    )
    print(report.table())
    names = ", ".join(str(args.out / n) for n in ("evaluation.md", "evaluation.csv", "grid.png"))
    print(f"wrote {names}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``toy`` command group (render, train, evaluate) to the command line."""
    toy = sub.add_parser("toy", help="the toy world: render scenes, train and evaluate the toy")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND")
    toy.set_defaults(func=lambda _args: toy.print_help() or 0)
    _add_render(toy_sub)
    _add_train(toy_sub)
    _add_evaluate(toy_sub)

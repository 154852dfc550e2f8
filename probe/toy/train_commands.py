"""`attnprobe toy train` and `attnprobe toy evaluate`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from probe.steps import parse_int_ranges


def add_train_commands(toy_sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate`` to the ``attnprobe toy`` command group."""
    from probe.toy.train import TrainConfig

    defaults = TrainConfig()
    p = toy_sub.add_parser(
        "train",
        help="train the toy Stable Diffusion from scratch (resumable)",
        description="Train tokenizer, VAE, text encoder and UNet on the toy world. Rerun the "
        "same command after an interruption: every stage resumes from OUT/work.",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder (model lands in OUT/model)")
    p.add_argument(
        "--vae-minutes",
        type=float,
        default=defaults.vae_minutes,
        help="wall-clock budget of the VAE stage (default %(default)s)",
    )
    p.add_argument(
        "--unet-minutes",
        type=float,
        default=defaults.unet_minutes,
        help="wall-clock budget of the UNet + text encoder stage (default %(default)s)",
    )
    p.add_argument(
        "--batch", type=int, default=defaults.batch, help="UNet batch size (default %(default)s)"
    )
    p.add_argument("--pool", type=int, default=defaults.pool, help="scenes in the latent pool")
    p.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of every stage (default %(default)s)"
    )
    p.add_argument(
        "--threads", type=int, default=defaults.threads, help="torch threads (default %(default)s)"
    )
    p.add_argument("--smoke", action="store_true", help="a few steps of every stage (for CI)")
    p.set_defaults(func=_train)

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
    e.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from probe.toy.train import TrainConfig, train

    if args.smoke:
        cfg = TrainConfig.smoke(args.out)
    else:
        cfg = TrainConfig(
            out=args.out,
            vae_minutes=args.vae_minutes,
            unet_minutes=args.unet_minutes,
            batch=args.batch,
            pool=args.pool,
            seed=args.seed,
        )
    cfg = dataclasses.replace(cfg, threads=args.threads)
    folder = train(cfg)
    print(f"model: {folder}  (load it with load_pipeline({str(folder)!r}))")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from probe.models import load_pipeline
    from probe.toy.evaluate import evaluate

    pipe = load_pipeline(args.model)
    report = evaluate(
        pipe,
        templates=[t.strip() for t in args.templates.split(",") if t.strip()],
        seeds=parse_int_ranges(args.seeds),
        out=args.out,
        guidance_scale=args.guidance,
        num_steps=args.num_steps,
    )
    print(report.table())
    names = ", ".join(str(args.out / n) for n in ("evaluation.md", "evaluation.csv", "grid.png"))
    print(f"wrote {names}")
    return 0

"""``attnprobe toy``: the toy world's commands: ``render``, ``train``, ``evaluate``, ``sizes``.

``attnprobe toy render --template colour_car --n 16 --seed 0 --out DIR`` draws scenes for the
prompts of a template and writes ``DIR/0000.png ...`` and ``DIR/labels.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any


def _cmd_render(args: argparse.Namespace) -> int:
    from probe.toy.world.renders import write_renders

    labels = write_renders(args.template, args.n, Path(args.out), args.seed, args.size, args.world)
    print(f"wrote {args.n} images to {labels.parent}\nlabels: {labels}")
    return 0


def _add_render(toy_sub: argparse._SubParsersAction) -> None:
    p = toy_sub.add_parser("render", help="draw toy scenes for a template's prompts")
    p.add_argument("--template", required=True, help="template name (e.g. colour_car) or path")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--world", default=None, help="toy world: v1, v2 (default: the shipped toy's)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_render)


def _add_train(toy_sub: argparse._SubParsersAction) -> None:
    p = toy_sub.add_parser(
        "train",
        help="train the toy Stable Diffusion from scratch (resumable)",
        description="Train the toy as Stable Diffusion was built: tokenizer, the world's "
        "category judge, a contrastive image-text model whose text encoder is then frozen, the "
        "VAE, and the UNet on the frozen text encoder. Rerun the same command after an "
        "interruption: every stage resumes from OUT/work. Options left out take the defaults "
        "of probe.toy.training.train_config.TrainConfig (world v2, about 2.5 hours on 2 cores).",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder (model lands in OUT/model)")
    p.add_argument(
        "--arch",
        choices=["sd", "flux"],
        default="sd",
        help="sd (default): the UNet toy; flux: toy-flux, a FluxTransformer2DModel trained by "
        "rectified flow on toy-v2's frozen CLIP and VAE and a contrastive T5 "
        "(probe.toy.training.flux_train, about 2 h 50 min on 2 cores)",
    )
    p.add_argument("--world", choices=["v1", "v2"], help="toy world (default v2: 16 colours)")
    p.add_argument("--text-minutes", type=float, help="wall-clock budget of the contrastive stage")
    p.add_argument("--vae-minutes", type=float, help="wall-clock budget of the VAE stage")
    p.add_argument("--unet-minutes", type=float, help="wall-clock budget of the UNet stage")
    p.add_argument(
        "--transformer-minutes", type=float, help="--arch flux: budget of the transformer stage"
    )
    p.add_argument("--image-size", type=int, help="pixels per side (default 64; 128: 32² latents)")
    p.add_argument("--vae-factor", type=int, choices=[4, 8], help="VAE downsampling (default 4)")
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
    e.add_argument(
        "--model", default="toy", help="toy (default), toy-v2, toy-flux, or a model folder"
    )
    e.add_argument("--out", required=True, type=Path, help="folder for the table and grid")
    e.add_argument(
        "--templates", default="colour_car,animal_park,colour_animal", help="comma-separated"
    )
    e.add_argument("--seeds", default="1000-1007", help="held-out seeds, e.g. 1000-1007")
    e.add_argument("--guidance", type=float, default=None, help="default: the model's own")
    e.add_argument("--num-steps", type=int, default=None, help="default: the model's own")
    e.set_defaults(func=_cmd_evaluate)


def _add_sizes(toy_sub: argparse._SubParsersAction) -> None:
    p = toy_sub.add_parser(
        "sizes",
        help="measure a training step of the toy at 16×16 and 32×32 latents",
        description="Time UNet and VAE training steps of the toy built at 64 px (16×16 "
        "latents), 128 px with the factor-4 VAE and 256 px with a factor-8 VAE (both 32×32), "
        "and print the query positions of every attention layer (probe.toy.training.sizes).",
    )
    p.add_argument("--steps", type=int, default=20, help="UNet steps timed per latent size")
    p.add_argument("--vae-steps", type=int, default=5, help="VAE steps timed per build")
    p.add_argument("--batch", type=int, default=48, help="UNet batch (default 48, the toy's)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--json", type=Path, help="also write the numbers to this file")
    p.set_defaults(func=_cmd_sizes)


def _cmd_sizes(args: argparse.Namespace) -> int:
    from probe.toy.training.sizes import main

    argv = ["--steps", str(args.steps), "--vae-steps", str(args.vae_steps)]
    argv += ["--batch", str(args.batch), "--threads", str(args.threads)]
    return main(argv + (["--json", str(args.json)] if args.json else []))


FLUX_REFUSES = {"vae_minutes": "--vae-minutes", "unet_minutes": "--unet-minutes",
                "vae_factor": "--vae-factor"}  # fmt: skip
"""Options of the UNet toy that ``--arch flux`` has no stage for (it reuses toy-v2's VAE)."""


def _train_config(args: argparse.Namespace) -> Any:
    """The run's settings: the smoke or full defaults of ``--arch``, with the options given."""
    names = ["text_minutes", "vae_minutes", "unet_minutes", "batch", "pool", "seed", "threads"]
    names += ["world", "image_size", "vae_factor", "transformer_minutes"]
    given: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    config_class: Any
    if args.arch == "flux":
        from probe.toy.training.flux_train import FluxTrainConfig

        config_class = FluxTrainConfig
        bad = [flag for name, flag in FLUX_REFUSES.items() if name in given]
        if bad:
            raise SystemExit(
                f"{', '.join(bad)}: --arch flux has no such stage (it reuses toy-v2's VAE; "
                "its denoiser's budget is --transformer-minutes)"
            )
    else:
        from probe.toy.training.train import TrainConfig

        config_class = TrainConfig
        if "transformer_minutes" in given:
            raise SystemExit("--transformer-minutes: only with --arch flux (sd: --unet-minutes)")
    cfg = config_class.smoke(args.out) if args.smoke else config_class(out=args.out)
    if args.smoke:  # a smoke run keeps its own step counts and batch sizes
        given = {k: v for k, v in given.items() if k in ("threads", "world", "image_size")}
    return dataclasses.replace(cfg, **given)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _train_config(args)
    if args.arch == "flux":
        from probe.toy.training.flux_train import train_flux

        folder = train_flux(cfg)
    else:
        from probe.toy.training.train import train

        folder = train(cfg)
    print(f"model: {folder}  (load it with load_pipeline({str(folder)!r}))")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from probe.models import load_pipeline
    from probe.recording.store import parse_seeds
    from probe.toy.evaluation.evaluate import evaluate

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
    """Add the ``toy`` command group (render, train, evaluate, sizes) to the command line."""
    toy = sub.add_parser("toy", help="the toy world: render scenes, train and evaluate the toy")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND")
    toy.set_defaults(func=lambda _args: toy.print_help() or 0)
    _add_render(toy_sub)
    _add_train(toy_sub)
    _add_evaluate(toy_sub)
    _add_sizes(toy_sub)

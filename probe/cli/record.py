"""``attnprobe record``: generate and record attention maps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from probe.cli.args import add_model_arg, add_shard_arg, default_model, loading_options


def _cmd_record(args: argparse.Namespace) -> int:
    if args.template is not None:
        return _cmd_record_dataset(args)
    if args.prompt is None:
        raise ValueError("record needs --prompt TEXT (one image) or --template NAME (a dataset)")
    import torch

    from probe.models import defaults_origin, generation_defaults, load_pipeline
    from probe.models.schedulers import scheduler_settings
    from probe.models.vocabulary import check_known_words
    from probe.recording.dataset import parse_bytes
    from probe.recording.recorder import DEFAULT_BUDGET, record_attention

    budget = parse_bytes(args.budget) or DEFAULT_BUDGET
    pipe = load_pipeline(args.model or default_model(), **loading_options(args))
    check_known_words(pipe, [args.prompt])  # the toy refuses a word it never learned
    gen = generation_defaults(pipe)
    if args.num_steps:
        gen["num_inference_steps"] = args.num_steps
    if args.guidance is not None:
        gen["guidance_scale"] = args.guidance
    gen |= {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    out = Path(args.out)
    kinds = tuple(k.strip() for k in args.kinds.split(","))
    with record_attention(
        pipe, layers=args.layers, kinds=kinds, steps=args.steps, heads=args.heads,  # type: ignore[arg-type]
        self_reduce=args.self_reduce, budget_bytes=budget,
    ) as maps:  # fmt: skip
        result = pipe(args.prompt, **gen, generator=torch.Generator().manual_seed(args.seed))
    out.mkdir(parents=True, exist_ok=True)
    result.images[0].save(out / "image.png")
    maps.save(out / "maps.safetensors")
    settings = vars(args) | {"func": None, "budget_bytes": budget, **gen}
    settings |= {"defaults": defaults_origin(pipe), "steps_recorded": len(maps.timesteps)}
    settings["scheduler"] = scheduler_settings(pipe.scheduler)  # the folder's own, as shipped
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    print(f"recorded {maps}")
    print(f"image: {out / 'image.png'}\nmaps:  {out / 'maps.safetensors'}")
    return 0


def _cmd_record_dataset(args: argparse.Namespace) -> int:
    from probe.models import load_pipeline
    from probe.prompts.templates import load_template
    from probe.recording.dataset import parse_bytes, record_dataset
    from probe.recording.store import parse_seeds, parse_shard
    from probe.toy.world.world import lists_name, world_of

    seeds = parse_seeds(args.seeds)
    shard = parse_shard(args.shard)
    model = args.model or default_model()
    pipe = load_pipeline(model, **loading_options(args))
    prompts = load_template(args.template, lists_name(world_of(pipe)))  # a v2 toy: v2's lists
    if args.random_init is not None:
        from probe.recording.random_control import random_init_like

        pipe = random_init_like(pipe, seed=args.random_init)
    report = record_dataset(
        pipe,
        prompts,
        seeds,
        args.out,
        model=str(model),
        layers=args.layers,
        steps=args.steps,
        kinds=[k.strip() for k in args.kinds.split(",")],
        heads=args.heads,
        self_reduce=args.self_reduce,
        num_steps=args.num_steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        shard=shard,
        budget_bytes=parse_bytes(args.budget) or 0,
        max_disk=parse_bytes(args.max_disk),
        images=args.images,
        random_init=args.random_init,
    )
    part = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(
        f"{report.recorded} samples recorded, {report.skipped} already there, "
        f"{report.total} in this run{part}, {report.seconds:.1f} s, "
        f"~{report.bytes_per_sample / 2**20:.2f} MiB per sample"
    )
    print(f"dataset: {report.out}  (index: {report.out / 'index.jsonl'})")
    return 0


def _pixels(text: str) -> int:
    """A positive multiple of 16 pixels (every family's latent and patch size divides it)."""
    value = int(text)
    if value <= 0 or value % 16:
        raise argparse.ArgumentTypeError(
            f"{text} pixels: give a positive multiple of 16, e.g. {max(16, value // 16 * 16)}"
        )
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``record`` to the ``attnprobe`` command line."""
    p = sub.add_parser(
        "record",
        help="record attention maps: one prompt (--prompt) or a dataset (--template, --seeds)",
    )
    add_model_arg(p, device=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one prompt: writes image.png and maps.safetensors")
    what.add_argument("--template", help="a prompt template (e.g. colour_car): records a dataset")
    p.add_argument("--out", required=True, help="output folder (a dataset folder resumes)")
    p.add_argument("--layers", default="all", help="layer spec (default all)")
    p.add_argument("--steps", default="all", help="step spec (default all)")
    p.add_argument("--kinds", default="cross,self")
    for side in ("height", "width"):
        p.add_argument(
            f"--{side}", type=_pixels, default=None, metavar="PX",
            help=f"image {side} in pixels (default: the model's, e.g. 1024 for SDXL, SD3, Flux)",
        )  # fmt: skip
    p.add_argument("--heads", default="mean", help="'mean' or 'all'")
    p.add_argument("--self-reduce", default="auto", help="auto | full | svd:K | pool:R")
    p.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="denoising steps (default: the model's; 50 for an SD folder)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale (default: the model's own)",
    )
    p.add_argument("--seed", type=int, default=0, help="--prompt: the noise seed")
    p.add_argument("--seeds", default="0-31", help="--template: seeds, e.g. '0-31' or '0,4,9'")
    add_shard_arg(p, "record every N-th sample from I")
    p.add_argument("--batch-size", type=int, default=8, help="samples per pipeline call")
    p.add_argument(
        "--budget", default="4GiB", help="memory the maps (of one batch, for --template) may take"
    )
    p.add_argument("--max-disk", default=None, help="disk the dataset may take (default: free)")
    p.add_argument("--images", action="store_true", help="--template: also save the images")
    p.add_argument(
        "--random-init",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="SEED",
        help="record a randomly re-initialised copy of the model (the control)",
    )
    p.set_defaults(func=_cmd_record)

"""``attnprobe reproduce``: record → probe → select → sweep → ``report.html``, in one folder."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from probe.cli.args import add_model_arg, add_shard_arg, default_model


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from editing.experiment.reproduction import ReproduceConfig, reproduce
    from probe.models import resolve_device
    from probe.shards import ShardGroup

    model = args.model or default_model()
    config = ReproduceConfig.preset(model, quick=args.quick)
    if args.clip is not None or args.dino is not None:
        config = replace(config, clip=args.clip, dino=args.dino)
    if args.dtype != "float32":
        config = replace(config, dtype=args.dtype)
    device = resolve_device(args.device)
    with ShardGroup.launched(args.shard, args.out) as group:
        say = print if group.main else _quiet
        report = reproduce(Path(args.out), config, progress=not args.no_progress,
                           workers=args.workers, group=group, say=say, device=device,
                           offload=args.offload)  # fmt: skip
    if not group.main:
        return 0
    print(f"report: {report}")
    folders = "data/ probe/ selection.json sweep/ sweep_animal/ figures/"
    print(f"  {folders} in {args.out}/ (a rerun resumes)")
    return 0


def _quiet(line: str) -> None:
    """A shard other than 0 says nothing per stage (shard 0 speaks for the run)."""


def _cmd_compare(args: argparse.Namespace) -> int:
    from editing.experiment.compare import compare_claims

    names = args.name or [Path(r).name for r in args.runs]
    if len(names) != len(args.runs) or len(set(names)) != len(names):
        raise SystemExit(
            f"--name given {len(names)} time(s) for {len(args.runs)} run(s), or twice the same "
            f"name ({names}): give one distinct --name per run, in order, or none"
        )
    text = compare_claims(dict(zip(names, map(Path, args.runs), strict=True)))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"claims of {len(names)} runs: {args.out}")
    else:
        print(text, end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` and ``compare`` to the ``attnprobe`` command line."""
    p = sub.add_parser(
        "reproduce",
        help="the paper's experiment end to end: record, probe, select, sweep, report.html",
    )
    add_model_arg(p, device=True)
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument(
        "--quick", action="store_true",
        help="a 1-2 minute version: fewer seeds, steps, pairs and ranges",
    )  # fmt: skip
    p.add_argument(
        "--clip", default=None, metavar="DIR",
        help="score the sweep's edits with CLIP from this local folder instead of the toy "
        "judges (real checkpoints, e.g. SDXL; as `attnprobe sweep --clip`)",
    )  # fmt: skip
    p.add_argument(
        "--dino", default=None, metavar="DIR",
        help="with --clip: structure as the DINO self-similarity distance from this folder",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=None,
        help="processes that record, probe, edit and draw side by side, one torch thread "
        "each (default: one per CPU core; 1: everything in this process)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_shard_arg(p, "run as shard I of N: every shard records and edits its part",
                  "shard 0 probes, draws and reports")  # fmt: skip
    p.set_defaults(func=_cmd_reproduce)

    c = sub.add_parser(
        "compare", help="the paper's claims of several reproduce runs side by side (Markdown)"
    )
    c.add_argument("runs", nargs="+", help="reproduce folders (each with its claims.json)")
    c.add_argument(
        "--name", action="append",
        help="a column heading per run, in order (default: the folders' names)",
    )  # fmt: skip
    c.add_argument("--out", default=None, help="write the Markdown here (default: print it)")
    c.set_defaults(func=_cmd_compare)

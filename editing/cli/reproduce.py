"""``attnprobe reproduce``: record → probe → select → sweep → ``report.html``, in one folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli.args import add_model_arg, default_model


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from editing.experiment.reproduce import ReproduceConfig, reproduce

    model = args.model or default_model()
    config = ReproduceConfig.preset(model, quick=args.quick)
    report = reproduce(Path(args.out), config, progress=not args.no_progress)
    print(f"report: {report}")
    folders = "data/ probe/ selection.json sweep/ sweep_animal/ figures/"
    print(f"  {folders} in {args.out}/ (a rerun resumes)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``reproduce`` to the ``attnprobe`` command line."""
    p = sub.add_parser(
        "reproduce",
        help="the paper's experiment end to end: record, probe, select, sweep, report.html",
    )
    add_model_arg(p)
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument(
        "--quick", action="store_true",
        help="a 1-2 minute version: fewer seeds, steps, pairs and ranges",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_cmd_reproduce)

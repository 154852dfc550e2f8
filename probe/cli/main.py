"""``attnprobe``: one command line for recording, probing, editing and the toy world.

The CLI only parses, calls the library and prints where results went.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from probe.cli.args import add_model_arg, default_model

# transformers warns at import that torchvision is missing; it is not needed (and installing it
# next to the pinned CPU torch breaks torch), so keep that warning out of every command's output
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _cmd_layers(args: argparse.Namespace) -> int:
    from probe.attention.layer_info import format_layer_table
    from probe.attention.layers import resolve_layers
    from probe.models import layer_table

    # no run here: the table from the model's config, at the image size asked for (pixels)
    layers = layer_table(args.model or default_model(), args.height, args.width or args.height)
    if args.spec is not None:
        chosen = set(resolve_layers(layers, args.spec))
        layers = [layer for layer in layers if layer.index in chosen]
    print(format_layer_table(layers))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Record every layer at every step for one prompt and draw the word heat maps."""
    from probe.viz.one_prompt import run_demo

    run_demo(args.model or default_model(), Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnprobe",
        description="Record, probe, visualise and edit the attention layers of Stable Diffusion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "layers", help="print the attention layers of a model (index, block, resolution)"
    )
    add_model_arg(p)
    p.add_argument("--spec", help="show only these layers (e.g. 'fpe', '4-14', 'res<=16', 'up')")
    p.add_argument(
        "--height", type=int,
        help="image height in pixels (default: the model's); resolutions and rules such as "
        "res<=16 are for this size",
    )  # fmt: skip
    p.add_argument("--width", type=int, help="image width in pixels (default: --height)")
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser("demo", help="one prompt: record every layer and step, draw word heat maps")
    add_model_arg(p)
    p.add_argument("--out", default="runs/one_prompt")
    p.set_defaults(func=_cmd_demo)

    for register in _command_groups():
        register(sub)
    return parser


def _command_groups() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Sub-command groups registered by the packages that drive them.

    Each is an entry point of group ``attnprobe.commands`` (see pyproject.toml), so ``probe``
    never imports ``editing`` and a plugin package can add commands of its own.
    """
    found = entry_points(group="attnprobe.commands")
    return [ep.load() for ep in sorted(found, key=lambda ep: ep.name)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"attnprobe {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

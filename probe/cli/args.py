"""Arguments shared by several ``attnprobe`` commands: the model and the device."""

from __future__ import annotations

import argparse

DEFAULT_MODEL = "toy"


def default_model() -> str:
    """``toy``, the shipped model; ``tiny`` only in a checkout whose toy weights were removed."""
    from probe.models import TOY_DIR

    return DEFAULT_MODEL if (TOY_DIR / "model_index.json").is_file() else "tiny"


def add_model_arg(parser: argparse.ArgumentParser, device: bool = False) -> None:
    """``--model`` (and, with ``device``, ``--device``) on a subcommand."""
    parser.add_argument(
        "--model",
        default=None,
        help="'toy' (default; the embedded model), 'toy-v2' (the toy of world v2), 'toy-flux' "
        "(world v2 on Flux's topology), 'tiny' / "
        "'tiny-xl' / 'tiny-sd3' / 'tiny-flux' / 'tiny-pixart' (random weights, SD / SDXL / SD3 "
        "/ Flux / PixArt-Σ topology) or a diffusers SD 1.x/2.x, SDXL, SD3, Flux or PixArt-Σ "
        "folder",
    )
    if device:
        parser.add_argument(
            "--device",
            default="auto",
            help="auto (default: cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, "
            "cuda, cuda:N or mps",
        )

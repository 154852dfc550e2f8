"""Arguments shared by several ``attnprobe`` commands: the model, its device, dtype and offload."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_MODEL = "toy"


def default_model() -> str:
    """``toy``, the shipped model; ``tiny`` only in a checkout whose toy weights were removed."""
    from probe.models import TOY_DIR

    return DEFAULT_MODEL if (TOY_DIR / "model_index.json").is_file() else "tiny"


def add_model_arg(parser: argparse.ArgumentParser, device: bool = False) -> None:
    """``--model`` (and, with ``device``, ``--device``, ``--dtype`` and ``--offload``) on a
    subcommand; :func:`loading_options` turns them into ``load_pipeline``'s keywords."""
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
        parser.add_argument(
            "--dtype",
            default="float32",
            choices=("float32", "float16", "bfloat16"),
            help="weights' dtype (default float32); a folder loads in it directly, from its fp16 "
            "variant files where it has them; attention probabilities are computed in float32",
        )
        parser.add_argument(
            "--offload",
            default="none",
            choices=("none", "model", "sequential"),
            help="diffusers' CPU offload onto --device: 'model' (one model on the GPU at a "
            "time), 'sequential' (one layer's weights at a time; slowest, least memory)",
        )


def loading_options(args: argparse.Namespace) -> dict[str, Any]:
    """``load_pipeline``'s ``device``, ``dtype`` and ``offload`` from the parsed arguments."""
    from probe.models import resolve_device

    return {
        "device": resolve_device(args.device),
        "dtype": args.dtype,
        "offload": args.offload,
    }


def add_shard_arg(parser: argparse.ArgumentParser, takes: str, then: str = "") -> None:
    """``--shard I/N`` (:mod:`probe.shards`): what shard I takes, and what happens once every
    shard is done (none: the shards never meet)."""
    meet = f"; {then} (shards started by hand meet through files in --out)" if then else ""
    parser.add_argument(
        "--shard", default=None, metavar="I/N",
        help=f"{takes}{meet}; default: RANK/WORLD_SIZE under torchrun or accelerate launch",
    )  # fmt: skip

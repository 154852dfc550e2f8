"""Where the toy's shipped weights live: the trained pipelines and the worlds' category judges.

    from probe.toy.weight_folders import TOY_FOLDERS, JUDGE_FOLDERS
    TOY_FOLDERS["toy-v2"]          # .../probe/toy/models/toy_v2 (a diffusers folder)
    JUDGE_FOLDERS["v1"]            # .../probe/toy/judges/weights_v1 (category.safetensors, .json)

A leaf: it imports nothing from ``probe``, so the model loader (:mod:`probe.models.loading`)
and the toy world (:mod:`probe.toy.world.world`) both read the folders from here.
"""

from __future__ import annotations

from pathlib import Path

TOY_ROOT = Path(__file__).resolve().parent
"""The ``probe/toy`` package folder."""

TOY_DIR = TOY_ROOT / "models" / "toy_v1"
"""The trained toy of world v1 (ten colours), the default model ``toy``."""
TOY_V2_DIR = TOY_ROOT / "models" / "toy_v2"
"""The trained toy of world v2 (sixteen colours, a frozen contrastive text encoder)."""
TOY_FLUX_DIR = TOY_ROOT / "models" / "toy_flux"
"""The trained toy Flux of world v2 (a ``FluxPipeline`` folder: double- and single-stream
blocks, true classifier-free guidance; docs/toy_flux)."""
TOY_FOLDERS: dict[str, Path] = {"toy": TOY_DIR, "toy-v2": TOY_V2_DIR, "toy-flux": TOY_FLUX_DIR}
"""The embedded trained toys by name: ``toy`` (world v1, ten colours, the default), ``toy-v2``
(world v2, sixteen colours, a frozen contrastive text encoder; docs/toy_v2) and ``toy-flux``
(world v2 on Flux's topology; docs/toy_flux)."""
TOY_TRAIN_COMMANDS: dict[str, str] = {
    "toy": "attnprobe toy train --world v1 --out <dir>",
    "toy-v2": "attnprobe toy train --out <dir>",
    "toy-flux": "attnprobe toy train --arch flux --out <dir>",
}
"""The command that trains each embedded toy (its folder is then ``<dir>/model``)."""

JUDGE_V1_DIR = TOY_ROOT / "judges" / "weights_v1"
"""The category judge of world v1 (``category.safetensors``, ``category.json``)."""
JUDGE_V2_DIR = TOY_ROOT / "judges" / "weights_v2"
"""The category judge of world v2."""
JUDGE_FOLDERS: dict[str, Path] = {"v1": JUDGE_V1_DIR, "v2": JUDGE_V2_DIR}
"""The shipped category judges by world name."""

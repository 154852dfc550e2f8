"""The category judge: a small CNN over the object's silhouette.

The silhouette (the mask cropped to its bounding box, padded square, 32×32) is classified by
:class:`CategoryNet`, trained by ``python -m probe.toy.training.train_judge`` on degraded
renders of one toy world; each world has its weights (``World.judge_dir``: the shipped
``probe/toy/judges/weights_v1/`` for v1, ``weights_v2/`` for v2, or a model folder's own
``judge/``; :mod:`probe.toy.weight_folders`).

    judge_category(image)                  # 'giraffe'
    judge_category(image, world="v2")      # with v2's backgrounds and v2's judge
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from probe.toy.judges.masks import WorldLike, as_array, checked_mask, silhouette_crop
from probe.toy.weight_folders import JUDGE_FOLDERS
from probe.toy.world.world import CATEGORIES, get_world

WEIGHTS_DIR = JUDGE_FOLDERS["v1"]
"""The shipped category judge of world v1 (the default folder of :func:`load_category_net`)."""


class CategoryNet(nn.Module):
    """A small CNN: silhouette ``[batch, 1, 32, 32]`` -> category logits ``[batch, classes]``."""

    def __init__(self, n_classes: int = len(CATEGORIES), width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w * 16, 64), nn.ReLU(),
            nn.Linear(64, n_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def judge_world(folder: Path) -> str:
    """The world a judge folder was trained on (``category.json``'s ``world``; absent: v1)."""
    config_file = folder / "category.json"
    return (
        str(json.loads(config_file.read_text()).get("world", "v1")) if config_file.is_file() else ""
    )


@cache
def load_category_net(folder: Path = WEIGHTS_DIR) -> tuple[CategoryNet, list[str]]:
    """The shipped category classifier (loaded once) and its class names.

    Raises:
        FileNotFoundError: no weights in ``folder``; train them with
            ``python -m probe.toy.training.train_judge --out probe/toy/judges/weights_v1``
            (world v1; add ``--world v2 --out probe/toy/judges/weights_v2`` for v2).
    """
    from safetensors.torch import load_file

    weights, config_file = folder / "category.safetensors", folder / "category.json"
    if not weights.is_file() or not config_file.is_file():
        raise FileNotFoundError(
            f"no category judge weights in {folder}; train them with "
            f"`python -m probe.toy.training.train_judge --out {folder}` "
            "(add --world v2 for world v2)"
        )
    config: dict[str, Any] = json.loads(config_file.read_text())
    net = CategoryNet(len(config["classes"]), config["width"])
    net.load_state_dict(load_file(str(weights)))
    return net.eval(), list(config["classes"])


def judge_category_probs(
    image: np.ndarray | Image.Image, mask: np.ndarray | None = None, world: WorldLike = None
) -> dict[str, float]:
    """The classifier's probability for each category, from the object's silhouette.

    Args:
        image: RGB image (see :func:`probe.toy.judges.masks.find_object`).
        mask: the object's pixels; found in ``world`` if None.
        world: the toy world (default: the shipped toy's); its judge's weights are used.

    Raises:
        NoObjectError: no object (empty mask).
    """
    mask = checked_mask(as_array(image), mask, world)
    w = get_world(world)
    trained_on = judge_world(Path(w.judge_dir))
    if trained_on and trained_on != w.name:
        raise ValueError(
            f"the category judge in {w.judge_dir} was trained on world {trained_on}, not "
            f"{w.name}: retrain it with `python -m probe.toy.training.train_judge --world {w.name}`"
        )
    net, classes = load_category_net(Path(w.judge_dir))
    x = torch.from_numpy(silhouette_crop(mask))[None, None]
    with torch.no_grad():
        probs = net(x).softmax(-1)[0].tolist()
    return dict(zip(classes, probs, strict=True))


def judge_category(
    image: np.ndarray | Image.Image, mask: np.ndarray | None = None, world: WorldLike = None
) -> str:
    """The object's category by the world's classifier (arguments as
    :func:`judge_category_probs`).

    Raises:
        NoObjectError: no object (empty mask).

    Example:
        >>> judge_category(render_scene(Scene("giraffe", "red")).image)
        'giraffe'
    """
    probs = judge_category_probs(image, mask, world)
    return max(probs, key=probs.__getitem__)

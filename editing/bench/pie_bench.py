"""Reading a PIE-Bench folder as distributed (PnP-Inversion's ``data/``).

    items = read_pie_bench("PIE-Bench_v1")                # every item, in the file's order
    items = read_pie_bench("PIE-Bench_v1", types=["6"])   # colour changes only
    image, mask = items[0].load("PIE-Bench_v1")           # PIL RGB, float [H, W] (1 = edit)

The folder holds ``mapping_file.json`` (id → ``image_path`` under ``annotation_images/``,
``original_prompt``, ``editing_prompt`` with ``[brackets]`` around the changed words,
``editing_instruction``, ``editing_type_id``, ``blended_word`` ("source_word target_word" or
""), ``mask``: run-length over the 512 × 512 image) and ``annotation_images/``. Keys beyond
these (the toy PIE-Bench's ``toy``) are kept in :attr:`PieItem.extra`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from editing.bench.pie_metrics import decode_mask, strip_brackets

EDIT_TYPES = {
    "0": "random",
    "1": "change object",
    "2": "add object",
    "3": "delete object",
    "4": "change content",
    "5": "change pose",
    "6": "change color",
    "7": "change material",
    "8": "change background",
    "9": "change style",
}
"""PIE-Bench's ``editing_type_id`` → its name (the folders ``0_random_140`` …)."""

_FIELDS = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


@dataclass(frozen=True)
class PieItem:
    """One PIE-Bench item (prompts as stored, with brackets; :attr:`source_prompt` and
    :attr:`target_prompt` without)."""

    id: str
    image_path: str
    original_prompt: str
    editing_prompt: str
    editing_type_id: str
    mask: list[int] = field(repr=False)
    editing_instruction: str = ""
    blended_word: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def source_prompt(self) -> str:
        return strip_brackets(self.original_prompt)

    @property
    def target_prompt(self) -> str:
        return strip_brackets(self.editing_prompt)

    @property
    def blended_words(self) -> list[str]:
        """``blended_word`` split: ``[source_word, target_word]`` or ``[]``."""
        return self.blended_word.split()

    def load(self, folder: str | Path) -> tuple[Image.Image, np.ndarray]:
        """The source image (RGB) and its mask decoded at the image's size, border rule applied.

        Raises:
            FileNotFoundError: the image is not under ``folder/annotation_images``.
        """
        path = Path(folder) / "annotation_images" / self.image_path
        if not path.is_file():
            raise FileNotFoundError(f"item {self.id}: no image {path}")
        image = Image.open(path).convert("RGB")
        return image, decode_mask(self.mask, (image.height, image.width))


def read_pie_bench(folder: str | Path, types: list[str] | None = None) -> list[PieItem]:
    """The items of a PIE-Bench folder, optionally of some edit types only.

    Args:
        folder: holds ``mapping_file.json`` and ``annotation_images/``.
        types: ``editing_type_id`` values to keep (``["0", "6"]``); ``None``: all.

    Raises:
        FileNotFoundError: no ``mapping_file.json``.
        ValueError: an item lacks a field; the message names the item and the field.

    Example:
        >>> [i.id for i in read_pie_bench("PIE-Bench_v1", types=["9"])][:2]
        ['900000000000', '900000000001']
    """
    path = Path(folder) / "mapping_file.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the PIE-Bench folder (data/ as shipped)")
    items = []
    for key, entry in json.loads(path.read_text()).items():
        lacking = [f for f in _FIELDS if f not in entry]
        if lacking:
            raise ValueError(f"{path}: item {key} lacks {', '.join(lacking)}")
        if types is not None and str(entry["editing_type_id"]) not in types:
            continue
        known = {f: entry[f] for f in _FIELDS}
        items.append(PieItem(
            id=str(key), **{**known, "editing_type_id": str(entry["editing_type_id"])},
            editing_instruction=entry.get("editing_instruction", ""),
            blended_word=entry.get("blended_word", ""),
            extra={k: v for k, v in entry.items() if k not in (*_FIELDS, "editing_instruction",
                                                               "blended_word")},
        ))  # fmt: skip
    return items

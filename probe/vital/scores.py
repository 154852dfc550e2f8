"""How much a bypassed generation differs from the full one: judges, pixels, a perceptual model.

    judged = judge_change(full, bypassed, "a red car on the street", world="v2")
    judged.similarity, judged.colour_ok, judged.iou
    pixel_rmse(full, bypassed)                        # 0 for the same image
    PerceptualModel("~/weights/dinov2-small").similarity(full, bypassed)

Three scores, one per kind of model:

- **judges** (the toy worlds, whose judges are exact): the judged colour and category of the
  bypassed image against the full image's (*kept*) and against the prompt (*correct*), and the
  IoU of the two objects' masks. The similarity is the mean of colour kept, category kept and
  mask IoU (1 for an unchanged image; when neither image shows an object the masks are both
  empty and count as the same, IoU 1).
- **pixel**: root-mean-square difference of the two images in [0, 1] (RGB, every pixel); the
  similarity is ``1 − rmse``. A plain, model-free distance: PSNR is ``−20·log10(rmse)``.
- **perceptual** (real checkpoints, as Stable Flow): cosine similarity of DINOv2's CLS tokens
  (last hidden state) of the two images, from a transformers DINOv2 (or any ViT) folder on disk.
  Weights are never downloaded: a missing folder is reported as missing, never as a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCORES = ("judges", "pixel", "perceptual")
"""What a vitality is computed from (:mod:`probe.vital.vitality`)."""


@dataclass(frozen=True)
class JudgedChange:
    """The toy judges on one bypassed image against the full image of the same noise.

    Attributes:
        colour_ok, category_ok: the bypassed image shows the colour / category the prompt asks
            for (``None`` where the prompt names none).
        colour_kept, category_kept: the bypassed image's judged colour / category equal the
            full image's (both "no object" counts as equal).
        iou: IoU of the objects' masks (1.0 when both are empty).
        found: the judges found an object in the bypassed image.
    """

    colour_ok: bool | None
    category_ok: bool | None
    colour_kept: bool
    category_kept: bool
    iou: float
    found: bool

    @property
    def similarity(self) -> float:
        """Mean of colour kept, category kept and mask IoU: 1 for an unchanged image."""
        return (float(self.colour_kept) + float(self.category_kept) + self.iou) / 3


def judge_change(full: np.ndarray, bypassed: np.ndarray, prompt: str, world: Any) -> JudgedChange:
    """Judge ``bypassed`` against ``full`` and against what ``prompt`` asks for.

    Args:
        full, bypassed: RGB uint8 ``[H, W, 3]`` images from the same noise.
        prompt: the prompt both were generated from.
        world: the toy world (a :class:`~probe.toy.world.world.World` or its name).

    Example:
        >>> judge_change(image, image, "a red car on the street", "v2").similarity
        1.0
    """
    from probe.toy.evaluation.evaluate import expected_labels
    from probe.toy.judges.judge import judge
    from probe.toy.judges.masks import mask_iou

    a, b = judge(full, world), judge(bypassed, world)
    colour, category = expected_labels(prompt, world)
    return JudgedChange(
        colour_ok=(b.colour == colour) if colour else None,
        category_ok=(b.category == category) if category else None,
        colour_kept=a.colour == b.colour,
        category_kept=a.category == b.category,
        iou=mask_iou(a.mask, b.mask),
        found=b.found,
    )


def pixel_rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two uint8 RGB images of one size, in [0, 1] units.

    Raises:
        ValueError: the images differ in shape.
    """
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    diff = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return float(np.sqrt(np.mean(diff**2)))


class PerceptualModel:
    """Cosine similarity of DINOv2 CLS tokens, from a local transformers folder.

    Args:
        folder: a folder saved with ``AutoModel.from_pretrained("facebook/dinov2-base")
            .save_pretrained(folder)`` and the same for its ``AutoImageProcessor``.
        device: where to run the model.

    Raises:
        FileNotFoundError: the folder does not exist or holds no ``config.json``; the message
            says how to save one (attnprobe never downloads weights).

    Example:
        >>> dino = PerceptualModel("~/weights/dinov2-base")
        >>> dino.similarity(full, bypassed)
        0.93
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModel

        path = Path(folder).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a DINOv2 folder (no config.json): on a machine with internet, "
                "save AutoModel and AutoImageProcessor of facebook/dinov2-base with "
                "save_pretrained(<folder>) and pass --perceptual <folder>"
            )
        self.folder = path
        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device)
        self.model.eval()
        self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        """CLS tokens ``[n, channels]`` of uint8 RGB images."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pixels.to(self.device)).last_hidden_state[:, 0].float()

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """``cos(CLS(a), CLS(b))``: 1 for the same image."""
        cls = self.embed([a, b])
        return float(torch.nn.functional.cosine_similarity(cls[0], cls[1], dim=0))


def load_perceptual(folder: str | Path | None) -> tuple[PerceptualModel | None, str]:
    """The perceptual model of ``--perceptual``, or ``None`` and why it is missing."""
    if folder is None:
        return None, "missing: no --perceptual folder given"
    try:
        return PerceptualModel(folder), str(Path(folder).expanduser())
    except (FileNotFoundError, OSError, ValueError) as err:
        return None, f"missing: {err}"

"""Heat maps scored against exact masks: Chefer et al.'s protocol, as ConceptAttention runs it.

    scores = segment_scores(word_map, object_mask)          # one image
    scores.pixel_accuracy, scores.miou, scores.ap
    summarise([segment_scores(m, k) for m, k in pairs])     # a data set

The protocol (Chefer et al., "Transformer Interpretability Beyond Attention Visualization",
CVPR 2021, ``imagenet_seg_eval.py``; helblazer811/ConceptAttention, ``concept_attention/utils.py``
and its ImageNet-Segmentation / PascalVOC scripts):

1. The map ``[h, w]`` is upsampled to the mask's size (``nearest``, as ConceptAttention does;
   ``bilinear`` as Chefer's ViT maps are) and min-max normalised to [0, 1].
2. It is binarised at its mean: object where the normalised map is *strictly above* its mean.
   (ConceptAttention thresholds before a nearest upsampling; for an integer factor the mean and
   the binary map are the same either way.)
3. **Pixel accuracy**: the fraction of pixels whose binary label equals the mask's.
4. **mIoU**: the mean of the object's and the background's IoU (two classes).
5. **AP**: average precision (``sklearn.metrics.average_precision_score``) of the continuous map
   as two channels, background ``1 − map`` and object ``map``, against the one-hot mask, all
   ``2·H·W`` entries ranked together (the reference's ``get_ap_scores``).

Over a data set (:func:`summarise`) pixel accuracy and the IoUs are pooled, summed areas over
all images before dividing (the reference's running totals), and mAP is the mean of the
per-image APs.

NaN policy: a mask that does not split the image (empty: no object; or full: no background)
gives NaN for every score of that image, and :func:`summarise` leaves such images out and
counts them. A constant map (max = min) is normalised to zeros: nothing lies above its mean,
so it marks no object (object IoU 0) and its AP is what ties give; never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Upsampling = Literal["nearest", "bilinear"]


@dataclass(frozen=True)
class SegmentScores:
    """One heat map against one mask.

    Attributes:
        pixel_accuracy: correct pixels / all pixels.
        iou_object, iou_background: IoU of the binarised map and the mask, per class.
        ap: average precision of the continuous map (two channels, see the module).
        correct, pixels: the areas behind ``pixel_accuracy`` (for pooling).
        intersection, union: ``(background, object)`` areas behind the IoUs.
    """

    pixel_accuracy: float
    iou_object: float
    iou_background: float
    ap: float
    correct: int = 0
    pixels: int = 0
    intersection: tuple[int, int] = (0, 0)
    union: tuple[int, int] = (0, 0)

    @property
    def miou(self) -> float:
        """Mean of the object's and the background's IoU."""
        return (self.iou_object + self.iou_background) / 2

    @property
    def scored(self) -> bool:
        """False for an image whose mask does not split it (every score NaN)."""
        return not math.isnan(self.pixel_accuracy)


def normalised_map(heat: np.ndarray | torch.Tensor, size: tuple[int, int],
                   mode: Upsampling = "nearest") -> np.ndarray:  # fmt: skip
    """The map ``[h, w]`` upsampled to ``size`` (height, width) and min-max normalised to
    [0, 1], float64 ``[H, W]``; a constant map gives zeros.

    Raises:
        ValueError: not a 2-D map, or an unknown ``mode``.
    """
    t = torch.as_tensor(np.asarray(heat, dtype=np.float64) if not torch.is_tensor(heat) else heat)
    if t.ndim != 2:
        raise ValueError(f"a heat map is [h, w]; got shape {tuple(t.shape)}")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"upsampling {mode!r}: use 'nearest' (ConceptAttention) or 'bilinear'")
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(t.double()[None, None], size=size, mode=mode, **kwargs)[0, 0].numpy()
    span = up.max() - up.min()
    return (up - up.min()) / span if span > 0 else np.zeros_like(up)


def binarise(normalised: np.ndarray) -> np.ndarray:
    """Object where the normalised map is strictly above its mean: bool ``[H, W]``."""
    return normalised > normalised.mean()


def average_precision(normalised: np.ndarray, mask: np.ndarray) -> float:
    """AP of ``[1 − map, map]`` against ``[1 − mask, mask]``, all entries ranked together."""
    from sklearn.metrics import average_precision_score

    scores = np.concatenate([1.0 - normalised.ravel(), normalised.ravel()])
    targets = np.concatenate([~mask.ravel(), mask.ravel()]).astype(int)
    return float(average_precision_score(targets, scores))


def segment_scores(heat: np.ndarray | torch.Tensor, mask: np.ndarray,
                   mode: Upsampling = "nearest") -> SegmentScores:  # fmt: skip
    """Score one heat map against one object mask (Chefer et al.'s protocol, see the module).

    Args:
        heat: the map ``[h, w]`` (any scale; a word's attention, a concept map, ...).
        mask: bool ``[H, W]``, the object's pixels (the image's size).
        mode: how the map is upsampled to the mask's size.

    Returns:
        The scores; every one NaN when the mask is empty or full (see the NaN policy).

    Example:
        >>> s = segment_scores(np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([[0, 0], [1, 1]], bool))
        >>> s.pixel_accuracy, s.miou, s.ap
        (1.0, 1.0, 1.0)
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask is [H, W]; got shape {mask.shape}")
    if not mask.any() or mask.all():
        nan = float("nan")
        return SegmentScores(nan, nan, nan, nan, pixels=mask.size)
    normalised = normalised_map(heat, (mask.shape[0], mask.shape[1]), mode)
    found = binarise(normalised)
    inter = (int((~found & ~mask).sum()), int((found & mask).sum()))
    union = (int((~found | ~mask).sum()), int((found | mask).sum()))
    correct = int((found == mask).sum())
    return SegmentScores(
        pixel_accuracy=correct / mask.size, iou_object=inter[1] / union[1],
        iou_background=inter[0] / union[0], ap=average_precision(normalised, mask),
        correct=correct, pixels=mask.size, intersection=inter, union=union,
    )  # fmt: skip


def summarise(scores: Iterable[SegmentScores]) -> dict[str, float]:
    """Data-set scores: pooled pixel accuracy and IoUs, mean AP; images left out counted.

    Returns:
        ``{"images", "left_out", "pixel_accuracy", "iou_object", "iou_background", "miou",
        "map"}``; the scores are NaN when no image was scored.

    Example:
        >>> summarise([segment_scores(m, k) for m, k in zip(maps, masks)])["miou"]
        0.61
    """
    rows = list(scores)
    kept = [s for s in rows if s.scored]
    out: dict[str, float] = {"images": len(kept), "left_out": len(rows) - len(kept)}
    if not kept:
        names = ("pixel_accuracy", "iou_object", "iou_background", "miou", "map")
        return out | {name: float("nan") for name in names}
    inter = np.sum([s.intersection for s in kept], axis=0)
    union = np.sum([s.union for s in kept], axis=0)
    iou = inter / union
    return out | {
        "pixel_accuracy": sum(s.correct for s in kept) / sum(s.pixels for s in kept),
        "iou_object": float(iou[1]), "iou_background": float(iou[0]),
        "miou": float(iou.mean()), "map": float(np.mean([s.ap for s in kept])),
    }  # fmt: skip

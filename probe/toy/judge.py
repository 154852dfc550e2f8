"""Judges for toy-world images: where is the object, what colour, what category, same shape?

A generated image is a blurry, noisy, slightly colour-shifted version of a render (see
``probe.toy.world``). The judges read it back into labels:

- :func:`find_object`: the object's mask. The background is known up to a colour shift (two flat
  colours split at a horizon), so each pixel gets an *alpha*: its position on the line from the
  local background colour to the object colour. Pixels with alpha > 0.5, lightly smoothed, form
  the mask; the largest connected part is kept with the large or nearby other parts.
- :func:`judge_colour`: the nearest :data:`~probe.toy.world.PALETTE` colour to the median of the
  mask's inner pixels.
- :func:`judge_category`: a small CNN over the mask's silhouette (cropped, padded square, 32×32),
  trained by ``python -m probe.toy.train_judge`` on degraded renders; its weights ship in
  ``probe/toy/judge_weights/``.
- :func:`mask_iou` and :func:`shape_distance` score structure between two masks.

Example:
    >>> from probe.toy.world import Scene, render_scene
    >>> j = judge(render_scene(Scene("dog", "blue")).image)
    >>> (j.found, j.colour, j.category)
    (True, 'blue', 'dog')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from probe.toy.world import BACKGROUNDS, CATEGORIES, PALETTE

WEIGHTS_DIR = Path(__file__).resolve().parent / "judge_weights"
CROP_SIZE = 32
MIN_AREA_FRACTION = 0.004  # a mask smaller than this share of the image is "no object"
MAX_AREA_FRACTION = 0.8  # ... and so is one larger than this
MIN_BACKGROUND_SHARE = 0.25  # below this share of background-coloured pixels: not a toy scene
_PALETTE_RGB = np.asarray(list(PALETTE.values()), np.float32)
_PALETTE_NAMES = list(PALETTE)


class NoObjectError(ValueError):
    """The image (or the given mask) holds no object to judge."""


@dataclass
class Judgement:
    """What the judges read from one image.

    Attributes:
        found: whether an object was found; if not, ``colour`` and ``category`` are None.
        colour: nearest palette colour name.
        category: the classifier's category.
        confidence: the classifier's probability for ``category`` (0 if not found).
        colour_distance: RGB distance from the object's median colour to the named colour.
        area: the mask's area in pixels.
        mask: bool ``[H, W]``, the object's pixels.
    """

    found: bool
    colour: str | None
    category: str | None
    confidence: float
    colour_distance: float
    area: int
    mask: np.ndarray = field(repr=False)


def as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """An image as float32 RGB ``[H, W, 3]`` in 0-255 (from uint8/float arrays or PIL).

    Raises:
        ValueError: not an RGB image.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got an array of shape {arr.shape}")
    arr = arr.astype(np.float32)
    if arr.max(initial=0) <= 1.0 and np.asarray(image).dtype.kind == "f":
        arr = arr * 255  # float images in 0-1, as pipelines return with output_type="np"
    return arr


def _region_colour(pixels: np.ndarray, nominal: np.ndarray) -> np.ndarray:
    """The background colour as this image shows it: median of pixels near the nominal one."""
    near = pixels[np.linalg.norm(pixels - nominal, axis=-1) < 60]
    return np.median(near, axis=0) if len(near) >= 20 else nominal


def _background_image(img: np.ndarray) -> tuple[np.ndarray, float]:
    """The image's background, per pixel ``[H, W, 3]``, and the share of pixels that show it.

    Near the horizon (a blurred step), each pixel's background is the nearest point on the
    segment between the two colours.
    """
    h = img.shape[0]
    best: tuple[float, str] = (-1.0, "")
    for name, (top_rgb, bottom_rgb, horizon) in BACKGROUNDS.items():
        row = round(horizon * h)
        near = np.r_[
            np.linalg.norm(img[:row] - np.asarray(top_rgb, np.float32), axis=-1).ravel() < 60,
            np.linalg.norm(img[row:] - np.asarray(bottom_rgb, np.float32), axis=-1).ravel() < 60,
        ]
        best = max(best, (float(near.mean()), name))
    share, name = best
    top_rgb, bottom_rgb, horizon = BACKGROUNDS[name]
    row = round(horizon * h)
    top = _region_colour(img[:row].reshape(-1, 3), np.asarray(top_rgb, np.float32))
    bottom = _region_colour(img[row:].reshape(-1, 3), np.asarray(bottom_rgb, np.float32))
    bg = np.empty_like(img)
    bg[:row], bg[row:] = top, bottom
    band = max(2, round(0.05 * h))
    lo, hi = max(0, row - band), min(h, row + band)
    d = bottom - top
    t = np.clip(((img[lo:hi] - top) @ d) / max(float(d @ d), 1e-6), 0, 1)
    bg[lo:hi] = top + t[..., None] * d
    return bg, share


def object_alpha(image: np.ndarray | Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Each pixel's share of object colour, float ``[H, W]``, and the object colour (or None).

    The alpha is the projection of the pixel onto the line from its background colour to the
    object colour, which is the median of the pixels that stand out most from the background.
    An image that shows neither toy background (less than ``MIN_BACKGROUND_SHARE`` of its
    pixels near a background colour) has no object: alpha all 0, colour None.
    """
    img = as_array(image)
    bg, share = _background_image(img)
    dist = np.linalg.norm(img - bg, axis=-1)
    cand = dist > max(40.0, 0.5 * float(np.percentile(dist, 99.5)))
    if share < MIN_BACKGROUND_SHARE or cand.sum() < 4:
        return np.zeros(img.shape[:2], np.float32), None
    core = cand & (dist >= np.median(dist[cand]))
    colour = np.median(img[core], axis=0)
    d = colour - bg
    alpha = ((img - bg) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-6)
    return alpha.astype(np.float32), colour


def _keep_main_parts(mask: np.ndarray) -> np.ndarray:
    """The largest connected part plus parts that are large or within 3 px of it."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    main = labels == int(np.argmax(sizes)) + 1
    near = ndimage.binary_dilation(main, iterations=3)
    keep = [
        i + 1
        for i, s in enumerate(sizes)
        if s >= 0.1 * sizes.max() or (s >= 3 and near[labels == i + 1].any())
    ]
    return np.isin(labels, keep)


def find_object(image: np.ndarray | Image.Image) -> np.ndarray:
    """The object's pixels in a toy-world image, bool ``[H, W]`` (all False if none).

    Args:
        image: RGB uint8 ``[H, W, 3]`` array (any size), float array in 0-1, or PIL image.

    Returns:
        The mask; all False when the image shows no toy background, nothing stands out from
        it, or the part found is smaller than ``MIN_AREA_FRACTION`` or larger than
        ``MAX_AREA_FRACTION`` of the image. The alpha map is smoothed (gaussian,
        sigma 0.6 px) against noise and sharpened (unsharp mask, sigma 1.5 px, amount 2) so that
        blurred legs, tails and the gaps between them survive the 0.5 threshold.

    Example:
        >>> mask = find_object(render_scene(Scene("cat", "red")).image)
    """
    alpha, _ = object_alpha(image)
    smooth = ndimage.gaussian_filter(alpha, 0.6)  # against noise
    sharp = smooth + 2.0 * (smooth - ndimage.gaussian_filter(smooth, 1.5))  # thin parts, gaps
    mask = _keep_main_parts(sharp > 0.5)
    if not MIN_AREA_FRACTION * mask.size <= mask.sum() <= MAX_AREA_FRACTION * mask.size:
        return np.zeros_like(mask)
    return mask


def _checked_mask(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    mask = find_object(image) if mask is None else np.asarray(mask, bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    if not mask.any():
        raise NoObjectError(
            "no object found in the image (empty mask); judge() reports found=False"
        )
    return mask


def object_colour(image: np.ndarray | Image.Image, mask: np.ndarray | None = None) -> np.ndarray:
    """Median RGB ``[3]`` of the mask's inner pixels (the edge ring is left out if enough remain).

    Raises:
        NoObjectError: the mask is empty.
    """
    img = as_array(image)
    mask = _checked_mask(img, mask)
    inner = ndimage.binary_erosion(mask)
    if inner.sum() >= max(4, 0.2 * mask.sum()):
        mask = inner
    return np.median(img[mask], axis=0)


def judge_colour(image: np.ndarray | Image.Image, mask: np.ndarray | None = None) -> str:
    """The palette colour of the object: nearest to the median of its inner pixels.

    Args:
        image: RGB image (see :func:`find_object`).
        mask: the object's pixels; found with :func:`find_object` if None.

    Raises:
        NoObjectError: no object (empty mask).

    Example:
        >>> judge_colour(render_scene(Scene("car", "green")).image)
        'green'
    """
    rgb = object_colour(image, mask)
    return _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE_RGB - rgb, axis=-1)))]


def colour_shift(
    image: np.ndarray | Image.Image, source: str, target: str, mask: np.ndarray | None = None
) -> float:
    """Where the object's colour sits between two palette colours: 0 = ``target``, 1 = ``source``.

    The projection of the object's median colour (:func:`object_colour`) on the line from the
    target's palette colour to the source's. A colour edit that leaks the source's colour has a
    shift above 0 even while :func:`judge_colour` already names the target.

    Raises:
        NoObjectError: no object (empty mask).
        ValueError: ``source`` or ``target`` is not a palette colour, or they are the same.

    Example:
        >>> round(colour_shift(render_scene(Scene("car", "blue")).image, "red", "blue"), 2)
        0.0
    """
    for name in (source, target):
        if name not in PALETTE:
            raise ValueError(f"{name!r} is not a toy-world colour: {', '.join(PALETTE)}")
    if source == target:
        raise ValueError(f"source and target are both {source!r}: a shift needs two colours")
    rgb = object_colour(image, mask)
    s, t = np.array(PALETTE[source], float), np.array(PALETTE[target], float)
    return float(np.dot(rgb - t, s - t) / np.dot(s - t, s - t))


def silhouette_crop(mask: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The mask cropped to its bounding box, padded square, resized: float32 ``[size, size]``."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise NoObjectError("cannot crop an empty mask")
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = max(crop.shape) + 2
    square = np.zeros((side, side), np.uint8)
    y0, x0 = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop * 255
    small = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(small, np.float32) / 255


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


@cache
def load_category_net(folder: Path = WEIGHTS_DIR) -> tuple[CategoryNet, list[str]]:
    """The shipped category classifier (loaded once) and its class names.

    Raises:
        FileNotFoundError: no weights in ``folder``; train them with
            ``python -m probe.toy.train_judge --out probe/toy/judge_weights``.
    """
    from safetensors.torch import load_file

    weights, config_file = folder / "category.safetensors", folder / "category.json"
    if not weights.is_file() or not config_file.is_file():
        raise FileNotFoundError(
            f"no category judge weights in {folder}; train them with "
            f"`python -m probe.toy.train_judge --out {folder}`"
        )
    config: dict[str, Any] = json.loads(config_file.read_text())
    net = CategoryNet(len(config["classes"]), config["width"])
    net.load_state_dict(load_file(str(weights)))
    return net.eval(), list(config["classes"])


def judge_category_probs(
    image: np.ndarray | Image.Image, mask: np.ndarray | None = None
) -> dict[str, float]:
    """The classifier's probability for each category, from the object's silhouette.

    Raises:
        NoObjectError: no object (empty mask).
    """
    mask = _checked_mask(as_array(image), mask)
    net, classes = load_category_net()
    x = torch.from_numpy(silhouette_crop(mask))[None, None]
    with torch.no_grad():
        probs = net(x).softmax(-1)[0].tolist()
    return dict(zip(classes, probs, strict=True))


def judge_category(image: np.ndarray | Image.Image, mask: np.ndarray | None = None) -> str:
    """The object's category by the shipped classifier.

    Raises:
        NoObjectError: no object (empty mask).

    Example:
        >>> judge_category(render_scene(Scene("giraffe", "red")).image)
        'giraffe'
    """
    probs = judge_category_probs(image, mask)
    return max(probs, key=probs.__getitem__)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of one shape; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _normalised(mask: np.ndarray, size: int) -> np.ndarray:
    """The mask moved so its centroid is centred and scaled so its RMS radius is size/6."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    rms = max(float(np.sqrt(((ys - cy) ** 2 + (xs - cx) ** 2).mean())), 0.5)
    zoom = rms / (size / 6)
    grid = (np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2) * zoom
    coords = np.stack([grid[0] + cy, grid[1] + cx])
    return ndimage.map_coordinates(mask.astype(np.float32), coords, order=1) > 0.5


def shape_distance(a: np.ndarray, b: np.ndarray, size: int = 64) -> float:
    """How different two silhouettes are, regardless of where they stand and how big they are.

    Each mask is moved so its centroid sits at the centre and scaled so its RMS radius (root
    mean square distance of its pixels from the centroid) is ``size / 6``; the distance is
    ``1 - IoU`` of the two normalised masks. 0 means the same shape; 1 means no overlap. A
    mirrored shape counts as different. Both empty gives 0, one empty gives 1. At 64×64 the
    same toy shape drawn at another place and scale scores about 0.1-0.2 (rasterisation); two
    different toy categories score 0.35 or more.

    Example:
        >>> a = render_scene(Scene("dog", scale=0.7)).mask
        >>> b = render_scene(Scene("dog", x=0.35, scale=0.5)).mask
        >>> shape_distance(a, b) < 0.25
        True
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() or not b.any():
        return float(a.any() != b.any())
    return 1.0 - mask_iou(_normalised(a, size), _normalised(b, size))


def judge(image: np.ndarray | Image.Image) -> Judgement:
    """Find the object and name its colour and category; never raises for an empty scene.

    Args:
        image: RGB image (see :func:`find_object`).

    Returns:
        A :class:`Judgement`; ``found=False`` (colour and category None) if no object is found.

    Example:
        >>> j = judge(render_scene(Scene("horse", "purple", "street")).image)
        >>> j.colour, j.category, j.confidence > 0.5
        ('purple', 'horse', True)
    """
    img = as_array(image)
    mask = find_object(img)
    if not mask.any():
        return Judgement(False, None, None, 0.0, float("nan"), 0, mask)
    rgb = object_colour(img, mask)
    dists = np.linalg.norm(_PALETTE_RGB - rgb, axis=-1)
    probs = judge_category_probs(img, mask)
    category = max(probs, key=probs.__getitem__)
    return Judgement(
        found=True,
        colour=_PALETTE_NAMES[int(np.argmin(dists))],
        category=category,
        confidence=float(probs[category]),
        colour_distance=float(dists.min()),
        area=int(mask.sum()),
        mask=mask,
    )

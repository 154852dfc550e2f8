"""Find the object in a toy-world image and compare masks: the judges' first step.

The background is known up to a colour shift (two flat colours split at a horizon, those of the
image's :class:`~probe.toy.world.world.World`), so each pixel gets an *alpha*: its position on the
line from the local background colour to the object colour. Pixels with alpha > 0.5, lightly
smoothed, form the mask; the largest connected part is kept with the large or nearby other parts.

    mask = find_object(image)                    # world v1 (the default)
    mask = find_object(image, world="v2")        # v2's backgrounds
    mask_iou(mask, other), shape_distance(mask, other)
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from probe.toy.world.world import World, get_world

CROP_SIZE = 32
MIN_AREA_FRACTION = 0.004  # a mask smaller than this share of the image is "no object"
MAX_AREA_FRACTION = 0.8  # ... and so is one larger than this
MIN_BACKGROUND_SHARE = 0.25  # below this share of background-coloured pixels: not a toy scene
WorldLike = World | str | None


class NoObjectError(ValueError):
    """The image (or the given mask) holds no object to judge."""


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


def _background_image(img: np.ndarray, world: WorldLike = None) -> tuple[np.ndarray, float]:
    """The image's background, per pixel ``[H, W, 3]``, and the share of pixels that show it.

    Near the horizon (a blurred step), each pixel's background is the nearest point on the
    segment between the two colours.
    """
    h = img.shape[0]
    backgrounds = get_world(world).backgrounds
    best: tuple[float, str] = (-1.0, "")
    for name, (top_rgb, bottom_rgb, horizon) in backgrounds.items():
        row = round(horizon * h)
        near = np.r_[
            np.linalg.norm(img[:row] - np.asarray(top_rgb, np.float32), axis=-1).ravel() < 60,
            np.linalg.norm(img[row:] - np.asarray(bottom_rgb, np.float32), axis=-1).ravel() < 60,
        ]
        best = max(best, (float(near.mean()), name))
    share, name = best
    top_rgb, bottom_rgb, horizon = backgrounds[name]
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


def object_alpha(
    image: np.ndarray | Image.Image, world: WorldLike = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each pixel's share of object colour, float ``[H, W]``, and the object colour (or None).

    The alpha is the projection of the pixel onto the line from its background colour to the
    object colour, which is the median of the pixels that stand out most from the background.
    An image that shows neither toy background (less than ``MIN_BACKGROUND_SHARE`` of its
    pixels near a background colour) has no object: alpha all 0, colour None.
    """
    img = as_array(image)
    bg, share = _background_image(img, world)
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


def find_object(image: np.ndarray | Image.Image, world: WorldLike = None) -> np.ndarray:
    """The object's pixels in a toy-world image, bool ``[H, W]`` (all False if none).

    Args:
        image: RGB uint8 ``[H, W, 3]`` array (any size), float array in 0-1, or PIL image.
        world: the toy world whose backgrounds the image shows (default: the shipped toy's).

    Returns:
        The mask; all False when the image shows no toy background, nothing stands out from
        it, or the part found is smaller than ``MIN_AREA_FRACTION`` or larger than
        ``MAX_AREA_FRACTION`` of the image. The alpha map is smoothed (gaussian,
        sigma 0.6 px) against noise and sharpened (unsharp mask, sigma 1.5 px, amount 2) so that
        blurred legs, tails and the gaps between them survive the 0.5 threshold.

    Example:
        >>> mask = find_object(render_scene(Scene("cat", "red")).image)
    """
    alpha, _ = object_alpha(image, world)
    smooth = ndimage.gaussian_filter(alpha, 0.6)  # against noise
    sharp = smooth + 2.0 * (smooth - ndimage.gaussian_filter(smooth, 1.5))  # thin parts, gaps
    mask = _keep_main_parts(sharp > 0.5)
    if not MIN_AREA_FRACTION * mask.size <= mask.sum() <= MAX_AREA_FRACTION * mask.size:
        return np.zeros_like(mask)
    return mask


def checked_mask(image: np.ndarray, mask: np.ndarray | None, world: WorldLike = None) -> np.ndarray:
    """The given mask, or the object found in ``image``; raises :class:`NoObjectError` if empty."""
    mask = find_object(image, world) if mask is None else np.asarray(mask, bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    if not mask.any():
        raise NoObjectError(
            "no object found in the image (empty mask); judge() reports found=False"
        )
    return mask


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

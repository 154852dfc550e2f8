"""Image metrics for any pair of images of one size: PSNR, mean absolute difference, SSIM.

    psnr(source, edited)                       # dB, capped at MAX_PSNR for identical images
    psnr(source, edited, mask=background)      # over a bool [H, W] mask
    mean_abs_diff(source, edited), ssim(source, edited)

Images are PIL images or ``[H, W, 3]`` arrays (uint8, or floats in ``[0, 1]``). The toy world's
judges (:mod:`editing.scoring.toy_metrics`) and the CLIP scorer use them for the background.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

ImageLike = Image.Image | np.ndarray
MAX_PSNR = 100.0  # dB reported for identical images (keeps CSV and JSON finite)


def to_array(image: ImageLike) -> np.ndarray:
    """An image as ``uint8 [H, W, 3]``.

    Args:
        image: a PIL image (any mode convertible to RGB) or an array ``[H, W, 3]`` of uint8, or
            of floats in ``[0, 1]``.

    Raises:
        ValueError: an array of another shape.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image of shape {array.shape} is not [H, W, 3] RGB")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return array


def same_size(a: np.ndarray, b: np.ndarray) -> None:
    """Refuse two image arrays of different shapes.

    Raises:
        ValueError: the shapes differ; the message names both.
    """
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}; resize one first")


def psnr(a: ImageLike, b: ImageLike, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB (peak 255), over ``mask`` if given.

    Identical images give :data:`MAX_PSNR`; an empty mask gives NaN.

    Args:
        a, b: images of the same size.
        mask: bool ``[H, W]``: where to compare.
    """
    diff = _differences(a, b, mask)
    if diff is None:
        return math.nan
    mse = float((diff**2).mean())
    return MAX_PSNR if mse == 0 else min(MAX_PSNR, 10 * math.log10(255.0**2 / mse))


def mean_abs_diff(a: ImageLike, b: ImageLike, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference in 0-255 units, over ``mask`` if given (NaN for an empty mask)."""
    diff = _differences(a, b, mask)
    return math.nan if diff is None else float(np.abs(diff).mean())


def _differences(a: ImageLike, b: ImageLike, mask: np.ndarray | None) -> np.ndarray | None:
    """``a - b`` in float64 (0-255 units) where ``mask`` is set; ``None`` for an empty mask."""
    x, y = to_array(a).astype(np.float64), to_array(b).astype(np.float64)
    same_size(x, y)
    if mask is not None and not mask.any():
        return None
    return x - y if mask is None else (x - y)[mask]


def ssim(a: ImageLike, b: ImageLike, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) of the luminance, Gaussian window ``sigma``.

    1.0 for identical images. Used where LPIPS would be: LPIPS needs pretrained VGG/AlexNet
    weights, which attnprobe does not download.
    """
    from scipy.ndimage import gaussian_filter

    rgb_a, rgb_b = to_array(a), to_array(b)
    same_size(rgb_a, rgb_b)
    x, y = _luma(rgb_a), _luma(rgb_b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = gaussian_filter(x, sigma), gaussian_filter(y, sigma)
    vx = gaussian_filter(x * x, sigma) - mx**2
    vy = gaussian_filter(y * y, sigma) - my**2
    cov = gaussian_filter(x * y, sigma) - mx * my
    num = (2 * mx * my + c1) * (2 * cov + c2)
    den = (mx**2 + my**2 + c1) * (vx + vy + c2)
    return float((num / den).mean())


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

"""PIE-Bench's pixel metrics as PnP-Inversion's ``evaluation/`` computes them.

    mask = decode_mask(item["mask"], (512, 512))         # 1 = edit region, border set to 1
    background_metrics(source, edited, mask)             # psnr/mse/ssim_unedit_part
    nan_mean([1.0, math.nan, 3.0])                        # (2.0, 2): NaN rows dropped

Semantics (read from ``evaluation/evaluate.py`` and ``matrics_calculator.py``, not copied):

- **Mask**: run-length pairs ``[start, length, ...]`` over the row-major flattened image set 1
  (a run is cut at the image's end); then the first and last row and column are set to 1 ("to
  avoid annotation errors in boundary"), so the border always counts as edit region.
- **Masking**: images as floats in ``[0, 1]`` (``/255``) multiplied by the mask, the same mask
  on both images: ``1 − mask`` for the ``*_unedit_part`` (background) metrics, ``mask`` for the
  ``*_edit_part`` ones. Pixels outside stay in as zeros, so MSE divides by every pixel
  (``3·H·W``), not by the region's size.
- **PSNR** ``10·log10(1 / MSE)`` (data range 1) over the whole masked image; **MSE** the mean of
  squared differences over every element; **SSIM** with an 11-tap Gaussian window (σ 1.5),
  ``K1 = 0.01``, ``K2 = 0.03``, data range 1, per channel, reflect-padded by 5 and the padded
  border cropped from the SSIM map before its mean (torchmetrics' defaults, which the reference
  calls).
- **NaN policy**: a region metric whose region is empty (the mask covers everything, or
  nothing) is NaN, never a number; a table drops NaN rows of each metric and averages the rest
  (:func:`nan_mean`), reporting how many were averaged.

One departure: identical images have infinite PSNR in the reference; here they get
:data:`~editing.scoring.images.MAX_PSNR` (100 dB), as everywhere in attnprobe, so JSON stays
finite. The model-based metrics (structure distance, LPIPS, CLIP) are in
:mod:`editing.bench.pie_models`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from editing.scoring.images import MAX_PSNR, ImageLike, same_size, to_array


def decode_mask(encoded: Sequence[int], shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    """PIE-Bench's run-length mask, with the reference's border rule.

    Args:
        encoded: ``[start, length, start, length, ...]`` over the row-major flattened image.
        shape: ``(height, width)``; PIE-Bench's masks are 512 × 512.

    Returns:
        float ``[H, W]`` of 0 and 1 (1 = edit region); the first and last row and column are 1.

    Raises:
        ValueError: an odd number of entries, or a run starting outside the image.

    Example:
        >>> decode_mask([5, 2], (3, 4)).astype(int).tolist()
        [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    """
    if len(encoded) % 2:
        raise ValueError(
            f"a run-length mask holds [start, length] pairs; got {len(encoded)} numbers"
        )
    size = shape[0] * shape[1]
    flat = np.zeros(size, dtype=np.float64)
    for start, length in zip(encoded[0::2], encoded[1::2], strict=True):
        if not 0 <= start < size:
            raise ValueError(f"mask run starts at {start}, outside the {shape} image")
        flat[start : start + min(length, size - start)] = 1
    mask = flat.reshape(shape)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    return mask


def encode_mask(mask: np.ndarray) -> list[int]:
    """The run-length code of a ``[H, W]`` mask (nonzero = 1), as PIE-Bench stores it.

    ``decode_mask(encode_mask(m), m.shape)`` is ``m`` with its border set to 1.
    """
    flat = np.concatenate([[0], (np.asarray(mask).reshape(-1) != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, stops = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, stops - starts, strict=True) for v in pair]


def strip_brackets(prompt: str) -> str:
    """A PIE-Bench prompt without the brackets that mark its changed words."""
    return prompt.replace("[", "").replace("]", "")


def masked(image: ImageLike, mask: np.ndarray) -> np.ndarray:
    """``image / 255 · mask``: float32 ``[H, W, 3]``; ``mask`` is ``[H, W]`` (or ``[H, W, 3]``)."""
    array = to_array(image).astype(np.float32) / 255
    weight = np.asarray(mask, dtype=np.float32)
    if weight.ndim == 2:
        weight = weight[..., None]
    if weight.shape[:2] != array.shape[:2]:
        raise ValueError(f"mask {weight.shape[:2]} and image {array.shape[:2]} differ in size")
    return array * weight


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference over every element of two (masked) float images."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB at data range 1 over every element (``MAX_PSNR`` for identical images)."""
    error = mse(a, b)
    return MAX_PSNR if error == 0 else min(MAX_PSNR, 10 * math.log10(1.0 / error))


def ssim(a: np.ndarray, b: np.ndarray, kernel: int = 11, sigma: float = 1.5) -> float:
    """SSIM of two float ``[H, W, 3]`` images in ``[0, 1]`` as torchmetrics computes it by
    default (see the module docstring); the images must be larger than ``kernel // 2`` per side.
    """
    x = torch.as_tensor(np.asarray(a, np.float64)).permute(2, 0, 1)[None]
    y = torch.as_tensor(np.asarray(b, np.float64)).permute(2, 0, 1)[None]
    pad = (kernel - 1) // 2
    taps = torch.arange((1 - kernel) / 2, (1 + kernel) / 2, 1, dtype=torch.float64)
    gauss = torch.exp(-((taps / sigma) ** 2) / 2)
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] @ gauss[None, :]).expand(3, 1, kernel, kernel)
    x, y = (F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in (x, y))
    stack = torch.cat([x, y, x * x, y * y, x * y])
    mu_x, mu_y, xx, yy, xy = F.conv2d(stack, window, groups=3).split(1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(index[..., pad:-pad, pad:-pad].mean())


def region_metrics(
    source: ImageLike, edited: ImageLike, mask: np.ndarray, part: str = "unedit"
) -> dict[str, float]:
    """PSNR, MSE and SSIM of the two images multiplied by one region.

    Args:
        source, edited: images of one size (PIL or ``[H, W, 3]``).
        mask: ``[H, W]``, 1 = edit region (:func:`decode_mask`).
        part: ``"unedit"`` (the background, ``1 − mask``) or ``"edit"`` (``mask``).

    Returns:
        ``{"psnr_<part>_part", "mse_<part>_part", "ssim_<part>_part"}``; all NaN when the region
        is empty; SSIM NaN for images of 5 pixels a side or less (too small for its window).

    Raises:
        ValueError: images of different sizes, or ``part`` not ``edit``/``unedit``.
    """
    if part not in ("edit", "unedit"):
        raise ValueError(f"part={part!r}: use 'unedit' (background) or 'edit'")
    same_size(to_array(source), to_array(edited))
    region = np.asarray(mask, np.float64) if part == "edit" else 1 - np.asarray(mask, np.float64)
    names = [f"{m}_{part}_part" for m in ("psnr", "mse", "ssim")]
    if region.sum() == 0:
        return dict.fromkeys(names, math.nan)
    a, b = masked(source, region), masked(edited, region)
    # SSIM's reflect padding needs more than 5 pixels a side (the reference would fail)
    structural = ssim(a, b) if min(a.shape[:2]) > 5 else math.nan
    return dict(zip(names, (psnr(a, b), mse(a, b), structural), strict=True))


def nan_mean(values: Iterable[float | None]) -> tuple[float, int]:
    """The mean of the values that are numbers, and how many they are (PIE-Bench's policy:
    NaN rows are dropped). ``None`` (a missing metric) counts as absent too; no numbers: NaN, 0.
    """
    numbers = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return (float(np.mean(numbers)), len(numbers)) if numbers else (math.nan, 0)

"""PIE-Bench's model-based metrics, from weights kept in local folders (never downloaded).

    scorer = PieScorer(dino="w/dino-vitb8", clip="w/clip-vit-l14", lpips="w/lpips-squeeze")
    scorer.score(source, edited, mask, "a blue car")     # {"structure_distance": ..., ...}
    scorer.missing                                       # {"lpips_unedit_part": "no folder given"}

- **structure distance** (:class:`StructureDistance`): a transformers ViT folder of DINO
  ViT-B/8 (``facebook/dino-vitb8``); the keys of the last block (all heads side by side, CLS
  included) → cosine self-similarity ``[T, T]`` (norms clamped at 1e-8) → mean squared
  difference between the source's and the edit's. The image is resized to 224 on its shorter
  side (longer side at most 480; bilinear with antialiasing, torchvision's ``Resize`` today) and
  ImageNet-normalised. ``scale="reference"`` (the default) feeds the 0–255 pixel values to that
  normalisation, as the reference does (its published numbers depend on it); ``scale="unit"``
  divides by 255 first, which is what the network was trained on. Whole images, no mask.
- **LPIPS** (:class:`SqueezeLpips`): LPIPS v0.1 on SqueezeNet 1.1, inputs ``2x − 1`` of the
  masked ``[0, 1]`` images (what the reference hands torchmetrics' LPIPS, ``normalize=False``),
  each layer's map averaged over its positions. Its folder holds ``squeezenet1_1.pth``
  (torchvision's ImageNet weights, ``features.*``) and ``squeeze.pth`` (the ``lpips`` package's
  linear heads, ``lin0.model.1.weight`` …). Neither ``lpips`` nor torchvision is a dependency:
  the network is rebuilt here from those two files. It gives the genuine ``lpips`` 0.1.4 code's
  values bit for bit on a seeded backbone (``tests/test_lpips_reference.py``).
- **CLIP score** (:class:`~editing.scoring.clip_dino.ClipMetrics`: ``100·max(cos, 0)``) of the
  whole edit and of the edit region (``uint8(image · mask)``: outside blacked out), against the
  editing prompt without brackets, and of the source against the original prompt.

A metric whose folder is not given is *missing*: ``None`` in the row, named in
:attr:`PieScorer.missing`, never a number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from editing.bench.pie_metrics import masked, region_metrics
from editing.scoring.clip_dino import ClipMetrics, _folder, _last_key_projection
from editing.scoring.images import ImageLike, to_array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_side(height: int, width: int, side: int = 224, max_size: int = 480) -> tuple[int, int]:
    """``(h, w)`` after torchvision's ``Resize(side, max_size=max_size)``."""
    short, long = min(height, width), max(height, width)
    new_short, new_long = side, int(side * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if height <= width else (new_long, new_short)


class StructureDistance:
    """PIE-Bench's structure distance from a local DINO ViT folder (see the module docstring).

    Args:
        folder: a transformers ViT folder (``config.json`` and weights).
        scale: ``"reference"`` (0–255 into ImageNet normalisation, the published protocol) or
            ``"unit"`` (``/255`` first).
        side: the shorter side images are resized to (224 in the reference).
        device: where to run.

    Raises:
        FileNotFoundError: no model folder there.
        ValueError: an unknown ``scale``.

    Example:
        >>> StructureDistance("w/dino-vitb8").distance(source, edited)
        0.0123
    """

    def __init__(
        self, folder: str | Path, scale: str = "reference", side: int = 224, device: str = "cpu"
    ) -> None:
        from transformers import AutoModel

        if scale not in ("reference", "unit"):
            raise ValueError(f"scale={scale!r}: use 'reference' (0-255, as published) or 'unit'")
        path = _folder(folder, "DINO ViT")
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.scale, self.side, self.device = scale, side, torch.device(device)
        self.keys = _last_key_projection(self.model)

    def pixels(self, image: ImageLike) -> Tensor:
        """The network's input ``[1, 3, h, w]`` for one image."""
        x = torch.from_numpy(to_array(image).astype(np.float32)).permute(2, 0, 1)[None]
        x = x / 255 if self.scale == "unit" else x
        size = resized_side(x.shape[-2], x.shape[-1], self.side)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def self_similarity(self, image: ImageLike) -> Tensor:
        """Cosine self-similarity of the last block's keys, ``[tokens, tokens]`` (CLS first)."""
        out: list[Tensor] = []
        handle = self.keys.register_forward_hook(lambda m, i, o: out.append(o))
        try:
            self.model(pixel_values=self.pixels(image), interpolate_pos_encoding=True)
        finally:
            handle.remove()
        keys = out[-1][0]  # [tokens, heads * head_dim]
        norms = keys.norm(dim=-1, keepdim=True)
        return (keys @ keys.T) / torch.clamp(norms @ norms.T, min=1e-8)

    def distance(self, source: ImageLike, edited: ImageLike) -> float:
        """Mean squared difference of the two self-similarity matrices."""
        return float(F.mse_loss(self.self_similarity(edited), self.self_similarity(source)))


_SQUEEZE_FIRES = {  # features index: (inputs, squeeze, expand) of each Fire module
    3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128),
    9: (256, 48, 192), 10: (384, 48, 192), 11: (384, 64, 256), 12: (512, 64, 256),
}  # fmt: skip
_LPIPS_TAPS = (1, 4, 7, 9, 10, 11, 12)  # the features index closing each of LPIPS' 7 slices
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class _Fire(nn.Module):
    def __init__(self, inputs: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inputs, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


def squeezenet_features() -> nn.Sequential:
    """torchvision's SqueezeNet 1.1 ``features`` (same indices, so its state dict loads)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, stride=2), nn.ReLU()]
    for index in range(2, 13):
        fire = _SQUEEZE_FIRES.get(index)
        layers.append(_Fire(*fire) if fire else nn.MaxPool2d(3, 2, ceil_mode=True))
    return nn.Sequential(*layers)


class SqueezeLpips(nn.Module):
    """LPIPS v0.1 (SqueezeNet) from a folder with ``squeezenet1_1.pth`` and ``squeeze.pth``.

    Raises:
        FileNotFoundError: a file is missing; the message names both.
    """

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        path = Path(folder).expanduser()
        files = [path / "squeezenet1_1.pth", path / "squeeze.pth"]
        if not all(f.is_file() for f in files):
            raise FileNotFoundError(
                f"{path} needs squeezenet1_1.pth (torchvision's SqueezeNet 1.1 weights) and "
                "squeeze.pth (the lpips package's v0.1 linear heads)"
            )
        self.features = squeezenet_features()
        backbone = torch.load(files[0], map_location="cpu", weights_only=True)
        self.features.load_state_dict(
            {k.removeprefix("features."): v for k, v in backbone.items() if "features." in k}
        )
        heads = torch.load(files[1], map_location="cpu", weights_only=True)
        self.heads = [heads[f"lin{i}.model.1.weight"].float() for i in range(len(_LPIPS_TAPS))]
        self.eval()

    @torch.no_grad()
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """LPIPS of ``[n, 3, H, W]`` images in ``[-1, 1]``: ``[n]``."""
        shift, scale = (torch.tensor(v).view(1, 3, 1, 1) for v in (_LPIPS_SHIFT, _LPIPS_SCALE))
        x, y = (a - shift) / scale, (b - shift) / scale
        total = torch.zeros(a.shape[0])
        taps = iter(zip(_LPIPS_TAPS, self.heads, strict=True))
        tap, head = next(taps)
        for index, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if index == tap:
                fx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                fy = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total += F.conv2d((fx - fy) ** 2, head).mean((1, 2, 3))
                tap, head = next(taps, (-1, head))
        return total

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS of two masked float ``[H, W, 3]`` images in ``[0, 1]``."""
        x, y = (torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1)[None] for v in (a, b))
        return float(self(x * 2 - 1, y * 2 - 1)[0])


class PieScorer:
    """Every PIE-Bench metric of one edit; a metric without its folder is missing.

    Args:
        dino: DINO ViT-B/8 folder (structure distance), or ``None``.
        clip: CLIP ViT-L/14 folder (CLIP scores), or ``None``.
        lpips: LPIPS SqueezeNet folder (see :class:`SqueezeLpips`), or ``None``.
        structure_scale: ``"reference"`` or ``"unit"`` (see :class:`StructureDistance`).
        device: where the models run.
    """

    def __init__(
        self,
        dino: str | Path | None = None,
        clip: str | Path | None = None,
        lpips: str | Path | None = None,
        structure_scale: str = "reference",
        device: str = "cpu",
    ) -> None:
        self.dino = StructureDistance(dino, structure_scale, device=device) if dino else None
        self.clip = ClipMetrics(clip, device) if clip else None
        self.lpips = SqueezeLpips(lpips) if lpips else None
        self.missing: dict[str, str] = {}
        for names, model, flag in (
            (("structure_distance",), self.dino, "--dino"),
            (("lpips_unedit_part",), self.lpips, "--lpips"),
            (CLIP_COLUMNS, self.clip, "--clip"),
        ):
            if model is None:
                self.missing.update(dict.fromkeys(names, f"no {flag} folder given"))

    def score(
        self, source: ImageLike, edited: ImageLike, mask: np.ndarray, prompts: tuple[str, str]
    ) -> dict[str, float | None]:
        """The reference's default metrics of one edit (``None``: missing; NaN: empty region).

        Args:
            source, edited: the original image and the edit, one size.
            mask: ``[H, W]``, 1 = edit region (:func:`~editing.bench.pie_metrics.decode_mask`).
            prompts: ``(original_prompt, editing_prompt)`` without brackets.
        """
        row: dict[str, Any] = dict.fromkeys(self.missing)
        if self.dino is not None:
            row["structure_distance"] = self.dino.distance(source, edited)
        row.update(region_metrics(source, edited, mask, "unedit"))
        if self.lpips is not None:
            background = 1 - np.asarray(mask, np.float64)
            row["lpips_unedit_part"] = (
                math.nan
                if background.sum() == 0
                else self.lpips.distance(masked(source, background), masked(edited, background))
            )
        if self.clip is not None:
            row.update(self._clip(source, edited, mask, prompts))
        return row

    def _clip(
        self, source: ImageLike, edited: ImageLike, mask: np.ndarray, prompts: tuple[str, str]
    ) -> dict[str, float]:
        assert self.clip is not None
        region = np.asarray(mask, np.float64)
        inside = (to_array(edited) * region[..., None]).astype(np.uint8)  # truncates, as np.uint8
        whole = self.clip.score([source, edited], list(prompts))
        edit_part = math.nan if region.sum() == 0 else self.clip.score([inside], [prompts[1]])[0]
        return dict(zip(CLIP_COLUMNS, (whole[0], whole[1], edit_part), strict=True))


CLIP_COLUMNS = (
    "clip_similarity_source_image",
    "clip_similarity_target_image",
    "clip_similarity_target_image_edit_part",
)
METRIC_COLUMNS = (
    "structure_distance",
    "psnr_unedit_part",
    "lpips_unedit_part",
    "mse_unedit_part",
    "ssim_unedit_part",
    *CLIP_COLUMNS,
)
"""The reference's default metrics (``evaluate.py --metrics``), in its order."""

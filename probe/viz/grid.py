"""Side-by-side image grids with captions (PIL only, no plotting state)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw


def side_by_side(
    images: Sequence[Image.Image], labels: Sequence[str], scale: int = 2
) -> Image.Image:
    """Images in one row, each upscaled ``scale``× (nearest) with its caption below."""
    w, h = images[0].size
    w, h = w * scale, h * scale
    caption = 28
    grid = Image.new("RGB", (w * len(images), h + caption), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        grid.paste(image.resize((w, h), Image.Resampling.NEAREST), (i * w, 0))
        text = "\n".join(textwrap.wrap(label, max(8, w // 6))[:2])
        draw.text((i * w + 3, h + 2), text, fill="black")
    return grid

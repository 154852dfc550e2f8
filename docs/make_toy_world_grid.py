"""Draw docs/images/toy_world_grid.png: every toy category in every palette colour.

Rows are the 11 categories, columns the 10 colours; the background alternates park / street in
a checkerboard, so every category and every colour appears on both. Layouts are random but fixed
by the seed. Run from the repository root::

    python docs/make_toy_world_grid.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from probe.toy.world.world import (
    BACKGROUNDS,
    CATEGORIES,
    PALETTE,
    Scene,
    random_layout,
    render_scene,
)

CELL = 128  # each 64x64 render is shown at 2x
LEFT, TOP = 70, 22


def make_grid(seed: int = 0) -> Image.Image:
    """The grid as a PIL image, ``(LEFT + 10 * CELL) x (TOP + 11 * CELL)`` pixels."""
    rng = np.random.default_rng(seed)
    colours, backgrounds = list(PALETTE), list(BACKGROUNDS)
    grid = Image.new("RGB", (LEFT + len(colours) * CELL, TOP + len(CATEGORIES) * CELL), "white")
    draw = ImageDraw.Draw(grid)
    for col, colour in enumerate(colours):
        draw.text((LEFT + col * CELL + CELL // 2, TOP // 2), colour, fill="black", anchor="mm")
    for row, category in enumerate(CATEGORIES):
        y = TOP + row * CELL
        draw.text((LEFT - 6, y + CELL // 2), category, fill="black", anchor="rm")
        for col, colour in enumerate(colours):
            background = backgrounds[(row + col) % len(backgrounds)]
            scene = random_layout(rng, Scene(category, colour, background, seed=row * 100 + col))
            tile = Image.fromarray(render_scene(scene).image).resize(
                (CELL, CELL), Image.Resampling.NEAREST
            )
            grid.paste(tile, (LEFT + col * CELL, y))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/images/toy_world_grid.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(args.seed).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

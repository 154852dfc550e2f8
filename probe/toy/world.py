"""The toy world: coloured cars and animal silhouettes in a park or on a street.

Every scene is drawn from a few numbers (category, colour, background, position, scale, flip,
seed), so its labels and object mask are known exactly. Shapes are unions of ellipses, limbs and
polygons in a local frame (x to the right, y down, the ground at y = 1), with holes for windows,
stripes and spots; they are rasterised at 4× and box-filtered down, so edges are anti-aliased.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from probe.prompts.templates import shared_lists

ANIMALS = (
    "dog",
    "giraffe",
    "horse",
    "lion",
    "rabbit",
    "sheep",
    "cat",
    "monkey",
    "leopard",
    "tiger",
)
CATEGORIES = ("car", *ANIMALS)

# Saturated object colours, far from each other and from the muted background colours.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 170, 40),
    "blue": (30, 50, 220),
    "yellow": (245, 220, 20),
    "orange": (250, 135, 0),
    "purple": (135, 35, 175),
    "pink": (250, 120, 200),
    "cyan": (0, 210, 225),
    "brown": (125, 70, 25),
    "black": (15, 15, 15),
}

# Each background: (top colour, bottom colour, horizon as a fraction of the height).
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], float]] = {
    "park": ((190, 210, 230), (135, 170, 110), 0.45),
    "street": ((210, 195, 170), (120, 120, 128), 0.55),
}
BACKGROUND_WORDS = {"park": "park", "street": "street"}

Prim = tuple[Any, ...]
_ELL, _LIMB, _POLY = "ell", "limb", "poly"


def _limbs(xs: tuple[float, ...], top: float, width: float) -> list[Prim]:
    return [(_LIMB, [(x, top), (x, 1.0)], width) for x in xs]


# Shapes in a local frame facing right; entries with hole=True are cut out of the mask.
SHAPES: dict[str, list[Prim]] = {
    "car": [
        (_POLY, [(-1.0, 0.05), (1.0, 0.05), (1.0, 0.62), (-1.0, 0.62)]),
        (_POLY, [(-0.6, 0.1), (-0.38, -0.38), (0.38, -0.38), (0.65, 0.1)]),
        (_ELL, -0.58, 0.7, 0.28, 0.28, 0),
        (_ELL, 0.58, 0.7, 0.28, 0.28, 0),
        (_POLY, [(-0.45, 0.02), (-0.3, -0.27), (-0.04, -0.27), (-0.04, 0.02)], True),
        (_POLY, [(0.06, 0.02), (0.06, -0.27), (0.3, -0.27), (0.48, 0.02)], True),
        (_ELL, -0.58, 0.7, 0.1, 0.1, 0, True),
        (_ELL, 0.58, 0.7, 0.1, 0.1, 0, True),
    ],
    "dog": [
        (_ELL, 0.0, 0.15, 0.6, 0.27, 0),
        *_limbs((-0.48, -0.3, 0.3, 0.48), 0.2, 0.13),
        (_ELL, 0.72, -0.22, 0.23, 0.21, 0),
        (_ELL, 0.97, -0.14, 0.17, 0.1, 0),
        (_ELL, 0.6, -0.08, 0.08, 0.2, 15),
        (_LIMB, [(-0.55, 0.05), (-0.8, -0.35)], 0.09),
    ],
    "giraffe": [
        (_ELL, -0.2, -0.05, 0.45, 0.22, 0),
        *_limbs((-0.52, -0.36, 0.0, 0.14), 0.0, 0.12),
        (_LIMB, [(0.12, -0.1), (0.55, -1.0)], 0.16),
        (_ELL, 0.7, -0.98, 0.2, 0.08, 20),
        (_LIMB, [(0.5, -1.05), (0.48, -1.25)], 0.05),
        (_LIMB, [(-0.62, -0.1), (-0.75, 0.3)], 0.05),
    ],
    "horse": [
        (_ELL, 0.0, -0.05, 0.6, 0.25, 0),
        *_limbs((-0.45, -0.3, 0.33, 0.48), 0.1, 0.13),
        (_LIMB, [(0.42, -0.15), (0.7, -0.62)], 0.22),
        (_ELL, 0.85, -0.52, 0.27, 0.1, 40),
        (_LIMB, [(-0.6, -0.12), (-0.82, 0.45)], 0.1),
    ],
    "lion": [
        (_ELL, -0.1, 0.25, 0.6, 0.25, 0),
        *_limbs((-0.5, -0.32, 0.2, 0.36), 0.3, 0.14),
        (_ELL, 0.55, -0.05, 0.44, 0.44, 0),
        (_ELL, 0.85, 0.02, 0.16, 0.12, 0),
        (_LIMB, [(-0.7, 0.2), (-1.0, 0.55)], 0.06),
        (_ELL, -1.02, 0.6, 0.09, 0.09, 0),
    ],
    "rabbit": [
        (_ELL, 0.0, 0.55, 0.45, 0.42, 0),
        (_ELL, 0.38, 0.0, 0.26, 0.24, 0),
        (_ELL, 0.28, -0.58, 0.08, 0.38, -8),
        (_ELL, 0.47, -0.55, 0.08, 0.36, 12),
        (_ELL, -0.48, 0.5, 0.13, 0.13, 0),
        (_ELL, 0.12, 0.94, 0.32, 0.07, 0),
    ],
    "sheep": [
        *[
            (_ELL, 0.62 * math.cos(a), 0.05 + 0.32 * math.sin(a), 0.2, 0.2, 0)
            for a in np.linspace(0, 2 * math.pi, 12, endpoint=False)
        ],
        (_ELL, 0.0, 0.05, 0.62, 0.34, 0),
        (_ELL, 0.85, -0.05, 0.2, 0.14, -20),
        *_limbs((-0.4, -0.22, 0.25, 0.42), 0.35, 0.08),
    ],
    "cat": [
        (_ELL, -0.05, 0.45, 0.35, 0.52, 0),
        (_ELL, 0.15, -0.3, 0.26, 0.24, 0),
        (_POLY, [(-0.05, -0.4), (0.0, -0.78), (0.16, -0.5)]),
        (_POLY, [(0.2, -0.5), (0.36, -0.78), (0.38, -0.38)]),
        (_LIMB, [(-0.35, 0.85), (-0.75, 0.7), (-0.85, 0.25), (-0.7, -0.05)], 0.09),
    ],
    "monkey": [
        (_ELL, 0.0, 0.2, 0.3, 0.4, 0),
        (_ELL, 0.0, -0.45, 0.23, 0.22, 0),
        (_ELL, -0.26, -0.45, 0.09, 0.09, 0),
        (_ELL, 0.26, -0.45, 0.09, 0.09, 0),
        (_LIMB, [(0.22, -0.05), (0.55, -0.35), (0.62, -0.8)], 0.09),
        (_LIMB, [(-0.22, -0.05), (-0.5, 0.3), (-0.45, 0.6)], 0.09),
        (_LIMB, [(0.15, 0.5), (0.3, 0.75), (0.22, 1.0)], 0.1),
        (_LIMB, [(-0.15, 0.5), (-0.3, 0.75), (-0.22, 1.0)], 0.1),
        (_LIMB, [(-0.2, 0.5), (-0.7, 0.7), (-0.9, 0.4), (-0.75, 0.15), (-0.6, 0.3)], 0.06),
        (_ELL, 0.0, -0.4, 0.12, 0.08, 0, True),
    ],
    "leopard": [
        (_ELL, 0.0, 0.25, 0.75, 0.19, 0),
        *_limbs((-0.58, -0.42, 0.42, 0.58), 0.3, 0.1),
        (_ELL, 0.88, 0.08, 0.19, 0.14, 0),
        (_LIMB, [(-0.72, 0.2), (-1.0, 0.4), (-1.02, 0.75), (-0.85, 0.88)], 0.06),
        *[
            (_ELL, x, y, 0.055, 0.055, 0, True)
            for x, y in [(-0.5, 0.2), (-0.25, 0.3), (0.0, 0.18), (0.25, 0.3), (0.5, 0.2)]
        ],
    ],
    "tiger": [
        (_ELL, 0.0, 0.05, 0.7, 0.3, 0),
        *_limbs((-0.5, -0.3, 0.3, 0.5), 0.2, 0.16),
        (_ELL, 0.8, -0.12, 0.25, 0.24, 0),
        (_ELL, 0.72, -0.35, 0.08, 0.08, 0),
        (_ELL, 0.92, -0.33, 0.08, 0.08, 0),
        (_LIMB, [(-0.68, 0.0), (-0.95, 0.25), (-1.0, 0.55)], 0.08),
        *[
            (_POLY, [(x, -0.2), (x + 0.07, -0.2), (x + 0.02, 0.25), (x - 0.05, 0.25)], True)
            for x in (-0.45, -0.2, 0.05, 0.3)
        ],
    ],
}


@dataclass(frozen=True)
class Scene:
    """One toy scene. Position is the object's centre in image fractions; scale its longer side."""

    category: str = "car"
    colour: str = "red"
    background: str = "park"
    x: float = 0.5
    y: float = 0.6
    scale: float = 0.6
    flip: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}; one of {', '.join(CATEGORIES)}")
        if self.colour not in PALETTE:
            raise ValueError(f"unknown colour {self.colour!r}; one of {', '.join(PALETTE)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(
                f"unknown background {self.background!r}; one of {', '.join(BACKGROUNDS)}"
            )

    @property
    def labels(self) -> dict[str, str]:
        return {"category": self.category, "colour": self.colour, "background": self.background}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Render:
    """A drawn scene: ``image`` uint8 [H, W, 3], ``mask`` bool [H, W], and its scene."""

    image: np.ndarray
    mask: np.ndarray
    scene: Scene

    @property
    def labels(self) -> dict[str, str]:
        return self.scene.labels


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    a = math.radians(angle)
    x, y = rx * np.cos(t), ry * np.sin(t)
    return list(
        zip(
            cx + x * math.cos(a) - y * math.sin(a),
            cy + x * math.sin(a) + y * math.cos(a),
            strict=True,
        )
    )


def _limb(points: list[tuple[float, float]], width: float) -> list[list[tuple[float, float]]]:
    polys = [_ellipse(x, y, width / 2, width / 2, 0) for x, y in points]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        dx, dy = x1 - x0, y1 - y0
        n = math.hypot(dx, dy) or 1.0
        ox, oy = -dy / n * width / 2, dx / n * width / 2
        polys.append(
            [(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)]
        )
    return polys


@cache
def shape_polygons(
    category: str,
) -> tuple[list[list[tuple[float, float]]], list[list[tuple[float, float]]]]:
    """The category's filled polygons and hole polygons in the local frame."""
    fills: list[list[tuple[float, float]]] = []
    holes: list[list[tuple[float, float]]] = []
    for prim in SHAPES[category]:
        kind = prim[0]
        if kind == _ELL:
            polys, hole = [_ellipse(*prim[1:6])], len(prim) > 6 and prim[6]
        elif kind == _LIMB:
            polys, hole = _limb(prim[1], prim[2]), False
        else:
            polys, hole = [list(prim[1])], len(prim) > 2 and prim[2]
        (holes if hole else fills).extend(polys)
    return fills, holes


def _background(name: str, size: int) -> np.ndarray:
    top, bottom, horizon = BACKGROUNDS[name]
    img = np.empty((size, size, 3), np.float32)
    rows = np.arange(size) < round(horizon * size)
    img[rows], img[~rows] = top, bottom
    return img


def render_scene(scene: Scene, size: int = 64) -> Render:
    """Draw a scene: the image, the object mask and the labels. Deterministic for a scene."""
    fills, holes = shape_polygons(scene.category)
    pts = np.concatenate([np.asarray(p) for p in fills])
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    ss = 4 * size
    k = scene.scale * ss / max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    sign = -1.0 if scene.flip else 1.0

    def place(poly: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(scene.x * ss + sign * (u - cx) * k, scene.y * ss + (v - cy) * k) for u, v in poly]

    canvas = Image.new("L", (ss, ss), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in fills:
        draw.polygon(place(poly), fill=255)
    for poly in holes:
        draw.polygon(place(poly), fill=0)
    alpha = (
        np.asarray(canvas.resize((size, size), Image.Resampling.BOX), np.float32)[..., None] / 255
    )
    colour = np.asarray(PALETTE[scene.colour], np.float32)
    image = alpha * colour + (1 - alpha) * _background(scene.background, size)
    return Render(np.clip(image.round(), 0, 255).astype(np.uint8), alpha[..., 0] > 0.5, scene)


def random_layout(rng: np.random.Generator, scene: Scene) -> Scene:
    """Random position, scale and flip for a scene, the object standing on the ground."""
    scale = float(rng.uniform(0.6, 0.85))
    half = scale / 2
    x = float(rng.uniform(half, 1 - half))
    y = float(rng.uniform(0.5, 0.62))
    return replace(scene, x=x, y=y, scale=scale, flip=bool(rng.integers(2)))


def _words(prompt: str) -> list[str]:
    return re.findall(r"[a-z]+", prompt.lower())


def scene_for_prompt(prompt: str, seed: int = 0) -> Scene:
    """The scene a prompt describes; what it leaves open (colour, background, layout) is drawn
    from ``seed``. Raises ValueError if the prompt names no category."""
    words = _words(prompt)
    rng = np.random.default_rng(seed)
    category = next((w for w in words if w in CATEGORIES), None)
    if category is None:
        raise ValueError(f"prompt {prompt!r} names no toy category ({', '.join(CATEGORIES)})")
    colour = next((w for w in words if w in PALETTE), None) or str(rng.choice(list(PALETTE)))
    background = next((b for b, w in BACKGROUND_WORDS.items() if w in words), None)
    background = background or str(rng.choice(list(BACKGROUNDS)))
    scene = Scene(category, colour, background, seed=seed)
    return random_layout(rng, scene)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption for a scene, in the sentence forms of the templates.

    The colour is left out sometimes (as in "a dog standing in the park"); the park is named
    only when the scene is in it, so "in the park" means the park background.
    """
    name_colour = scene.category == "car" or rng.random() < 0.7
    noun = f"{scene.colour} {scene.category}" if name_colour else scene.category
    if scene.background == "park" and (scene.category != "car" or rng.random() < 0.5):
        return f"a {noun} standing in the park"
    if scene.background == "street" and rng.random() < 0.3:
        return f"a {noun} in the street"
    return f"a {noun}"


def random_scene(rng: np.random.Generator) -> tuple[str, Scene]:
    """A random scene of the world and a caption that describes it."""
    category = str(rng.choice(CATEGORIES))
    colour = str(rng.choice(list(PALETTE)))
    background = str(rng.choice(list(BACKGROUNDS)))
    scene = random_layout(rng, Scene(category, colour, background, seed=int(rng.integers(2**31))))
    return caption(scene, rng), scene


def check_vocabulary() -> None:
    """The template lists and the world must agree: every colour drawable, every animal drawn."""
    lists = shared_lists()
    missing = [c for c in lists.get("colours", []) if c not in PALETTE]
    missing += [a for a in lists.get("animals", []) if a not in CATEGORIES]
    if missing:
        raise ValueError(
            f"data_templates/lists.yaml names words the toy world cannot draw: {missing}"
        )

"""The shapes of the toy world's categories: unions of ellipses, limbs and polygons.

Each shape lives in a local frame facing right (x to the right, y down, the ground at y = 1);
entries marked as holes are cut out of the mask (windows, stripes, spots).

    fills, holes = shape_polygons("giraffe")   # lists of polygons in the local frame
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from typing import Any

import numpy as np

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

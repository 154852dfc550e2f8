"""Judges for toy-world images: where is the object, what colour, what category, same shape?

A generated image is a blurry, noisy, slightly colour-shifted version of a render (see
``probe.toy.world.world``). The judges read it back into labels, in the image's toy world
(``world``: a :class:`~probe.toy.world.world.World` or its name, default the shipped toy's,
:data:`~probe.toy.world.world.DEFAULT_WORLD`; :func:`~probe.toy.world.world.world_of` tells a
model's):

- :func:`~probe.toy.judges.masks.find_object`: the object's mask (:mod:`probe.toy.judges.masks`).
- :func:`judge_colour`: the nearest palette colour of the world to the median of the mask's
  inner pixels.
- :func:`~probe.toy.judges.category.judge_category`: a small CNN over the mask's silhouette
  (:mod:`probe.toy.judges.category`), trained by ``python -m probe.toy.training.train_judge``
  on degraded renders of the world; v1's weights ship in ``probe/toy/judges/weights_v1/``.
- :func:`mask_iou` and :func:`shape_distance` score structure between two masks.

Example:
    >>> from probe.toy.world.world import Scene, render_scene
    >>> j = judge(render_scene(Scene("dog", "blue")).image)
    >>> (j.found, j.colour, j.category)
    (True, 'blue', 'dog')
    >>> judge(render_scene(Scene("dog", "white", world="v2")).image, world="v2").colour
    'white'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from probe.toy.judges.category import WEIGHTS_DIR as WEIGHTS_DIR
from probe.toy.judges.category import CategoryNet as CategoryNet
from probe.toy.judges.category import judge_category as judge_category
from probe.toy.judges.category import judge_category_probs as judge_category_probs
from probe.toy.judges.category import load_category_net as load_category_net
from probe.toy.judges.masks import CROP_SIZE as CROP_SIZE
from probe.toy.judges.masks import MAX_AREA_FRACTION as MAX_AREA_FRACTION
from probe.toy.judges.masks import MIN_AREA_FRACTION as MIN_AREA_FRACTION
from probe.toy.judges.masks import MIN_BACKGROUND_SHARE as MIN_BACKGROUND_SHARE
from probe.toy.judges.masks import NoObjectError as NoObjectError
from probe.toy.judges.masks import WorldLike, checked_mask
from probe.toy.judges.masks import as_array as as_array
from probe.toy.judges.masks import find_object as find_object
from probe.toy.judges.masks import mask_iou as mask_iou
from probe.toy.judges.masks import object_alpha as object_alpha
from probe.toy.judges.masks import shape_distance as shape_distance
from probe.toy.judges.masks import silhouette_crop as silhouette_crop
from probe.toy.world.world import get_world


def _palette(world: WorldLike) -> tuple[list[str], np.ndarray]:
    """The world's colour names and their RGB ``[colours, 3]``."""
    palette = get_world(world).palette
    return list(palette), np.asarray(list(palette.values()), np.float32)


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


def object_colour(
    image: np.ndarray | Image.Image, mask: np.ndarray | None = None, world: WorldLike = None
) -> np.ndarray:
    """Median RGB ``[3]`` of the mask's inner pixels (the edge ring is left out if enough remain).

    Raises:
        NoObjectError: the mask is empty.
    """
    img = as_array(image)
    mask = checked_mask(img, mask, world)
    inner = ndimage.binary_erosion(mask)
    if inner.sum() >= max(4, 0.2 * mask.sum()):
        mask = inner
    return np.median(img[mask], axis=0)


def judge_colour(
    image: np.ndarray | Image.Image, mask: np.ndarray | None = None, world: WorldLike = None
) -> str:
    """The palette colour of the object: nearest to the median of its inner pixels.

    Args:
        image: RGB image (see :func:`find_object`).
        mask: the object's pixels; found with :func:`find_object` if None.
        world: the toy world whose palette names the colour (default: the shipped toy's).

    Raises:
        NoObjectError: no object (empty mask).

    Example:
        >>> judge_colour(render_scene(Scene("car", "green")).image)
        'green'
    """
    rgb = object_colour(image, mask, world)
    names, values = _palette(world)
    return names[int(np.argmin(np.linalg.norm(values - rgb, axis=-1)))]


def colour_shift(
    image: np.ndarray | Image.Image,
    source: str,
    target: str,
    mask: np.ndarray | None = None,
    world: WorldLike = None,
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
    palette = get_world(world).palette
    for name in (source, target):
        if name not in palette:
            raise ValueError(f"{name!r} is not a toy-world colour: {', '.join(palette)}")
    if source == target:
        raise ValueError(f"source and target are both {source!r}: a shift needs two colours")
    rgb = object_colour(image, mask, world)
    s, t = np.array(palette[source], float), np.array(palette[target], float)
    return float(np.dot(rgb - t, s - t) / np.dot(s - t, s - t))


def judge(image: np.ndarray | Image.Image, world: WorldLike = None) -> Judgement:
    """Find the object and name its colour and category; never raises for an empty scene.

    Args:
        image: RGB image (see :func:`find_object`).
        world: the image's toy world (default: the shipped toy's; a model's: ``world_of(pipe)``).

    Returns:
        A :class:`Judgement`; ``found=False`` (colour and category None) if no object is found.

    Example:
        >>> j = judge(render_scene(Scene("horse", "purple", "street")).image)
        >>> j.colour, j.category, j.confidence > 0.5
        ('purple', 'horse', True)
    """
    img = as_array(image)
    mask = find_object(img, world)
    if not mask.any():
        return Judgement(False, None, None, 0.0, float("nan"), 0, mask)
    rgb = object_colour(img, mask, world)
    names, values = _palette(world)
    dists = np.linalg.norm(values - rgb, axis=-1)
    probs = judge_category_probs(img, mask, world)
    category = max(probs, key=probs.__getitem__)
    return Judgement(
        found=True,
        colour=names[int(np.argmin(dists))],
        category=category,
        confidence=float(probs[category]),
        colour_distance=float(dists.min()),
        area=int(mask.sum()),
        mask=mask,
    )

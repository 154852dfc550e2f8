"""The toy world: coloured cars and animal silhouettes in a park or on a street.

Every scene is drawn from a few numbers (category, colour, background, position, scale, flip,
seed), so its labels and object mask are known exactly. Shapes (:mod:`probe.toy.world.shapes`) are
rasterised at 4× and box-filtered down, so edges are anti-aliased.

The world comes in versions (:data:`WORLDS`), each a :class:`World`: its palette, its two
backgrounds, its categories and where its category judge's weights live. ``v1`` (ten colours)
is the world of the shipped toy model; ``v2`` has sixteen colours (white and grey among them)
on backgrounds moved away from every one of them. A model folder names its world in
``attnprobe.json`` (key ``world``; absent means ``v1``)::

    from probe.toy.world.world import Scene, get_world, render_scene
    render_scene(Scene("car", "white", world="v2"))     # v2 draws white; v1 refuses it
    get_world("v2").colours                             # ('red', ..., 'magenta')
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from probe.prompts.templates import shared_lists
from probe.toy.weight_folders import JUDGE_FOLDERS
from probe.toy.world.shapes import ANIMALS as ANIMALS
from probe.toy.world.shapes import CATEGORIES as CATEGORIES
from probe.toy.world.shapes import SHAPES as SHAPES
from probe.toy.world.shapes import shape_polygons as shape_polygons

RGB = tuple[int, int, int]
Background = tuple[RGB, RGB, float]  # (top colour, bottom colour, horizon as a height fraction)

# v1: saturated object colours, far from each other and from the muted background colours.
PALETTE: dict[str, RGB] = {
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
BACKGROUNDS: dict[str, Background] = {
    "park": ((190, 210, 230), (135, 170, 110), 0.45),
    "street": ((210, 195, 170), (120, 120, 128), 0.55),
}
BACKGROUND_WORDS = {"park": "park", "street": "street"}

# v2: v1's ten colours unchanged plus six; every pair at least 87 apart in RGB (yellow-orange,
# as in v1). v1's backgrounds would hide the new ones (grey sits 31 from v1's road, white 75
# from its sky), so v2's backgrounds are the points of the RGB cube farthest from all sixteen
# near v1's hues: each background colour is at least 88 from every object colour.
PALETTE_V2: dict[str, RGB] = {
    **PALETTE,
    "white": (250, 250, 250),
    "grey": (140, 140, 140),
    "lime": (160, 245, 60),
    "teal": (0, 120, 120),
    "navy": (20, 25, 120),
    "magenta": (230, 0, 230),
}
BACKGROUNDS_V2: dict[str, Background] = {
    "park": ((130, 200, 255), (80, 210, 105), 0.45),
    "street": ((255, 235, 135), (80, 90, 100), 0.55),
}


@dataclass(frozen=True, eq=False)
class World:
    """One version of the toy world.

    Attributes:
        name: ``"v1"``, ``"v2"``.
        palette: colour name -> RGB of the objects.
        backgrounds: name -> (top RGB, bottom RGB, horizon fraction).
        categories: what can be drawn (the car and the paper's ten animals).
        judge_dir: the folder of its category judge (``category.safetensors``, ``.json``).
    """

    name: str
    palette: Mapping[str, RGB]
    backgrounds: Mapping[str, Background]
    judge_dir: Path
    categories: tuple[str, ...] = CATEGORIES

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(self.palette)

    def __repr__(self) -> str:
        return f"World({self.name!r}, {len(self.palette)} colours, judge {self.judge_dir})"

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        """Pickled by name and judge folder (its mappings are read-only views, which do not
        pickle): a sweep's scorer travels to worker processes with its model's world."""
        return _rebuilt_world, (self.name, str(self.judge_dir))


WORLDS: dict[str, World] = {
    "v1": World("v1", MappingProxyType(PALETTE), MappingProxyType(BACKGROUNDS),
                JUDGE_FOLDERS["v1"]),
    "v2": World("v2", MappingProxyType(PALETTE_V2), MappingProxyType(BACKGROUNDS_V2),
                JUDGE_FOLDERS["v2"]),
}  # fmt: skip


def _rebuilt_world(name: str, judge_dir: str) -> World:
    """The world ``name`` with its judge in ``judge_dir`` (how a :class:`World` unpickles)."""
    return replace(WORLDS[name], judge_dir=Path(judge_dir))


DEFAULT_WORLD = "v1"
"""The world of the shipped toy (``probe/toy/models/toy_v1``) and of
``data_templates/lists.yaml``."""


def get_world(world: World | str | None = None) -> World:
    """A world by name (``None``: :data:`DEFAULT_WORLD`); a :class:`World` is returned as is.

    Raises:
        ValueError: no world of that name.

    Example:
        >>> len(get_world("v2").palette)
        16
    """
    if isinstance(world, World):
        return world
    name = DEFAULT_WORLD if world is None else str(world)
    if name not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; the worlds are {', '.join(WORLDS)}")
    return WORLDS[name]


def world_of(pipe_or_folder: Any) -> World:
    """The world a toy model was trained on: ``world`` in its folder's ``attnprobe.json``
    (absent: ``v1``, the shipped toy's folder has none; a pipeline built in memory:
    :data:`DEFAULT_WORLD`). A model folder that holds its own judge (``judge/category.json``,
    written by training) judges with it.

    Example:
        >>> world_of(load_pipeline("toy")).name
        'v1'
    """
    folder = getattr(pipe_or_folder, "name_or_path", pipe_or_folder)
    if not folder or not Path(str(folder)).is_dir():
        return get_world()
    path = Path(str(folder)) / "attnprobe.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    world = get_world(saved.get("world", "v1"))
    own = Path(str(folder)) / "judge"
    return replace(world, judge_dir=own) if (own / "category.json").is_file() else world


@dataclass(frozen=True)
class Scene:
    """One toy scene. Position is the object's centre in image fractions; scale its longer side;
    ``world`` names the :class:`World` it is drawn in."""

    category: str = "car"
    colour: str = "red"
    background: str = "park"
    x: float = 0.5
    y: float = 0.6
    scale: float = 0.6
    flip: bool = False
    seed: int = 0
    world: str = DEFAULT_WORLD

    def __post_init__(self) -> None:
        world = get_world(self.world)
        if self.category not in world.categories:
            raise ValueError(
                f"unknown category {self.category!r}; one of {', '.join(world.categories)}"
            )
        if self.colour not in world.palette:
            raise ValueError(
                f"unknown colour {self.colour!r} in world {world.name}; one of "
                f"{', '.join(world.palette)}"
                + ("" if self.colour not in PALETTE_V2 else " (world v2 has it: world='v2')")
            )
        if self.background not in world.backgrounds:
            raise ValueError(
                f"unknown background {self.background!r}; one of {', '.join(world.backgrounds)}"
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


def _background(name: str, size: int, world: World | str | None = None) -> np.ndarray:
    top, bottom, horizon = get_world(world).backgrounds[name]
    img = np.empty((size, size, 3), np.float32)
    rows = np.arange(size) < round(horizon * size)
    img[rows], img[~rows] = top, bottom
    return img


def render_scene(scene: Scene, size: int = 64) -> Render:
    """Draw a scene in its world: the image, the object mask and the labels. Deterministic."""
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
    world = get_world(scene.world)
    colour = np.asarray(world.palette[scene.colour], np.float32)
    image = alpha * colour + (1 - alpha) * _background(scene.background, size, world)
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


def scene_for_prompt(prompt: str, seed: int = 0, world: World | str | None = None) -> Scene:
    """The scene a prompt describes in ``world`` (default :data:`DEFAULT_WORLD`); what it leaves
    open (colour, background, layout) is drawn from ``seed``. Raises ValueError if the prompt
    names no category."""
    w = get_world(world)
    words = _words(prompt)
    rng = np.random.default_rng(seed)
    category = next((x for x in words if x in w.categories), None)
    if category is None:
        raise ValueError(f"prompt {prompt!r} names no toy category ({', '.join(w.categories)})")
    colour = next((x for x in words if x in w.palette), None) or str(rng.choice(list(w.palette)))
    background = next((b for b, x in BACKGROUND_WORDS.items() if x in words), None)
    background = background or str(rng.choice(list(w.backgrounds)))
    scene = Scene(category, colour, background, seed=seed, world=w.name)
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


def caption_fits(text: str, scene: Scene) -> bool:
    """Whether a caption is true of a scene: every colour, category and background it names is
    the scene's (``"a dog standing in the park"`` fits a red dog in the park; ``""`` fits all).

    Example:
        >>> caption_fits("a dog", Scene("dog", "red"))
        True
    """
    world = get_world(scene.world)
    words = set(_words(text))
    named = [
        (words & set(world.palette), scene.colour),
        (words & set(world.categories), scene.category),
        ({b for b, x in BACKGROUND_WORDS.items() if x in words}, scene.background),
    ]
    return all(not said or said == {truth} for said, truth in named)


def random_scene(rng: np.random.Generator, world: World | str | None = None) -> tuple[str, Scene]:
    """A random scene of ``world`` (default :data:`DEFAULT_WORLD`) and a caption for it."""
    w = get_world(world)
    category = str(rng.choice(w.categories))
    colour = str(rng.choice(list(w.palette)))
    background = str(rng.choice(list(w.backgrounds)))
    scene = Scene(category, colour, background, seed=int(rng.integers(2**31)), world=w.name)
    scene = random_layout(rng, scene)
    return caption(scene, rng), scene


def lists_name(world: World | str | None = None) -> str | None:
    """The ``world`` argument of :func:`probe.prompts.templates.shared_lists` for a toy world:
    ``None`` (``lists.yaml``) for :data:`DEFAULT_WORLD`, else its name (``lists.v2.yaml``)."""
    w = get_world(world)
    return None if w.name == DEFAULT_WORLD else w.name


def check_vocabulary(world: World | str | None = None) -> None:
    """The template lists of a world and the world must agree: every colour drawable, every
    animal drawn.

    Raises:
        ValueError: a listed word the world cannot draw.
    """
    w = get_world(world)
    lists = shared_lists(lists_name(w))
    missing = [c for c in lists.get("colours", []) if c not in w.palette]
    missing += [a for a in lists.get("animals", []) if a not in w.categories]
    if missing:
        raise ValueError(
            f"the template lists of world {w.name} name words it cannot draw: {missing}"
        )

"""The explorer page: one self-contained HTML file (JavaScript and data inline, no server).

page = explorer_page(maps, image, title="a red car")
page.save("page.html")          # or, in Jupyter, the page itself as the cell's output
samples_page([SampleView(maps_a, image_a), SampleView(maps_b, image_b)], probe=results)
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps

from probe.probing.results import ProbeResults
from probe.viz.explorer.data import DEFAULT_MAX_BYTES, samples_data
from probe.viz.explorer.grids import probe_grid
from probe.viz.explorer.recording import RecordedMaps
from probe.viz.layout import as_image

COLOURMAP = "inferno"


@dataclass
class ExplorerPage:
    """An explorer page: its HTML, its size and what it left out.

    In Jupyter it shows itself inline (:meth:`_repr_html_`): an ``<iframe srcdoc=…>`` holding the
    very page :meth:`save` writes.
    """

    html: str
    left_out: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """The page's size in bytes (UTF-8)."""
        return len(self.html.encode("utf-8"))

    def __repr__(self) -> str:
        note = f", {len(self.left_out)} things left out" if self.left_out else ""
        return f"ExplorerPage({self.nbytes / 1e6:.2f} MB{note})"

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` (atomically) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.html, encoding="utf-8")
        tmp.replace(path)
        return path

    def _repr_html_(self) -> str:
        doc = html.escape(self.html, quote=True)
        return (
            f'<iframe srcdoc="{doc}" style="width: 100%; height: 880px; border: 0" '
            'title="attnprobe explorer"></iframe>'
        )


def explorer_page(
    maps: RecordedMaps,
    image: Any = None,
    sample: int = 0,
    title: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    probe: ProbeResults | None = None,
) -> ExplorerPage:
    """The interactive explorer of one recorded sample, as a self-contained HTML page.

    Tokens (hover or click: their cross-attention over the image), sliders for the layer and the
    step (at 0: the mean over all), a click on the image: that pixel's self-attention row (or its
    rank-K reconstruction and the components, for ``svd:K`` recordings). Several samples of a
    dataset on one page, with a sample selector: :func:`samples_page`.

    Args:
        maps: the recording.
        image: the generated image (PIL or ``[H, W, 3]``); ``None`` draws on grey.
        sample: which recorded sample.
        title: the page's heading (default: the sample's prompt, read from its tokens).
        max_bytes: the page's size budget; what does not fit is named on the page and in
            :attr:`ExplorerPage.left_out`.
        probe: the dataset's probe results: the page adds their accuracy grid (layers × steps
            per kind), a click on a cell sets the layer and step sliders to it.

    Returns:
        The :class:`ExplorerPage`.

    Raises:
        ValueError: ``sample`` was not recorded, or the recording has neither cross nor self maps.

    Example:
        >>> with record_attention(pipe) as maps:
        ...     image = pipe("a red car").images[0]
        >>> explorer_page(maps, image).save("explorer.html")
    """
    return samples_page([SampleView(maps, image, sample)], title, max_bytes, probe)


@dataclass
class SampleView:
    """One recorded sample as the page shows it: the recording and which of its samples, the
    image, a caption for the sample selector and the token to show first (default: the
    prompt's last word)."""

    maps: RecordedMaps
    image: Any = None
    sample: int = 0
    caption: str = ""
    token: int | None = None


def samples_page(
    views: Sequence[SampleView],
    title: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    probe: ProbeResults | None = None,
) -> ExplorerPage:
    """The explorer of several recorded samples (a dataset's), one page: a sample selector
    chooses whose maps and image are drawn; the layer, the step and a probe-grid cell stay
    as they are when it changes, and a grid click keeps the chosen sample.

    Args:
        views: the samples, the first shown first; they share one set of layers and steps.
        title: the page's heading (default: the first sample's prompt).
        max_bytes: the page's size budget, shared equally by the samples.
        probe: the dataset's probe results (see :func:`explorer_page`).

    Returns:
        The :class:`ExplorerPage`.

    Raises:
        ValueError: no views, a sample that was not recorded, or a recording with neither
            cross nor self maps.

    Example:
        >>> ds = AttentionDataset("runs/colour")
        >>> views = [SampleView(ds.load(i), caption=ds.entries[i]["prompt"]) for i in (0, 5)]
        >>> samples_page(views, probe=ProbeResults.from_csv("runs/colour/probe/results.csv"))
    """
    if not views:
        raise ValueError("no samples to show: pass at least one SampleView")
    first, aspect = _image_src(views[0].image, views[0].maps.latent_hw)
    picture = f'<img id="picture" alt="the generated image" src="{first}">' if first else ""
    images = [None] + [_image_src(v.image, v.maps.latent_hw)[0] for v in views[1:]]
    reserved = len(picture) + sum(len(uri or "") for uri in images)
    data = samples_data([(v.maps, v.sample) for v in views], max_bytes, reserved)
    for view, entry, uri in zip(views, data["samples"], images, strict=True):
        entry.update(caption=view.caption, token=view.token, image=uri)
    data["lut"] = _lut(COLOURMAP)
    data["probe"] = probe_grid(probe) if probe is not None and len(probe) else None
    if data["self_mode"] == "svd":
        maps = views[0].maps
        data["svd_k"] = int(maps.svd(maps.recorded_layers("self")[0], maps.steps[0])[1].shape[-1])
    title = title or _prompt(data["samples"][0]["tokens"]) or "attention explorer"
    page = fill_page("explorer.html", "explorer.js", title, data, ASPECT=aspect, IMAGE=picture)
    return ExplorerPage(page, list(data["left_out"]))


def fill_page(body: str, script: str, title: str, data: dict[str, Any], **slots: str) -> str:
    """A whole page: ``shell.html`` (head, heading, notes, data and script) around the body
    partial ``body``, with the CSS, the script ``script``, ``slots`` (``ASPECT="1 / 1"`` fills
    ``__ASPECT__``) and, last, ``data`` as JSON.

    Example:
        >>> fill_page("sweep.html", "grids.js", "sweep runs/s", {"left_out": []})
    """
    asset = files("probe.viz.explorer")
    page = (
        asset.joinpath("shell.html")
        .read_text(encoding="utf-8")
        .replace("__BODY__\n", asset.joinpath(body).read_text(encoding="utf-8"))
    )
    page = (
        page.replace("__CSS__", asset.joinpath("explorer.css").read_text(encoding="utf-8"))
        .replace("__JS__", asset.joinpath(script).read_text(encoding="utf-8"))
        .replace("__TITLE__", html.escape(f"attnprobe · {title}"))
    )
    for name, value in slots.items():
        page = page.replace(f"__{name}__", value)
    return page.replace("__DATA__", json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))


def _image_src(image: Any, latent_hw: tuple[int, int]) -> tuple[str | None, str]:
    """The image as an inline PNG data URI (``None`` for no image), and the stage's CSS aspect
    ratio."""
    if image is None:
        return None, f"{latent_hw[1]} / {latent_hw[0]}"
    from PIL import Image

    pixels = as_image(image)
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    src = base64.b64encode(buffer.getvalue()).decode("ascii")
    h, w = pixels.shape[:2]
    return f"data:image/png;base64,{src}", f"{w} / {h}"


def _lut(name: str) -> str:
    """The colour map as 256 RGB triples, base64 (the page's ``LUT``)."""
    rgb = (colormaps[name](np.arange(256))[:, :3] * 255).round().astype(np.uint8)
    return base64.b64encode(rgb.tobytes()).decode("ascii")


def lut_colours(name: str = COLOURMAP) -> np.ndarray:
    """``[256, 3]`` uint8: the colours the page draws value index ``0..255`` with."""
    return np.frombuffer(base64.b64decode(_lut(name)), dtype=np.uint8).reshape(256, 3)


def _prompt(tokens: list[str]) -> str:
    return " ".join(t for t in tokens if not (t.startswith("<") and t.endswith(">")))

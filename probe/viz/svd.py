"""Self-attention SVD components: the paper's Figure 3.

A self-attention map ``[q, q]`` says where each position of the latent grid looks. Its top
singular vectors, reshaped to the layer's grid, show the layout it encodes: the object, the
ground, the sky separate into components. As in Prompt-to-Prompt's ``show_self_attention_comp``,
each row is centred before the SVD (so the first component is not just the mean attention), and
the right singular vectors (over keys) are drawn.

    comps = svd_components(maps[13, 10, "self"][0], maps.resolution(13), k=6)   # [6, h, w]
    self_attention_components(maps, layer=13, step=10, image=image).savefig("svd.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from probe.recording.maps import AttentionMaps, tensor_name
from probe.viz.layout import as_image, panels


def svd_components(
    attention: Tensor, hw: tuple[int, int], k: int = 6, center: bool = True
) -> tuple[Tensor, Tensor]:
    """Top-``k`` components of a self-attention map, as images on the layer's grid.

    Args:
        attention: ``[q, q]`` or ``[heads, q, q]`` (heads are averaged), ``q = h * w``.
        hw: the layer's query grid (height, width).
        k: number of components.
        center: subtract each row's mean before the SVD (Prompt-to-Prompt's convention).

    Returns:
        ``components [k, h, w]`` (right singular vectors, largest entry positive) and the
        singular values ``[k]``.

    Raises:
        ValueError: the map's size does not match ``hw``.

    Example:
        >>> comps, s = svd_components(maps[13, 10, "self"][0], maps.resolution(13), k=6)
        >>> comps.shape
        torch.Size([6, 16, 16])
    """
    m = attention.float()
    if m.ndim == 3:
        m = m.mean(0)
    h, w = hw
    if m.ndim != 2 or m.shape != (h * w, h * w):
        raise ValueError(
            f"self-attention of shape {tuple(attention.shape)} does not fit a {h}x{w} grid "
            f"(expected [{h * w}, {h * w}] or [heads, {h * w}, {h * w}])"
        )
    if center:
        m = m - m.mean(dim=1, keepdim=True)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(k, vh.shape[0])
    comps = vh[:k]
    idx = comps.abs().argmax(dim=1, keepdim=True)
    comps = comps * torch.sign(torch.gather(comps, 1, idx))
    return comps.reshape(k, h, w), s[:k]


def layer_components(
    maps: AttentionMaps, layer: int, step: int, sample: int = 0, k: int = 6
) -> tuple[Tensor, Tensor]:
    """:func:`svd_components` of one recorded map; from a stored ``svd:K`` recording, its ``v``.

    Returns:
        ``components [k, h, w]`` and singular values ``[k]`` (``h, w``: the layer's grid).

    Raises:
        KeyError: the layer/step was not recorded with self-attention, or is pooled.
    """
    hw = maps.resolution(layer)
    name = tensor_name("self", layer, step)
    if name + "/u" in maps.data:  # stored SVD (not centred): right vectors over keys
        _, s, v = maps.svd(layer, step)  # [samples, heads', q, K], [samples, heads', K]
        v, s = v[sample].mean(0), s[sample].mean(0)
        k = min(k, v.shape[-1])
        return v[:, :k].T.reshape(k, *hw), s[:k]
    if str(maps.settings.get("self_reduce", "full")).startswith("pool"):
        raise KeyError(
            f"{name} was recorded pooled: record with self_reduce='full' or 'svd:K' to see "
            "its components"
        )
    return svd_components(maps[layer, step, "self"][sample], hw, k)


def plot_components(
    components: Tensor | np.ndarray,
    titles: Sequence[str] | None = None,
    image: Any = None,
    ncols: int = 7,
    fig: Figure | None = None,
) -> Figure:
    """Draw components ``[k, h, w]`` side by side (diverging colours, symmetric limits).

    Args:
        components: e.g. from :func:`svd_components`.
        titles: one per component (default ``comp 0`` ...).
        image: optionally, the generated image as the first panel.
        ncols: panels per row.
        fig: figure to draw into (default: a new one).

    Returns:
        The figure. Component ``i`` is ``fig.axes[i + (image is not None)].images[0]``, at the
        grid's own resolution (``h x w``, drawn with nearest-neighbour pixels).

    Example:
        >>> plot_components(svd_components(attn, (16, 16))[0]).savefig("svd.png")
    """
    comps = np.asarray(components, dtype=np.float32)
    if comps.ndim != 3:
        raise ValueError(f"components must be [k, h, w]; got shape {comps.shape}")
    titles = list(titles) if titles is not None else [f"comp {i}" for i in range(len(comps))]
    offset = int(image is not None)
    fig, axes = panels(len(comps) + offset, fig, ncols, size=1.7)
    if image is not None:
        axes[0].imshow(as_image(image))
        axes[0].set_title("image", fontsize=8)
        axes[0].axis("off")
    for ax, comp, title in zip(axes[offset:], comps, titles, strict=True):
        lim = float(np.abs(comp).max()) or 1.0
        ax.imshow(comp, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig


def self_attention_components(
    maps: AttentionMaps,
    layer: int,
    step: int,
    sample: int = 0,
    k: int = 6,
    image: Any = None,
    fig: Figure | None = None,
) -> Figure:
    """The paper's Figure 3 for one layer and step: its top self-attention components.

    Args:
        maps: a recording with self-attention (``full`` or ``svd:K``).
        layer: layer index; step: step index.
        sample: which recorded sample.
        k: components to show.
        image: optionally, the generated image as the first panel.
        fig: figure to draw into (default: a new one).

    Returns:
        The figure (see :func:`plot_components`).

    Raises:
        KeyError: the map was not recorded (the message lists what was).

    Example:
        >>> self_attention_components(maps, 13, 10, image=image).savefig("svd.png")
    """
    comps, s = layer_components(maps, layer, step, sample, k)
    titles = [f"comp {i} (σ={v:.2f})" for i, v in enumerate(s.tolist())]
    fig = plot_components(comps, titles, image, fig=fig)
    h, w = maps.resolution(layer)
    fig.suptitle(f"self-attention components, layer {layer} ({h}x{w}), step {step}", fontsize=10)
    return fig

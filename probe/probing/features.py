"""Probe features: for every (layer, step, kind) of a dataset, a matrix X and labels y.

Defaults (see :class:`FeatureOptions`):

- **cross**: the label word's cross-attention map (the mean over the word's tokens when it has
  several), averaged over heads, flattened at the layer's native resolution: ``h*w`` features.
  ``size=(H, W)`` resizes every layer's map to one common grid (bilinear); ``heads="all"``
  concatenates the heads (needs a dataset recorded with ``--heads all``).
- **self**: what the recorder kept. ``auto`` takes the stored SVD's components ``u·diag(s)``
  (``q*k`` features), a stored pooled map flattened, and, for whole maps, their top-8 SVD
  components computed here. ``svd:K``, ``pool:R`` and ``map`` (the whole map, ``q*q``) choose.

Each sample file is read once and every requested (layer, step, kind) row is taken from it, into
matrices allocated at the first sample, so memory is the features and one sample.

Example:
    >>> feats = build_features(AttentionDataset("runs/colour_car"), label="colour")
    >>> X, y = feats[13, 10, "cross"]
    >>> X.shape, y.shape
    ((320, 64), (320,))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from probe.attention.layer_info import LayerInfo
from probe.recording.maps import AttentionMaps, tensor_name
from probe.recording.plan import SQUARE_KINDS
from probe.recording.reduce import SelfReduce, pool_self
from probe.recording.store import AttentionDataset

Key = tuple[int, int, str]  # (layer, step, kind)
AUTO_SELF_K = 8


@dataclass(frozen=True)
class FeatureOptions:
    """How maps become feature vectors.

    Attributes:
        heads: ``"mean"`` (default) or ``"all"`` (heads concatenated).
        size: common (height, width) for cross maps; ``None`` keeps each layer's own.
        self_features: ``"auto"`` (default), ``"svd:K"``, ``"pool:R"`` or ``"map"``.
    """

    heads: str = "mean"
    size: tuple[int, int] | None = None
    self_features: str = "auto"

    def __post_init__(self) -> None:
        if self.heads not in ("mean", "all"):
            raise ValueError(f"heads={self.heads!r}: use 'mean' or 'all'")
        if self.self_features not in ("auto", "map"):
            parsed = SelfReduce.parse(self.self_features)
            if parsed.mode not in ("svd", "pool"):
                raise ValueError(
                    f"self_features={self.self_features!r}: use 'auto', 'svd:K', 'pool:R' or 'map'"
                )


@dataclass
class FeatureSet:
    """Features of one label over a dataset.

    Attributes:
        label: the label probed (``"colour"``).
        classes: class names; ``y`` holds indices into it.
        y: ``[samples]`` int labels.
        X: (layer, step, kind) → ``[samples, features]`` float32.
        timesteps: step index → scheduler timestep.
        sample_ids: the dataset's sample ids, in row order.
        groups: ``[samples]`` the seed of each sample (samples of one seed share their noise).
        layer_table: the layer table the dataset was recorded on, at its latent size.
    """

    label: str
    classes: list[str]
    y: np.ndarray
    X: dict[Key, np.ndarray] = field(default_factory=dict)
    timesteps: dict[int, float] = field(default_factory=dict)
    sample_ids: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None
    layer_table: list[LayerInfo] = field(default_factory=list)

    def __repr__(self) -> str:
        dims = sorted({x.shape[1] for x in self.X.values()})
        return (
            f"FeatureSet(label={self.label!r}, {len(self.y)} samples, {len(self.classes)} classes, "
            f"{len(self.X)} (layer, step, kind) cells, feature sizes {dims[:3]}...{dims[-1:]})"
        )

    def keys(self) -> list[Key]:
        return sorted(self.X)

    def __getitem__(self, key: Key) -> tuple[np.ndarray, np.ndarray]:
        if key not in self.X:
            raise KeyError(f"no features for (layer, step, kind) = {key}; have {len(self.X)} cells")
        return self.X[key], self.y


def _head_reduce(m: Tensor, heads: str) -> Tensor:
    return m.mean(dim=0, keepdim=True) if heads == "mean" else m


def cross_feature(maps: AttentionMaps, layer: int, step: int, positions: list[int],
                  options: FeatureOptions) -> Tensor:  # fmt: skip
    """The word's map ``[heads' * h * w]`` (or ``[heads' * H * W]`` when resized)."""
    m = maps.data[tensor_name("cross", layer, step)][0].float()  # [heads', q, tokens]
    m = _head_reduce(m[..., positions].mean(-1), options.heads)  # [heads', q]
    if options.size is not None:
        h, w = maps.resolution(layer)
        grid = m.reshape(1, m.shape[0], h, w)
        m = F.interpolate(grid, size=options.size, mode="bilinear", align_corners=False)[0]
    return m.reshape(-1)


def self_feature(
    maps: AttentionMaps, layer: int, step: int, options: FeatureOptions, kind: str = "self"
) -> Tensor:
    """Self-attention features of one sample (see the module docstring); ``kind`` another
    square map reduced the same way (SD3.5 Medium's ``image_only``), or a DiT's text-query
    map (``text_image``, ``text_text``: the head-reduced map itself)."""
    if kind not in SQUARE_KINDS:
        return _head_reduce(maps[layer, step, kind][0].float(), options.heads).reshape(-1)
    name = tensor_name(kind, layer, step)
    spec = options.self_features
    if name + "/u" in maps.data and spec != "map":
        u, s, _ = maps.svd(layer, step, kind)  # [1, heads', q, k], [1, heads', k]
        k = u.shape[-1] if spec == "auto" else SelfReduce.parse(spec).k
        if spec.startswith("pool"):
            raise ValueError(
                f"self_features={spec!r} needs whole self-attention maps, but {name} was "
                "recorded as an SVD: use self_features='auto' or 'svd:K', or record with "
                "--self-reduce full"
            )
        return (u[0, :, :, :k] * s[0, :, None, :k]).reshape(-1)
    m = maps[layer, step, kind][0].float()  # [heads', q, q] or pooled [heads', c, c]
    pooled = maps.settings.get("self_reduce", "full").startswith("pool")
    if spec == "map" or (spec == "auto" and pooled):
        return _head_reduce(m, options.heads).reshape(-1)
    if pooled:
        raise ValueError(f"self_features={spec!r}: {name} was stored pooled; use 'auto' or 'map'")
    m = _head_reduce(m, options.heads)
    reduce = SelfReduce("svd", AUTO_SELF_K) if spec == "auto" else SelfReduce.parse(spec)
    if reduce.mode == "pool":
        return pool_self(m, maps.resolution(layer), reduce.k).reshape(-1)
    return top_components(m, reduce.k).reshape(-1)


def _batched_self_svd(
    maps: AttentionMaps, layer: int, steps: list[int], options: FeatureOptions, kind: str = "self"
) -> dict[Key, Tensor]:
    """SVD features of whole maps for all ``steps`` of one layer in one batched call."""
    k = (
        AUTO_SELF_K
        if options.self_features == "auto"
        else SelfReduce.parse(options.self_features).k
    )
    stack = torch.stack([maps[layer, s, kind][0].float() for s in steps])  # [S, heads', q, q]
    feats = top_components(_head_reduce_batch(stack, options.heads), k).reshape(len(steps), -1)
    return {(layer, s, kind): feats[i] for i, s in enumerate(steps)}


def top_components(m: Tensor, k: int) -> Tensor:
    """``u·diag(s)`` of the top-``k`` singular triplets of ``m [..., q, q]``: ``[..., q, k]``.

    Computed from the eigenvectors of ``m mᵀ`` (symmetric, so faster than an SVD on a CPU, and
    deterministic), with :func:`probe.recording.reduce.svd_self`'s sign convention.
    """
    k = min(k, m.shape[-1])
    evals, evecs = torch.linalg.eigh(m @ m.transpose(-1, -2))
    u = evecs[..., -k:].flip(-1)
    s = evals[..., -k:].flip(-1).clamp(min=0).sqrt()
    idx = u.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(torch.gather(u, -2, idx)).clamp(min=0) * 2 - 1
    return u * sign * s.unsqueeze(-2)


def _head_reduce_batch(m: Tensor, heads: str) -> Tensor:
    return m.mean(dim=1, keepdim=True) if heads == "mean" else m


def _whole_self(maps: AttentionMaps, options: FeatureOptions) -> bool:
    stored = str(maps.settings.get("self_reduce", "full"))
    return stored == "full" and (
        options.self_features == "auto" or options.self_features.startswith("svd")
    )


def sample_features(maps: AttentionMaps, word: str, keys: Iterable[Key],
                    options: FeatureOptions) -> dict[Key, Tensor]:  # fmt: skip
    """Every requested cell's feature vector from one sample's maps."""
    positions = maps.word_positions(word, 0)
    out: dict[Key, Tensor] = {}
    batched: dict[tuple[int, str], list[int]] = {}
    for layer, step, kind in keys:
        if kind == "cross":
            out[layer, step, kind] = cross_feature(maps, layer, step, positions, options)
        elif kind in SQUARE_KINDS and _whole_self(maps, options):
            batched.setdefault((layer, kind), []).append(step)
        else:
            out[layer, step, kind] = self_feature(maps, layer, step, options, kind)
    for (layer, kind), steps in batched.items():
        out.update(_batched_self_svd(maps, layer, steps, options, kind))
    return out


def available_keys(maps: AttentionMaps, layers: Iterable[int] | None = None,
                   steps: Iterable[int] | None = None,
                   kinds: Iterable[str] | None = None) -> list[Key]:  # fmt: skip
    """(layer, step, kind) cells recorded in ``maps``, optionally filtered."""
    wanted_layers = set(layers) if layers is not None else None
    wanted_steps = set(steps) if steps is not None else None
    keys = []
    for kind in kinds or maps.kinds:
        for layer in maps.recorded_layers(kind):
            for step in maps.steps:
                if (wanted_layers is None or layer in wanted_layers) and (
                    wanted_steps is None or step in wanted_steps
                ):
                    keys.append((layer, step, kind))
    return sorted(keys)


def build_features(
    dataset: AttentionDataset,
    label: str,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    kinds: Iterable[str] | None = None,
    options: FeatureOptions | None = None,
    progress: bool = True,
    partial: bool = False,
) -> FeatureSet:
    """Read a dataset once and build X, y for every (layer, step, kind) cell.

    Args:
        dataset: a recorded :class:`AttentionDataset`.
        label: the label to probe (``"colour"``); its word's cross-attention map is used.
        layers, steps, kinds: restrict the cells (default: everything recorded).
        options: :class:`FeatureOptions` (default: head mean, native size, ``auto`` self).
        progress: show a tqdm bar over sample files.
        partial: read only the tensors of ``layers`` from each file, checking its size but not
            its checksum (for :mod:`probe.probing.stream`, which verifies every file first).

    Returns:
        A :class:`FeatureSet`.

    Raises:
        KeyError: the label is not in the dataset.
        CorruptSampleError: a sample file does not verify (rerun ``record`` to redo it).

    Example:
        >>> feats = build_features(AttentionDataset("runs/colour_car"), "colour")
    """
    options = options or FeatureOptions()
    names = dataset.labels(label)
    classes = dataset.classes(label)
    if options.heads == "all" and dataset.meta.get("heads", "mean") == "mean":
        raise ValueError(
            f"heads='all' needs per-head maps, but {dataset.root} was recorded with heads "
            "'mean': record with --heads all or use heads='mean'"
        )
    feats = FeatureSet(label, classes, np.array([classes.index(c) for c in names]))
    feats.groups = np.array([int(e.get("seed", i)) for i, e in enumerate(dataset.entries)])
    n = len(dataset)
    keys: list[Key] = []
    layers = None if layers is None else list(layers)
    only = layers if partial and layers is not None else None
    for i in tqdm(range(n), disable=not progress, desc="features"):
        entry, maps = dataset.entries[i], dataset.load(i, only)
        if i == 0:
            keys = available_keys(maps, layers, steps, kinds)
            feats.timesteps = {s: float(t) for s, t in sorted(maps.timesteps.items())}
            feats.layer_table = list(maps.layers)
        vectors = sample_features(maps, entry["label_words"][label], keys, options)
        for key, vec in vectors.items():
            if key not in feats.X:
                feats.X[key] = np.zeros((n, vec.numel()), dtype=np.float32)
            feats.X[key][i] = vec.numpy()
        feats.sample_ids.append(entry["id"])
    return feats


def synthetic_features(n_per_class: int, n_classes: int, dim: int, separation: float,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Gaussian blobs ``X [n, dim]``, ``y [n]`` to check probes (``separation``: std units)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * separation / np.sqrt(dim) * 2
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[y] + rng.normal(size=(len(y), dim))
    return X.astype(np.float32), y

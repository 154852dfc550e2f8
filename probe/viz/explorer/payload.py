"""What the explorer page holds: maps quantised to uint8, delta-coded along steps, deflated, base64.

    data = explorer_data(maps, sample=0, max_bytes=5_000_000)   # a JSON-ready dict
    data["left_out"]                                              # what did not fit, in words

Each (kind, layer) is one blob: its maps at every kept step, one after the other, as uint8. A
map's bytes at step ``i > 0`` are stored as the difference (mod 256) from step ``i - 1``, which
halves what deflate leaves on the toy (maps change slowly along the denoising loop); the page
undoes it with one loop after the browser's own ``DecompressionStream('deflate')``.

- ``cross``: per step ``[tokens, queries]``, one scale per token map (``value = q / 255 * scale``).
- ``self`` kept whole (or pooled): per step ``[queries, keys]``, one scale per map: one scale per
  row would make diffuse rows incompressible (the toy's page would grow from ~4.2 to ~5.5 MB),
  and the weakest row of a toy map still gets ~100 of the 255 levels.
- ``self`` as SVD: per step ``u [queries, K]`` then ``vᵀ [K, keys]``, signed
  (``value = (q - 128) / 127 * scale``), and the singular values as plain numbers.

Where the budget is short (a real model at 64×64), the steps are thinned until the cross maps fit
half of it, then self-attention layers are added coarsest first while they fit; the rest is named
in ``left_out``.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from probe.recording.reduce import SelfReduce
from probe.viz.explorer.recording import RecordedMaps

# room for the page's own HTML, CSS, JavaScript and the JSON around the blobs
PAGE_OVERHEAD = 64_000


def quantise(x: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative values to uint8, ``q = round(x / scale * 255)`` with ``scale`` the maximum
    (over ``axis``, or the whole array); a zero scale stays 0.

    Returns:
        ``q`` (uint8, the shape of ``x``) and ``scale`` (float32; the reduced shape).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size and float(x.min()) < 0:
        raise ValueError(f"quantise takes non-negative maps; this one reaches {x.min():.3g}")
    scale = x.max(axis=axis, keepdims=True) if x.size else np.zeros((1,) * x.ndim, np.float32)
    q = np.round(x / np.where(scale > 0, scale, 1.0) * 255).astype(np.uint8)
    return q, (scale.squeeze(axis) if axis is not None else scale.reshape(()))


def quantise_signed(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Signed values to uint8 around 128: ``q = round(x / max|x| * 127) + 128``."""
    x = np.asarray(x, dtype=np.float32)
    scale = float(np.abs(x).max()) if x.size else 0.0
    q = np.round(x / (scale or 1.0) * 127) + 128
    return q.astype(np.uint8), scale


def dequantise(q: np.ndarray, scale: np.ndarray | float, signed: bool = False) -> np.ndarray:
    """The inverse of :func:`quantise` (``signed=False``) or :func:`quantise_signed`."""
    if signed:
        return (q.astype(np.float32) - 128) / 127 * np.float32(scale)
    return q.astype(np.float32) / 255 * np.asarray(scale, dtype=np.float32)


def pack(frames: Sequence[np.ndarray]) -> str:
    """uint8 frames of one (kind, layer), one per step: delta along steps, deflate, base64."""
    stack = np.stack([np.asarray(f, dtype=np.uint8).ravel() for f in frames]).astype(np.int16)
    deltas = np.concatenate([stack[:1], np.diff(stack, axis=0)]).astype(np.uint8)  # mod 256
    raw = deltas.tobytes()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def unpack(blob: str, frame_size: int) -> list[np.ndarray]:
    """The inverse of :func:`pack`: flat uint8 frames of ``frame_size`` bytes each."""
    raw = np.frombuffer(zlib.decompress(base64.b64decode(blob)), dtype=np.uint8)
    if frame_size <= 0 or raw.size % frame_size:
        raise ValueError(f"a blob of {raw.size} bytes is not made of frames of {frame_size}")
    frames = np.cumsum(raw.reshape(-1, frame_size).astype(np.int64), axis=0) % 256
    return list(frames.astype(np.uint8))


def cross_layer(maps: RecordedMaps, layer: int, steps: Sequence[int], sample: int) -> dict:
    """One layer's cross maps: ``{"blob", "scales" [steps][tokens]}``, tokens of the prompt."""
    n = len(maps.tokens[sample]) if maps.tokens else None
    frames, scales = [], []
    for step in steps:
        m = _head_mean(maps[layer, step, "cross"][sample])  # [queries, keys]
        q, s = quantise(m[:, :n].T, axis=1)  # [tokens, queries], one scale per token
        frames.append(q)
        scales.append([float(v) for v in s])
    return {"blob": pack(frames), "scales": scales}


def self_layer(maps: RecordedMaps, layer: int, steps: Sequence[int], sample: int) -> dict:
    """One layer's self maps, whole (``scales`` [steps]) or as an SVD (``scales`` [steps][u, v],
    ``s`` [steps][K])."""
    if f"self/L{layer:02d}/S{steps[0]:03d}/u" in maps.data:
        return _self_svd(maps, layer, steps, sample)
    frames, scales = [], []
    for step in steps:
        q, s = quantise(_head_mean(maps[layer, step, "self"][sample]))
        frames.append(q)
        scales.append(float(s))
    return {"blob": pack(frames), "scales": scales}


def _self_svd(maps: RecordedMaps, layer: int, steps: Sequence[int], sample: int) -> dict:
    """An SVD-reduced layer: ``u [q, K]`` then ``vᵀ [K, q]`` per step, of the first head (the
    head mean, unless heads were kept apart)."""
    frames, scales, values = [], [], []
    for step in steps:
        u, s, v = (t[sample][0].float().numpy() for t in maps.svd(layer, step))
        qu, su = quantise_signed(u)
        qv, sv = quantise_signed(v.T)
        frames.append(np.concatenate([qu.ravel(), qv.ravel()]))
        scales.append([su, sv])
        values.append([float(x) for x in s])
    return {"blob": pack(frames), "scales": scales, "s": values}


def _head_mean(t: Tensor) -> np.ndarray:
    """``[heads', ...]`` → the head mean as float32 numpy (numpy: torch's threads contend here)."""
    return t.detach().cpu().numpy().astype(np.float32).mean(0)


def self_grid(maps: RecordedMaps, layer: int) -> tuple[int, int]:
    """The (height, width) grid of ``layer``'s stored self maps (a pooled one is coarser)."""
    h, w = maps.resolution(layer)
    reduce = SelfReduce.parse(str(maps.settings.get("self_reduce", "full")))
    if reduce.mode == "pool":
        return min(reduce.k, h), min(reduce.k, w)
    return h, w


def self_mode(maps: RecordedMaps) -> str | None:
    """``"full"``, ``"pool"`` or ``"svd"`` as the page shows self-attention (None: not recorded)."""
    if "self" not in maps.kinds:
        return None
    if any(n.startswith("self/") and n.endswith("/u") for n in maps.data):
        return "svd"
    mode = SelfReduce.parse(str(maps.settings.get("self_reduce", "full"))).mode
    return "pool" if mode == "pool" else "full"


def blob_bytes(entry: dict[str, Any]) -> int:
    return len(entry["blob"]) + 16 * len(str(entry["scales"])) // 10


def thin_steps(steps: Sequence[int], stride: int) -> list[int]:
    """Every ``stride``-th step counted back from the last, which is always kept."""
    return list(steps[::-1][::stride][::-1])

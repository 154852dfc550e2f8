"""MasaCtrl (Cao et al., ICCV 2023): target queries read the source's keys and values in
self-attention, optionally restricted to an object's region.

    edit(pipe, "a red car", ["a blue car"], method="masactrl")                  # mutual attention
    edit(pipe, "a red car", ["a blue car"], method="masactrl", mask_word="car")  # mask from a word
    edit(pipe, "a red car", ["a blue car"], method="masactrl", mask="car.png")   # mask image
    MutualSelfAttention(4, 10, mask=WordMask("car"))                             # the same, by hand

What the authors' classes do (TencentARC/MasaCtrl, ``masactrl/masactrl.py``), here through the
hooks:

- ``MutualSelfAttentionControl``: in the transformer blocks ``start_layer`` … last (execution
  order; 10 of SD's 16: ``up_blocks.2``-``3``; on SDXL 44 of 70, the first start layer of the
  authors' SDXL script, ``up_blocks.0.attentions.1`` on: the ``masactrl`` layer preset,
  :mod:`probe.families`) and the steps ``start_step`` … N−1, self-attention
  only, in *each* guidance half: every target query attends to the source's keys and values
  (``softmax(q_tgt k_srcᵀ) v_src``); the source row attends to itself. Runs on the fused kernel.
- ``MutualSelfAttentionControlMask`` (:class:`ImageMask`): a source mask ``M_s`` and a target
  mask ``M_t``, resized (nearest) to each layer's query map. Each target query is computed
  twice, once reading only the source's foreground keys, once only its background keys; the
  target mask picks per query: ``out = M_t · out_fg + (1 − M_t) · out_bg``. A foreground query
  therefore reads the source's foreground, a background query its background. With a binary
  ``M_t`` that is one softmax per query over the keys whose ``M_s`` equals the query's ``M_t``,
  which attnprobe computes as a score bias (``finfo.min`` on the other keys, as the authors
  add), so the fused kernel stays on.
- ``MutualSelfAttentionControlMaskAuto`` (:class:`WordMask`): the masks come from the word's
  cross-attention maps of the *current step*, in the layers that ran before this one: the
  16×16 maps at 512 px, averaged over heads and layers, the word's tokens summed, min-max
  normalised, resized (nearest) to the query map, ``>= 0.1``. The source's conditional row gives
  ``M_s``, the target's conditional row ``M_t``; both guidance halves use them. A layer with no
  map before it in this step (e.g. start layer below the maps' layers) runs unmasked.

The source branch is whatever the edit loop makes it (denoised, or pinned to an inversion):
this controller only reads its keys and values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from editing.methods.p2p_align import word_positions
from editing.methods.p2p_options import parse_unit
from editing.methods.replace import RowEditor
from probe.attention.batch import BatchLayout
from probe.attention.controller import AttentionCall, HookState, Kind
from probe.attention.layer_info import LayerInfo, LayerSpec, one_resolution
from probe.attention.layers import resolve_layers

MaskLike = str | Path | Image.Image | np.ndarray | Tensor
Regions = tuple[Tensor, Tensor]  # (source keys [K] bool, per target queries [targets, Q] bool)


class RegionMask:
    """Where the object is, per call: what :class:`MutualSelfAttention` restricts itself to.

    Subclasses give :meth:`regions`; a mask that reads attention maps also says which layers it
    observes.
    """

    def bind(self, layers: list[LayerInfo]) -> None:
        """Resolve layer specs against the run's table (default: nothing to resolve)."""

    def prepare(self, tokenizer: Any, source: str, targets: Sequence[str]) -> None:
        """Read the prompts before a run (default: nothing)."""

    def reset(self) -> None:
        """Forget what was observed in a previous run (default: nothing)."""

    def observes(self, layer: LayerInfo) -> bool:
        """Whether this layer's cross-attention probabilities are wanted."""
        return False

    def observe(self, call: AttentionCall, probs: Tensor) -> None:
        """Look at a cross-attention call's probabilities ``[batch, heads, q, keys]``."""

    def regions(self, call: AttentionCall) -> Regions | None:
        """``(source_keys [h*w], target_queries [targets, h*w])`` as bool tensors at this
        self-attention call's query map, or ``None``: no mask for this call."""
        raise NotImplementedError


def load_mask(mask: MaskLike, name: str = "mask") -> Tensor:
    """A binary mask ``[h, w]`` (bool) from an image file, a PIL image, an array or a tensor.

    Grey levels (the image in ``L`` mode) at or above half count as the object; an array or
    tensor holds 0/1, booleans, or grey levels 0-255.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not 2-D (an array), or not an image PIL can read.
    """
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: {path} does not exist (give a PNG of the object)")
        try:
            mask = Image.open(path)
            mask.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"{name}: {path} is not an image ({type(err).__name__})") from None
    if isinstance(mask, Image.Image):
        return torch.from_numpy(np.asarray(mask.convert("L"), np.float32) / 255.0) >= 0.5
    array = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    if array.ndim != 2:
        raise ValueError(f"{name} of shape {tuple(array.shape)}: give one [h, w] mask")
    if array.dtype == torch.bool:
        return array.clone()
    array = array.float()
    return array / 255.0 >= 0.5 if float(array.max()) > 1.0 else array >= 0.5


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """``mask`` ``[..., h, w]`` (bool or float) to ``size`` by nearest neighbour, as the
    authors' ``F.interpolate``; returns ``[..., H*W]`` in the mask's dtype."""
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="nearest")
    return out.to(mask.dtype).reshape(*lead, size[0] * size[1])


class ImageMask(RegionMask):
    """Given masks (the authors' ``MutualSelfAttentionControlMask``).

    Args:
        source: the object in the source image (a PNG, a PIL image, an ``[h, w]`` array).
        target: where the object goes in the targets (default: the source mask).
    """

    def __init__(self, source: MaskLike, target: MaskLike | None = None) -> None:
        self.source = load_mask(source, "mask")
        self.target = self.source if target is None else load_mask(target, "mask_target")

    def __repr__(self) -> str:
        return f"ImageMask(source={tuple(self.source.shape)}, target={tuple(self.target.shape)})"

    def regions(self, call: AttentionCall) -> Regions:
        n_targets = len(_target_samples(call.layout))
        keys = resize_mask(self.source, call.query_hw)
        queries = resize_mask(self.target, call.query_hw)
        return keys, queries.expand(n_targets, -1)


class WordMask(RegionMask):
    """Masks from a word's cross-attention maps (the authors' ``...MaskAuto``).

    Args:
        word: the object's word in the source prompt (the authors' ``ref_token_idx``).
        target_word: its word in the targets (``cur_token_idx``; default: ``word``).
        threshold: a normalised map at or above it is the object (the authors: 0.1).
        layers: the cross-attention layers whose maps are read, of one resolution (default
            ``res==max/4``: the authors' 16×16 maps at 512 px; ``positions==256`` is their
            literal check at any size, see ``docs/editing.md``).

    Raises:
        ValueError: an empty word, a threshold outside [0, 1].
    """

    def __init__(
        self,
        word: str,
        target_word: str | None = None,
        threshold: float = 0.1,
        layers: LayerSpec = "res==max/4",
    ) -> None:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"mask_word={word!r}: give the object's word, e.g. 'car'")
        self.word = word.strip()
        self.target_word = (target_word or word).strip()
        self.threshold = parse_unit(threshold, "mask_threshold")
        self.layer_spec = layers
        self.layers: frozenset[int] = frozenset()
        self.columns: list[list[int]] = []  # per prompt, source first: the word's token positions
        self.reset()

    def __repr__(self) -> str:
        return (
            f"WordMask(word={self.word!r}, target_word={self.target_word!r}, "
            f"threshold={self.threshold:g}, layers={self.layer_spec!r})"
        )

    def reset(self) -> None:
        self.step = -1
        self.maps: list[Tensor] = []  # this step's maps, per layer: [1 + targets, q, keys]
        self.map_hw: tuple[int, int] | None = None

    def bind(self, layers: list[LayerInfo]) -> None:
        self.layers = frozenset(resolve_layers(layers, self.layer_spec))
        what = "MasaCtrl's word mask averages maps of one resolution, but mask_layers"
        one_resolution(layers, self.layers, what, self.layer_spec)

    def prepare(self, tokenizer: Any, source: str, targets: Sequence[str]) -> None:
        """Find the word's tokens in the source and each target.

        Raises:
            KeyError: the word is not in a prompt (the message names which).
        """
        pairs = [(source, self.word), *((t, self.target_word) for t in targets)]
        self.columns = []
        for k, (prompt, word) in enumerate(pairs):
            found = word_positions(tokenizer, prompt, word)
            if not found:
                flag = "mask_target_word" if k else "mask_word"
                raise KeyError(f"{flag} {word!r} is not in the prompt {prompt!r}: give its word")
            self.columns.append(found)

    def observes(self, layer: LayerInfo) -> bool:
        return layer.index in self.layers

    def observe(self, call: AttentionCall, probs: Tensor) -> None:
        """Keep the conditional source and target rows' maps, head-averaged, for this step."""
        if call.step != self.step:
            self.step, self.maps = call.step, []
        samples = [_source_sample(call.layout), *_target_samples(call.layout)]
        rows = [call.layout.row_of(s, "cond") for s in samples]
        self.maps.append(probs[rows].float().mean(dim=1))
        self.map_hw = call.query_hw

    def regions(self, call: AttentionCall) -> Regions | None:
        if call.step != self.step or not self.maps:
            return None  # no map yet in this step: the authors run unmasked then
        if not self.columns:
            raise RuntimeError("WordMask.prepare(tokenizer, source, targets) was not called")
        assert self.map_hw is not None
        mean = torch.stack(self.maps).mean(dim=0)  # [1 + targets, q, keys]
        words = torch.stack([mean[k][:, cols].sum(-1) for k, cols in enumerate(self.columns)])
        low = words.amin(dim=-1, keepdim=True)
        high = words.amax(dim=-1, keepdim=True)
        # a flat map (the authors divide by zero) counts as the object everywhere
        normalised = torch.where(high > low, (words - low) / (high - low), torch.ones_like(words))
        normalised = normalised.reshape(-1, *self.map_hw)
        masks = resize_mask(normalised, call.query_hw) >= self.threshold
        return masks[0], masks[1:]


class MutualSelfAttention(RowEditor):
    """MasaCtrl: from ``start_step`` and ``start_layer`` on, each target query reads the
    source's keys and values in self-attention, within its guidance half (see the module).

    Args:
        start_step: first step edited (the authors: 4); steps ``start_step`` … N−1.
        start_layer: first layer edited, execution order; every later layer too. Default
            ``None``: the model family's, the first layer of the ``masactrl`` preset (the
            authors: 10 of SD's 16; 44 of SDXL's 70 in their SDXL script).
        mask: restrict the mutual attention to regions: :class:`ImageMask`, :class:`WordMask`,
            or ``None`` (plain mutual attention).

    Example:
        >>> edit(pipe, "a red car", ["a blue car"], controllers=[MutualSelfAttention(4, 10)])
    """

    def __init__(
        self, start_step: int = 4, start_layer: int | None = None, mask: RegionMask | None = None
    ) -> None:
        super().__init__(layers=None, steps="all", guidance="both")
        self.start_step = start_step
        self.start_layer = start_layer
        self.first_layer: int | None = start_layer  # start_layer, or the family's once bound
        self.mask = mask

    def __repr__(self) -> str:
        layer = self.first_layer if self.first_layer is not None else "family default"
        return (
            f"MutualSelfAttention(start_step={self.start_step}, start_layer={layer}, "
            f"mask={self.mask!r})"
        )

    def bind(self, layers: list[LayerInfo]) -> None:
        self.layers = start_layers(layers, self.start_layer, "UNet")
        self.first_layer = min(self.layers)
        if self.mask is not None:
            self.mask.bind(layers)

    def prepare(self, tokenizer: Any, source: str, targets: Sequence[str]) -> None:
        if self.mask is not None:
            self.mask.prepare(tokenizer, source, targets)

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        if self.layers is None or first:  # the table of this run (its generated size)
            self.bind(hooks.layers)
        if first:
            self.steps = start_steps(hooks, self.start_step)
            if self.mask is not None:
                self.mask.reset()

    def _observing(self, call: AttentionCall) -> bool:
        return call.kind == "cross" and self.mask is not None and self.mask.observes(call.layer)

    def claims(self, layer: LayerInfo, kind: Kind) -> bool:
        if self.layers is None:
            raise RuntimeError("MutualSelfAttention is not bound to a UNet: call bind(layers)")
        if kind == "cross":
            return self.mask is not None and self.mask.observes(layer)
        return layer.index in self.layers

    def needs_probs(self, call: AttentionCall) -> bool:
        return self._observing(call)

    def observe(self, call: AttentionCall, probs: Tensor) -> None:
        if self._observing(call):
            assert self.mask is not None
            self.mask.observe(call, probs)

    def edit_qkv(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        src, tgt = self.pairs(call)
        if call.kind != "self" or not tgt:
            return q, k, v
        k, v = k.clone(), v.clone()
        k[tgt] = k[src]
        v[tgt] = v[src]
        return q, k, v

    def score_bias(self, call: AttentionCall, q: Tensor, k: Tensor) -> Tensor | None:
        """``finfo.min`` where a target query's region differs from the source key's."""
        if call.kind != "self" or self.mask is None:
            return None
        regions = self.mask.regions(call)
        if regions is None:
            return None
        keys, queries = (r.to(q.device) for r in regions)
        targets = _target_samples(call.layout)
        bias = torch.zeros(q.shape[0], 1, q.shape[2], k.shape[2], dtype=q.dtype, device=q.device)
        blocked = torch.finfo(q.dtype).min
        for row in self.pairs(call)[1]:
            t = targets.index(call.layout.rows[row].sample)
            mismatch = queries[t][:, None] != keys[None, :]
            bias[row, 0] = torch.where(mismatch, blocked, 0.0)
        return bias


def start_layers(layers: list[LayerInfo], start_layer: int | None, model: str) -> frozenset[int]:
    """MasaCtrl's layers: ``start_layer`` and every later one (``None``: from the first layer of
    the family's ``masactrl`` preset), on a UNet and carried to a DiT alike.

    Raises:
        ValueError: a start layer the ``model`` (``"UNet"``, ``"transformer"``) does not have.
    """
    start = start_layer
    if start is None:
        start = resolve_layers(layers, "masactrl")[0]
    if not 0 <= start < len(layers):
        raise ValueError(
            f"start_layer {start} does not exist: this {model} has layers 0-{len(layers) - 1}"
        )
    return frozenset(range(start, len(layers)))


def start_steps(hooks: HookState, start_step: int) -> frozenset[int]:
    """MasaCtrl's steps: ``start_step`` … N−1 of the run the hooks count (every later step
    where the run's length is unknown)."""
    total = hooks.total_steps or 10**6
    return frozenset(range(start_step, total))


def masactrl(
    start_step: int = 4,
    start_layer: int | None = None,
    mask_word: str | None = None,
    mask_target_word: str | None = None,
    mask_threshold: float = 0.1,
    mask_layers: LayerSpec = "res==max/4",
    mask: MaskLike | None = None,
    mask_target: MaskLike | None = None,
) -> MutualSelfAttention:
    """The MasaCtrl controller of ``method="masactrl"`` and its options (see the registry).

    No mask: ``MutualSelfAttentionControl``; ``mask_word``: ``...MaskAuto`` (:class:`WordMask`);
    ``mask``: ``...Mask`` (:class:`ImageMask`).

    Raises:
        ValueError: both ``mask_word`` and ``mask``, or a target's mask (word) without the
            source's.

    Example:
        >>> masactrl(mask_word="car", mask_threshold=0.1)
    """
    if mask_word and mask is not None:
        raise ValueError(
            "masactrl takes mask_word (a mask from the word's cross-attention) or mask (a mask "
            "image), not both"
        )
    if mask_target_word and not mask_word:
        raise ValueError(f"mask_target_word={mask_target_word!r} needs mask_word (the source's)")
    if mask_target is not None and mask is None:
        raise ValueError("mask_target needs mask (the source's mask image)")
    region: RegionMask | None = None
    if mask_word:
        region = WordMask(mask_word, mask_target_word, mask_threshold, mask_layers)
    elif mask is not None:
        region = ImageMask(mask, mask_target)
    return MutualSelfAttention(start_step, start_layer, region)


def _source_sample(layout: BatchLayout) -> int:
    return layout.rows[layout.indices(branch="source")[0]].sample


def _target_samples(layout: BatchLayout) -> list[int]:
    return sorted({row.sample for row in layout.rows if row.branch == "target"})

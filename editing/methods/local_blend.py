"""LocalBlend (Prompt-to-Prompt): keep every target's latents equal to the source's outside the
region its blend words attend to.

    blend = LocalBlend(["car"])                      # the published rule
    edit(pipe, "a red car", ["a blue car"],
         controllers=[*prompt_to_prompt("replace")[:2], blend])
    blend.masks                                      # [targets, h, w]: the last step's masks

What the authors' ``LocalBlend`` does (``prompt-to-prompt_stable.ipynb``; start step and
subtract words from ``null_text_w_ptp.ipynb``), here through the same hooks:

1. It observes the cross-attention probabilities the conditional rows actually use (after
   Prompt-to-Prompt's edit) in the blend layers, summed over the steps so far.
2. After each scheduler step, per prompt: the blend words' maps (summed over their tokens),
   averaged over heads and layers, 3×3 max-pooled (stride 1), upsampled (nearest) to the latent,
   divided by their maximum, thresholded (``> 0.3``). A target's mask is the union of its own
   and the source's; subtract words' masks (no pooling, same threshold, also united with the
   source's) are cut out of it.
3. ``x_t = x_src + mask · (x_t − x_src)`` for every target, from step ``int(start · N)`` on.

The blend layers: the authors read the 16×16 maps at 512 px (SD 1.x: ``down_blocks.2``' two and
``up_blocks.1``' three; the 8×8 mid block excluded), i.e. the maps at a quarter of the latent's
side, ``res==max/4`` — the default here at every size. On the toy (16×16 latents) those are
4×4 maps (layers 4, 5, 7, 8, 9); ``layers`` takes any other spec of one resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from editing.methods.p2p_align import word_positions
from editing.methods.p2p_options import parse_unit, parse_words
from editing.methods.replace import RowEditor
from probe.attention.batch import BatchLayout
from probe.attention.controller import AttentionCall, HookState, Kind
from probe.attention.layer_info import LayerInfo, LayerSpec, one_resolution
from probe.attention.steps import as_step_fraction


class LocalBlend(RowEditor):
    """Blend each target's latents with the source's outside its blend words' region.

    Args:
        words: the blend words, looked up in every prompt (source and targets); e.g.
            ``["car"]``, or ``["cat", "tiger"]`` for a swap (the authors give one word list per
            prompt; a word a prompt lacks adds nothing to that prompt's mask).
        subtract: words whose region is cut out of the mask (the null-text notebook's
            ``substruct_words``).
        threshold: the mask is where the normalised map exceeds it (the authors: 0.3).
        start: blend from step ``int(start · N)`` on (stable notebook: 0; null-text: 0.2).
        layers: the cross-attention layers whose maps make the mask; all of one resolution
            (default ``res==max/4``: the authors' 16×16 maps at 512 px).

    Raises:
        ValueError: no words, a threshold or start outside [0, 1].
    """

    kind: Kind = "cross"

    def __init__(
        self,
        words: Sequence[str],
        subtract: Sequence[str] | None = None,
        threshold: float = 0.3,
        start: float = 0.0,
        layers: LayerSpec = "res==max/4",
    ) -> None:
        super().__init__(layers, "all")
        self.words = parse_words(list(words), "blend")
        self.subtract = parse_words(list(subtract), "blend_subtract") if subtract else []
        self.threshold = parse_unit(threshold, "blend_threshold")
        self.start = as_step_fraction(start)
        self.columns: list[list[int]] = []  # per prompt (source first): blend word positions
        self.sub_columns: list[list[int]] = []
        self.first_step = 0
        self.maps: Tensor | None = None  # [samples, q, keys]: summed over steps and heads
        self.heads_seen = 0
        self.query_hw: tuple[int, int] | None = None
        self.masks: Tensor | None = None  # [targets, H, W] of the last blended step

    def __repr__(self) -> str:
        layers = sorted(self.layers) if self.layers is not None else self.layer_spec
        return (
            f"LocalBlend(words={self.words}, subtract={self.subtract}, "
            f"threshold={self.threshold:g}, start={self.start:g}, layers={layers})"
        )

    def prepare(self, tokenizer: Any, source: str, targets: Sequence[str]) -> None:
        """Find the blend (and subtract) words' tokens in every prompt.

        Raises:
            KeyError: a blend or subtract word that is in none of the prompts.
        """
        prompts = [source, *targets]
        self.columns = self._columns(tokenizer, prompts, self.words)
        self.sub_columns = self._columns(tokenizer, prompts, self.subtract)

    @staticmethod
    def _columns(tokenizer: Any, prompts: list[str], words: list[str]) -> list[list[int]]:
        found = {w: [word_positions(tokenizer, p, w) for p in prompts] for w in words}
        for word, per_prompt in found.items():
            if not any(per_prompt):
                raise KeyError(f"blend word {word!r} is in none of the prompts {prompts!r}")
        return [sorted({c for w in words for c in found[w][k]}) for k in range(len(prompts))]

    def bind(self, layers: list[LayerInfo]) -> None:
        super().bind(layers)
        assert self.layers is not None
        what = "LocalBlend averages maps of one resolution, but blend_layers"
        one_resolution(layers, self.layers, what, self.layer_spec)

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        super().on_unet_call(hooks, first)
        if first:
            if not self.columns:
                raise RuntimeError("LocalBlend.prepare(tokenizer, source, targets) was not called")
            self.first_step = int(self.start * (hooks.total_steps or 0))
            self.maps, self.heads_seen, self.masks = None, 0, None

    def needs_probs(self, call: AttentionCall) -> bool:
        return True

    def observe(self, call: AttentionCall, probs: Tensor) -> None:
        """Add the conditional rows' maps ``[heads, q, keys]`` (summed over heads) to the store."""
        rows = [call.layout.row_of(s, "cond") for s in range(call.layout.num_samples)]
        summed = probs[rows].float().sum(dim=1)  # [samples, q, keys]
        self.maps = summed if self.maps is None else self.maps + summed
        self.heads_seen += int(probs.shape[1])
        self.query_hw = call.query_hw

    def after_step(self, step: int, latents: Tensor, layout: BatchLayout) -> Tensor:
        """``x_t = x_src + mask · (x_t − x_src)`` for every target, from the start step on."""
        if step < self.first_step or self.maps is None:
            return latents
        source = layout.rows[layout.indices(branch="source")[0]].sample
        targets = sorted({r.sample for r in layout.rows if r.branch == "target"})
        size = (int(latents.shape[-2]), int(latents.shape[-1]))
        keep = self._masks(self.columns, size, pool=True)
        cut = self._masks(self.sub_columns, size, pool=False) if self.subtract else None
        out = latents.clone()
        masks = []
        for t in targets:
            mask = keep[source] | keep[t]
            if cut is not None:
                mask = mask & ~(cut[source] | cut[t])
            masks.append(mask)
            m = mask.to(latents.dtype)
            out[t] = latents[source] + m * (latents[t] - latents[source])
        self.masks = torch.stack(masks)
        return out

    def _masks(self, columns: list[list[int]], size: tuple[int, int], pool: bool) -> Tensor:
        """Per sample ``[samples, H, W]`` bool: the words' normalised map above the threshold."""
        assert self.maps is not None and self.query_hw is not None
        h, w = self.query_hw
        mean = self.maps / self.heads_seen  # the mean over heads, layers (and steps, scaled)
        select = torch.zeros(mean.shape[0], mean.shape[-1], dtype=mean.dtype, device=mean.device)
        for k, cols in enumerate(columns):
            select[k, cols] = 1.0
        word = (mean * select[:, None, :]).sum(-1).reshape(-1, 1, h, w)
        if pool:
            word = F.max_pool2d(word, kernel_size=3, stride=1, padding=1)
        word = F.interpolate(word, size=size)
        peak = word.amax(dim=(-2, -1), keepdim=True)
        normalised = torch.where(peak > 0, word / peak.clamp(min=1e-30), torch.zeros_like(word))
        return (normalised > self.threshold)[:, 0]

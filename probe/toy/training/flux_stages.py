"""The toy Flux's own stages: the T5 text tower and the transformer, trained by rectified flow.

- ``t5``: a small ``T5EncoderModel`` (:func:`~probe.toy.training.flux_config.toy_t5_encoder`)
  trained as toy-v2's CLIP text tower was, by :func:`~probe.toy.training.train_text.
  train_contrastive` (the same image tower, batches and loss; the caption feature is the mean
  of T5's states), then frozen;
- ``transformer``: rectified flow as diffusers' Flux training scripts
  (``train_dreambooth_flux.py``) do it: ``x_t = (1 − t)·x0 + t·ε`` with ``t`` drawn
  logit-normal (``compute_density_for_timestep_sampling("logit_normal")``, mean 0, std 1), the
  target velocity ``ε − x0`` (``FlowMatchEulerDiscreteScheduler.step`` moves by
  ``(σ_next − σ)·v``, so toward ``x0``), the transformer called with ``timestep = t`` in [0, 1]
  (``FluxPipeline`` passes ``timestep / 1000``), latents packed 2×2 with ``FluxPipeline``'s own
  packing and ids. The captions are embedded by the frozen encoders exactly as
  ``FluxPipeline.encode_prompt`` embeds a prompt (:class:`FluxCaptions`), 10% of them empty
  for classifier-free guidance. EMA, warm-up and cosine decay, clipping and checkpoints are
  :class:`~probe.toy.training.train_stages.DenoiserTrainer`'s.

    text = FluxText(clip_tokenizer, clip, t5_tokenizer, train_t5(cfg, work, t5_tokenizer))
    transformer = train_transformer(cfg, work, text, latents, scenes, scaling)   # the EMA
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.training_utils import compute_density_for_timestep_sampling
from torch import Tensor
from transformers import T5EncoderModel, T5TokenizerFast

from probe.models.tiny_dit import tiny_t5_tokenizer
from probe.toy.training.flux_config import FluxTrainConfig, toy_flux_transformer, toy_t5_encoder
from probe.toy.training.train_common import load_state
from probe.toy.training.train_stages import DenoiserTrainer
from probe.toy.training.train_text import ContrastiveModel, train_contrastive
from probe.toy.world.world import Scene, caption


def toy_t5_tokenizer(words: list[str], tokens: int) -> T5TokenizerFast:
    """The T5 tokenizer of ``words`` (each one token), its ``model_max_length`` the joint text
    length ``tokens`` the toy was trained with."""
    tokenizer = tiny_t5_tokenizer(words)
    tokenizer.model_max_length = tokens
    return tokenizer


def train_t5(cfg: FluxTrainConfig, work: Path, tokenizer: T5TokenizerFast) -> T5EncoderModel:
    """The ``t5`` stage, resumable from ``work/t5.pt``; returns the encoder frozen (eval mode,
    ``requires_grad`` off)."""
    torch.manual_seed(cfg.seed)
    t5 = toy_t5_encoder(len(tokenizer), cfg.text_dim, cfg.t5_layers)
    model = ContrastiveModel(t5, cfg.embed_dim, pool="mean")
    model = train_contrastive(cfg, work, model, tokenizer, stage="t5")
    encoder: T5EncoderModel = model.text
    return encoder.eval().requires_grad_(False)


@dataclass
class FluxText:
    """The four text components of a ``FluxPipeline``: CLIP (pooled output) and T5 (states)."""

    tokenizer: Any
    text_encoder: Any
    tokenizer_2: T5TokenizerFast
    text_encoder_2: T5EncoderModel

    @torch.no_grad()
    def encode(self, text: str) -> tuple[Tensor, Tensor]:
        """T5 states ``[tokens, t5_width]`` and CLIP's pooled output ``[clip_width]`` of one
        prompt, as ``FluxPipeline.encode_prompt`` computes them (both padded to their length,
        no attention mask)."""
        kwargs: dict[str, Any] = {"padding": "max_length", "truncation": True}
        ids = self.tokenizer(
            text, max_length=self.tokenizer.model_max_length, return_tensors="pt", **kwargs
        ).input_ids
        pooled = self.text_encoder(ids, output_hidden_states=False).pooler_output[0]
        ids_2 = self.tokenizer_2(
            text, max_length=self.tokenizer_2.model_max_length, return_tensors="pt", **kwargs
        ).input_ids
        return self.text_encoder_2(ids_2, output_hidden_states=False)[0][0], pooled


class FluxCaptions:
    """Captions drawn afresh for each use (a ``dropout`` share empty), embedded once per
    distinct string by the frozen :class:`FluxText`."""

    def __init__(self, text: FluxText, dropout: float, rng: np.random.Generator) -> None:
        self.text, self.dropout, self.rng = text, dropout, rng
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}

    def embed(self, scenes: list[Scene]) -> tuple[Tensor, Tensor]:
        """T5 states ``[b, tokens, t5_width]`` and pooled CLIP ``[b, clip_width]``."""
        texts = ["" if self.rng.random() < self.dropout else caption(s, self.rng) for s in scenes]
        for t in texts:
            if t not in self.cache:
                self.cache[t] = self.text.encode(t)
        states, pooled = zip(*(self.cache[t] for t in texts), strict=True)
        return torch.stack(states), torch.stack(pooled)


def flow_loss(
    transformer: FluxTransformer2DModel, x0: Tensor, noise: Tensor, t: Tensor, states: Tensor,
    pooled: Tensor,
) -> Tensor:  # fmt: skip
    """Rectified flow's loss: the transformer's velocity at ``x_t = (1 − t)·x0 + t·noise``
    against ``noise − x0``, mean squared over the packed tokens.

    Args:
        transformer: the Flux transformer (no guidance embedding).
        x0: scaled latents ``[b, c, h, w]``; ``noise`` the same shape.
        t: times ``[b]`` in [0, 1] (1: pure noise), given to the transformer as they are.
        states: T5 states ``[b, tokens, t5_width]``; ``pooled`` CLIP's ``[b, clip_width]``.
    """
    b, c, h, w = x0.shape
    s = t.view(b, 1, 1, 1)
    x_t = FluxPipeline._pack_latents((1 - s) * x0 + s * noise, b, c, h, w)
    target = FluxPipeline._pack_latents(noise - x0, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x0.device, x0.dtype)
    txt_ids = torch.zeros(states.shape[1], 3, device=x0.device, dtype=x0.dtype)
    velocity = transformer(
        hidden_states=x_t, timestep=t, encoder_hidden_states=states, pooled_projections=pooled,
        txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
    )[0]  # fmt: skip
    return F.mse_loss(velocity, target)


class _FluxTrainer(DenoiserTrainer):
    """The transformer stage's loop: rectified flow (see the module)."""

    def __init__(
        self, cfg: FluxTrainConfig, work: Path, state: dict[str, Any],
        models: torch.nn.ModuleList, captions: FluxCaptions, latents: Tensor, scenes: list[Scene],
    ) -> None:  # fmt: skip
        budget = (cfg.transformer_minutes, cfg.max_transformer_steps)
        super().__init__("transformer", cfg, work, state, models, latents, scenes, budget)
        self.flux_cfg, self.captions = cfg, captions

    def loss(self, idx: np.ndarray) -> Tensor:
        x0 = self.latents[idx]
        states, pooled = self.captions.embed([self.scenes[i] for i in idx])
        noise = torch.randn(x0.shape, generator=self.gen)
        cfg = self.flux_cfg
        t = compute_density_for_timestep_sampling(
            "logit_normal", len(idx), cfg.logit_mean, cfg.logit_std, generator=self.gen
        )
        return flow_loss(self.models[0], x0, noise, t, states, pooled)


def train_transformer(
    cfg: FluxTrainConfig,
    work: Path,
    text: FluxText,
    latents: Tensor,
    scenes: list[Scene],
    scaling: float,
) -> FluxTransformer2DModel:
    """The ``transformer`` stage on the frozen ``text``, resumable from ``work/transformer.pt``;
    returns the EMA transformer. ``latents`` ``[n, 4, h, w]`` are the VAE's, unscaled (the
    pipeline decodes ``latents / scaling``; the shift is 0)."""
    torch.manual_seed(cfg.seed)
    pooled_dim = int(text.text_encoder.config.hidden_size)
    models = torch.nn.ModuleList([toy_flux_transformer(cfg, pooled_dim)])
    state = load_state(work / "transformer.pt")
    if "models" in state:
        models.load_state_dict(state["models"])
    captions = FluxCaptions(
        text, cfg.caption_dropout, np.random.default_rng([cfg.seed, 4, state["step"]])
    )
    trainer = _FluxTrainer(cfg, work, state, models, captions, latents * scaling, scenes)
    if not state["done"]:
        trainer.run()
    ema: FluxTransformer2DModel = trainer.ema[0]
    return ema

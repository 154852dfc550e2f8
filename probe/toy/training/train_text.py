"""The toy's first stage: a small CLIP trained on the toy world, whose text encoder is then frozen.

Stable Diffusion conditions on the text encoder of CLIP, which was trained contrastively on
images and captions and then frozen; the toy v2 does the same at toy scale. The model
(:class:`ContrastiveModel`):

- text: a ``CLIPTextModel`` (the exported ``text_encoder/``), CLIP's conventions: the
  tokenizer's start and end tokens, padding with the end token to 77, causal self-attention,
  the text feature is the final-layer-normed hidden state at the (first) end token, projected
  without bias;
- image: a small CNN over the rendered scene (CLIP also had ResNet image towers), projected;
- the loss: CLIP's symmetric InfoNCE over the batch with a learned temperature (logit scale
  initialised to 1/0.07, clamped at 100). The toy world has few distinct captions, so two
  images of a batch often share one, and "a dog standing in the park" is true of every dog in
  the park: where CLIP's targets are the diagonal, here each image's target is spread evenly
  over the batch's captions that are true of it (:func:`~probe.toy.world.world.caption_fits`), and
  each caption's over the images it is true of. With distinct, exclusive captions this is
  CLIP's loss exactly.

Logged (``stage: "text"``): the loss, the logit scale, the in-batch retrieval accuracy (the
caption an image picks is true of it), and every 100 steps the zero-shot accuracy on 256
held-out renders: colour and category read by picking the best of the captions
"a <colour> <category>".

The same loop trains the toy Flux's T5 encoder (:mod:`probe.toy.training.flux_stages`), whose
caption feature is the mean of its states (``pool="mean"``: T5 has no end-token pooler)::

    from probe.toy.training.train_text import train_text
    text_encoder = train_text(cfg, work, tokenizer)     # resumable from work/text.pt
    model = train_contrastive(cfg, work, ContrastiveModel(t5, 64, pool="mean"), t5_tok, "t5")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel, PreTrainedModel

from probe.models.tiny import tiny_text_encoder
from probe.toy.training.train_common import (
    Clock,
    Stage,
    cosine_lr,
    load_state,
    log_line,
    save_atomic,
)
from probe.toy.training.train_config import TrainConfig
from probe.toy.world.world import Scene, caption_fits, get_world, random_scene, render_scene

MAX_LOGIT_SCALE = 100.0
EVAL_EVERY = 100


class ImageTower(nn.Module):
    """A small CNN: images ``[b, 3, H, W]`` in [-1, 1] → features ``[b, dim]``."""

    def __init__(self, dim: int, width: int = 32) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        for c_in, c_out, stride in [(3, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1),
                                    (2 * w, 4 * w, 2), (4 * w, 4 * w, 2)]:  # fmt: skip
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(8 * w, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], -1))


class ContrastiveModel(nn.Module):
    """A toy CLIP: ``text`` (a ``CLIPTextModel``, or a ``T5EncoderModel`` for the toy Flux), an
    image CNN, projections, a logit scale.

    Args:
        text: the text tower (a transformers model with ``config.hidden_size``).
        embed_dim: the shared embedding width.
        pool: how a caption's feature is read from the text tower: ``"end"`` (CLIP's: the
            final-layer-normed state at the end token, ``pooler_output``) or ``"mean"`` (a T5
            encoder has no pooler: the mean of the final states over the non-padding tokens,
            the end token ``</s>`` included).
    """

    def __init__(self, text: PreTrainedModel, embed_dim: int, pool: str = "end") -> None:
        super().__init__()
        if pool not in ("end", "mean"):
            raise ValueError(f"pool {pool!r}: use 'end' (CLIP) or 'mean' (T5)")
        self.text, self.pool = text, pool
        self.text_projection = nn.Linear(text.config.hidden_size, embed_dim, bias=False)
        self.image = ImageTower(embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Unit text features ``[b, embed]`` from token ids ``[b, tokens]`` (padded as the
        pipeline pads them, no attention mask: the states are the ones the denoiser reads)."""
        out = self.text(input_ids=ids)
        if self.pool == "end":
            pooled = out.pooler_output
        else:
            keep = (ids != self.text.config.pad_token_id).unsqueeze(-1).float()
            pooled = (out.last_hidden_state * keep).sum(1) / keep.sum(1).clamp(min=1)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Unit image features ``[b, embed]``."""
        return F.normalize(self.image(x), dim=-1)

    def logits(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Image-text similarities × the learned scale ``[images, texts]``."""
        scale = self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        return scale * self.encode_image(x) @ self.encode_text(ids).T


def contrastive_loss(logits: torch.Tensor, fits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy of each image over the texts and each text over the
    images, the targets spread over the pairs that ``fits`` ``[images, texts]`` (bool) marks true
    (the diagonal at least). With ``fits`` the identity this is CLIP's loss."""
    fits = fits.float()
    to_text = -(F.log_softmax(logits, 1) * fits / fits.sum(1, keepdim=True)).sum(1).mean()
    to_image = -(F.log_softmax(logits, 0) * fits / fits.sum(0, keepdim=True)).sum(0).mean()
    return (to_text + to_image) / 2


class Tokens:
    """Token ids ``[77]`` of captions, padded with the end token (the tokenizer's pad), cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        for t in texts:
            if t not in self.cache:
                self.cache[t] = self.tokenizer(
                    t,
                    padding="max_length",
                    max_length=self.tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids[0]
        return torch.stack([self.cache[t] for t in texts])


def scene_batch(
    rng: np.random.Generator, n: int, size: int, world: str
) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """``n`` random scenes: images in [-1, 1] ``[n, 3, H, W]``, their captions and scenes."""
    pairs = [random_scene(rng, world) for _ in range(n)]
    images = np.stack([render_scene(s, size).image for _, s in pairs])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, [c for c, _ in pairs], [s for _, s in pairs]


@torch.no_grad()
def zero_shot(model: ContrastiveModel, tokens: Tokens, batch: tuple[Any, ...]) -> dict[str, float]:
    """Colour and category accuracy on held-out renders, each read as the best-matching caption
    "a <colour> <category>" of the world."""
    x, _, scenes = batch
    world = get_world(scenes[0].world)
    pairs = [(c, k) for c in world.palette for k in world.categories]
    text = model.encode_text(tokens([f"a {c} {k}" for c, k in pairs]))
    best = (model.encode_image(x) @ text.T).argmax(1).tolist()
    colour = np.mean([pairs[b][0] == s.colour for b, s in zip(best, scenes, strict=True)])
    category = np.mean([pairs[b][1] == s.category for b, s in zip(best, scenes, strict=True)])
    return {"zero_shot_colour": float(colour), "zero_shot_category": float(category)}


class _TextTrainer(Stage):
    """The contrastive stage's loop."""

    def __init__(
        self, cfg: TrainConfig, work: Path, model: ContrastiveModel, tokens: Tokens, state: Any,
        stage: str = "text",
    ) -> None:  # fmt: skip
        clock = Clock(cfg.text_minutes * 60, state["elapsed"])
        super().__init__(f"{stage} (contrastive)", work, cfg.max_text_steps, clock,
                         cfg.checkpoint_minutes, state["step"])  # fmt: skip
        self.cfg, self.model, self.tokens, self.stage = cfg, model, tokens, stage
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.text_lr, weight_decay=0.1)
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])
        self.rng = np.random.default_rng([cfg.seed, 5, self.step])
        self.last: dict[str, float] = {}
        self.evaluated = -1
        held_out = np.random.default_rng([cfg.seed, 6])
        self.held_out = scene_batch(
            held_out, min(256, 4 * cfg.text_batch), cfg.image_size, cfg.world
        )

    def train_step(self) -> dict[str, str] | None:
        cfg = self.cfg
        x, texts, scenes = scene_batch(self.rng, cfg.text_batch, cfg.image_size, cfg.world)
        fits = torch.tensor([[caption_fits(t, s) for t in texts] for s in scenes])
        logits = self.model.logits(x, self.tokens(texts))
        loss = contrastive_loss(logits, fits)
        lr = cosine_lr(cfg.text_lr, self.step, cfg.text_warmup, cfg.max_text_steps, self.clock)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        hit = fits[torch.arange(len(scenes)), logits.argmax(1)].float().mean().item()
        values = {"loss": loss.item(), "logit_scale": self.model.logit_scale.exp().item()}
        self.last = values | {"retrieval": hit, "lr": lr}
        last = cfg.max_text_steps is not None and self.step >= cfg.max_text_steps
        if self.step % 25 and not last:
            return None
        self.log(evaluate=self.step % EVAL_EVERY == 0 or last)
        return {"loss": f"{values['loss']:.3f}", "retrieval": f"{hit:.2f}"}

    def log(self, evaluate: bool) -> None:
        """A loss-log line with the latest values, and the zero-shot accuracy if ``evaluate``."""
        values = dict(self.last)
        if evaluate:
            values |= zero_shot(self.model, self.tokens, self.held_out)
            self.evaluated = self.step
        log_line(self.work, self.stage, self.step, self.clock.elapsed, **values)

    def run(self) -> None:
        """:meth:`Stage.run`, then a last zero-shot evaluation if the last step had none."""
        super().run()
        if self.last and self.evaluated != self.step:
            self.log(evaluate=True)

    def checkpoint(self, done: bool) -> None:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "done": done}
        state |= {"step": self.step, "elapsed": self.clock.elapsed}
        save_atomic(state, self.work / f"{self.stage}.pt")


def train_contrastive(
    cfg: TrainConfig, work: Path, model: ContrastiveModel, tokenizer: Any, stage: str = "text"
) -> ContrastiveModel:
    """Train ``model`` contrastively on the world's scenes (settings ``cfg.text_*``), resumable
    from ``work/<stage>.pt``, logged as ``stage``; returns it in eval mode."""
    state = load_state(work / f"{stage}.pt")
    if "model" in state:
        model.load_state_dict(state["model"])
    if not state["done"]:
        model.train()
        _TextTrainer(cfg, work, model, Tokens(tokenizer), state, stage).run()
    return model.eval()


def train_text(cfg: TrainConfig, work: Path, tokenizer: Any) -> CLIPTextModel:
    """The contrastive stage, resumable from ``work/text.pt``; returns the text encoder, frozen
    (``requires_grad`` off, eval mode): what the VAE and UNet stages and the export use."""
    torch.manual_seed(cfg.seed)
    text = tiny_text_encoder(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, hidden=cfg.text_dim
    )
    model = train_contrastive(cfg, work, ContrastiveModel(text, cfg.embed_dim), tokenizer)
    encoder: CLIPTextModel = model.text
    return encoder.eval().requires_grad_(False)

"""The image stages of the toy's training: the VAE, the latent pool and the UNet.

- ``vae``: a factor-4 (or 8) AutoencoderKL on rendered scenes (64×64 px → 16×16×4 latents), L1 +
  L2 with the object's pixels weighted up and a tiny KL term;
- ``latents``: a pool of rendered scenes encoded once; the latent scaling factor is measured
  there (1 / std of the latents), not taken from SD;
- ``unet``: the UNet (SD 1.x topology) on the *frozen* text encoder's hidden states, as Stable
  Diffusion trains on CLIP's: ε-prediction on the SD DDIM schedule, classifier-free guidance
  dropout (the empty caption), AdamW with warm-up and cosine decay over a wall-clock budget,
  gradient clipping and an EMA of the weights. The text encoder is not in the optimiser; each
  distinct caption is encoded once. The loop is :class:`DenoiserTrainer`'s, which the toy
  Flux's transformer stage shares (:mod:`probe.toy.training.flux_stages`).

Each stage resumes from its checkpoint in ``work``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from probe.models.tiny import sd_ddim_scheduler, tiny_unet
from probe.toy.training.train_common import (
    Clock,
    Stage,
    cosine_lr,
    load_state,
    log_line,
    save_atomic,
)
from probe.toy.training.train_config import TrainConfig
from probe.toy.world.world import Scene, caption, random_scene, render_scene

VAE_BLOCKS = {4: (16, 32, 32), 8: (16, 32, 32, 32)}
"""Channels of the toy VAE's blocks by downsampling factor (each block after the first halves)."""


def toy_vae(factor: int = 4, sample_size: int = 64) -> AutoencoderKL:
    """A factor-4 AutoencoderKL (64×64 px ↔ 16×16×4 latents), or factor 8 with one block more."""
    blocks = VAE_BLOCKS[factor]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=sample_size,
    )


def render_batch(
    rng: np.random.Generator, n: int, size: int, world: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random scenes as images in [-1, 1] ``[n, 3, H, W]`` and masks ``[n, 1, H, W]``."""
    renders = [render_scene(random_scene(rng, world)[1], size) for _ in range(n)]
    x = torch.from_numpy(np.stack([r.image for r in renders])).permute(0, 3, 1, 2).float()
    m = torch.from_numpy(np.stack([r.mask for r in renders]))[:, None].float()
    return x / 127.5 - 1, m


def vae_step(
    vae: AutoencoderKL, opt: torch.optim.Optimizer, x: torch.Tensor, mask: torch.Tensor
) -> tuple[float, float]:
    """One VAE update: L1 + L2 with object pixels weighted 5×, and a tiny KL term."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    weight = 1 + 4 * mask
    loss = ((rec - x).abs() * weight).mean() + ((rec - x) ** 2 * weight).mean()
    loss = loss + 1e-6 * post.kl().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    opt.step()
    psnr = 10 * math.log10(4 / max(F.mse_loss(rec.detach(), x).item(), 1e-10))
    return loss.item(), psnr


class _VAETrainer(Stage):
    """The VAE stage's loop."""

    def __init__(
        self, cfg: TrainConfig, work: Path, vae: AutoencoderKL, state: dict[str, Any]
    ) -> None:
        clock = Clock(cfg.vae_minutes * 60, state["elapsed"])
        super().__init__("vae", work, cfg.max_vae_steps, clock, cfg.checkpoint_minutes)
        self.cfg, self.vae, self.step = cfg, vae, state["step"]
        self.opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])
        self.rng = np.random.default_rng([cfg.seed, 1, self.step])

    def train_step(self) -> dict[str, str] | None:
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = cosine_lr(cfg.vae_lr, self.step, 100, cfg.max_vae_steps, self.clock)
        batch = render_batch(self.rng, cfg.vae_batch, cfg.image_size, cfg.world)
        loss, psnr = vae_step(self.vae, self.opt, *batch)
        self.step += 1
        if self.step % 25 == 0 or self.step == cfg.max_vae_steps:  # a short run logs its end
            log_line(self.work, "vae", self.step, self.clock.elapsed, loss=loss, psnr=psnr)
            return {"loss": f"{loss:.3f}", "psnr": f"{psnr:.1f}"}
        return None

    def checkpoint(self, done: bool) -> None:
        state = {"model": self.vae.state_dict(), "opt": self.opt.state_dict(), "done": done}
        state |= {"step": self.step, "elapsed": self.clock.elapsed}
        save_atomic(state, self.work / "vae.pt")


def train_vae(cfg: TrainConfig, work: Path) -> AutoencoderKL:
    """The VAE stage, resumable from ``work/vae.pt``; returns the VAE in eval mode."""
    torch.manual_seed(cfg.seed)
    vae = toy_vae(cfg.vae_factor, cfg.image_size)
    state = load_state(work / "vae.pt")
    if "model" in state:
        vae.load_state_dict(state["model"])
    if not state["done"]:
        _VAETrainer(cfg, work, vae, state).run()
    return vae.eval()


@torch.no_grad()
def encode_pool(
    cfg: TrainConfig, vae: AutoencoderKL, work: Path
) -> tuple[torch.Tensor, list[Scene], float]:
    """Render and encode the scene pool; measure the latent scaling factor."""
    path = work / "latents.safetensors"
    if path.exists():
        data = load_file(str(path))
        meta = json.loads((work / "latents.json").read_text())
        return data["latents"], [Scene(**s) for s in meta["scenes"]], meta["scaling_factor"]
    rng = np.random.default_rng([cfg.seed, 2])
    scenes = [random_scene(rng, cfg.world)[1] for _ in range(cfg.pool)]
    chunks = []
    for i in tqdm(range(0, len(scenes), 256), desc="encode pool"):
        imgs = np.stack([render_scene(s, cfg.image_size).image for s in scenes[i : i + 256]])
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
        chunks.append(vae.encode(x).latent_dist.mode())
    latents = torch.cat(chunks)
    scaling = float(1 / latents.std())
    save_file({"latents": latents.contiguous()}, str(path))
    meta = {"scaling_factor": scaling, "scenes": [s.to_dict() for s in scenes]}
    (work / "latents.json").write_text(json.dumps(meta))
    return latents, scenes, scaling


class FrozenCaptions:
    """Captions drawn afresh for each use, embedded by the frozen text encoder once per distinct
    string (``[77, text_dim]`` hidden states, as the pipeline computes them)."""

    def __init__(
        self, tokenizer: Any, text_encoder: Any, dropout: float, rng: np.random.Generator
    ) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval()
        self.dropout, self.rng = dropout, rng
        self.cache: dict[str, torch.Tensor] = {}

    def draw(self, scenes: list[Scene]) -> list[str]:
        """A fresh caption per scene; a ``dropout`` share of empty captions (for guidance)."""
        return ["" if self.rng.random() < self.dropout else caption(s, self.rng) for s in scenes]

    def embed(self, scenes: list[Scene]) -> torch.Tensor:
        """Hidden states ``[len(scenes), 77, text_dim]`` of :meth:`draw`'s captions."""
        return torch.stack([self._one(t) for t in self.draw(scenes)])

    @torch.no_grad()
    def _one(self, text: str) -> torch.Tensor:
        if text not in self.cache:
            ids = self.tokenizer(
                text,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            self.cache[text] = self.text_encoder(ids)[0][0]
        return self.cache[text]


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


class DenoiserTrainer(Stage):
    """A denoiser stage's loop: the denoiser (``models[0]``), its EMA, AdamW with warm-up and
    cosine decay over ``budget`` (minutes, or a step count), gradient clipping and the latent
    pool. Subclasses define :meth:`loss` (and keep their captions); checkpoints go to
    ``work/<name>.pt``, loss lines are logged as ``name``."""

    def __init__(
        self, name: str, cfg: TrainConfig, work: Path, state: dict[str, Any],
        models: torch.nn.ModuleList, latents: torch.Tensor, scenes: list[Scene],
        budget: tuple[float, int | None],
    ) -> None:  # fmt: skip
        minutes, max_steps = budget
        clock = Clock(minutes * 60, state["elapsed"])
        super().__init__(name, work, max_steps, clock, cfg.checkpoint_minutes)
        self.cfg, self.models = cfg, models
        self.latents, self.scenes, self.step = latents, scenes, state["step"]
        self.ema = copy.deepcopy(models).requires_grad_(False)
        self.opt = torch.optim.AdamW(models.parameters(), lr=cfg.lr, weight_decay=0.01)
        if "ema" in state:
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
        self.rng = np.random.default_rng([cfg.seed, 3, self.step])
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.step)
        self.losses: list[float] = []

    def loss(self, idx: np.ndarray) -> torch.Tensor:
        """The training loss on the pool's latents ``idx`` (a scalar with its graph)."""
        raise NotImplementedError

    def train_step(self) -> dict[str, str] | None:
        cfg = self.cfg
        loss = self.loss(self.rng.integers(0, len(self.scenes), cfg.batch))
        for g in self.opt.param_groups:
            g["lr"] = cosine_lr(cfg.lr, self.step, cfg.warmup, self.max_steps, self.clock)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.models.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        _ema_update(self.ema, self.models, min(cfg.ema_decay, (1 + self.step) / (10 + self.step)))
        self.losses.append(loss.item())
        if self.step % 50 == 0 or self.step == self.max_steps:  # a short run logs its end
            mean = float(np.mean(self.losses[-50:]))
            lr = self.opt.param_groups[0]["lr"]
            log_line(self.work, self.name, self.step, self.clock.elapsed, loss=mean, lr=lr)
            return {"loss": f"{mean:.4f}", "step": str(self.step)}
        return None

    def checkpoint(self, done: bool) -> None:
        state = {"models": self.models.state_dict(), "ema": self.ema.state_dict(), "done": done}
        state |= {"opt": self.opt.state_dict(), "step": self.step, "elapsed": self.clock.elapsed}
        save_atomic(state, self.work / f"{self.name}.pt")


class _UNetTrainer(DenoiserTrainer):
    """The UNet stage's loop: ε-prediction on the SD DDIM schedule."""

    def __init__(
        self,
        cfg: TrainConfig,
        work: Path,
        state: dict[str, Any],
        models: torch.nn.ModuleList,
        captions: FrozenCaptions,
        latents: torch.Tensor,
        scenes: list[Scene],
    ) -> None:
        budget = (cfg.unet_minutes, cfg.max_unet_steps)
        super().__init__("unet", cfg, work, state, models, latents, scenes, budget)
        self.captions, self.scheduler = captions, sd_ddim_scheduler()

    def loss(self, idx: np.ndarray) -> torch.Tensor:
        z = self.latents[idx]
        hidden = self.captions.embed([self.scenes[i] for i in idx])
        noise = torch.randn(z.shape, generator=self.gen)
        steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (len(idx),), generator=self.gen)
        return F.mse_loss(
            self.models[0](self.scheduler.add_noise(z, noise, t), t, hidden).sample, noise
        )


def train_unet(
    cfg: TrainConfig,
    work: Path,
    tokenizer: Any,
    text_encoder: Any,
    latents: torch.Tensor,
    scenes: list[Scene],
    scaling: float,
) -> UNet2DConditionModel:
    """The UNet stage on the frozen ``text_encoder``; returns the EMA UNet."""
    torch.manual_seed(cfg.seed)
    unet = tiny_unet(cross_attention_dim=cfg.text_dim, sample_size=latents.shape[-1])
    models = torch.nn.ModuleList([unet])
    state = load_state(work / "unet.pt")
    if "models" in state:
        models.load_state_dict(state["models"])
    rng = np.random.default_rng([cfg.seed, 4, state["step"]])
    captions = FrozenCaptions(
        tokenizer, text_encoder.requires_grad_(False), cfg.caption_dropout, rng
    )
    trainer = _UNetTrainer(cfg, work, state, models, captions, latents * scaling, scenes)
    if not state["done"]:
        trainer.run()
    return trainer.ema[0]

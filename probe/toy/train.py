"""Train the toy Stable Diffusion from scratch on the toy world, on a CPU.

Four stages, each resumable from its checkpoint in ``OUT/work``:

1. tokenizer: a CLIP-format BPE vocabulary of the template words (every word one token);
2. vae: a factor-4 AutoencoderKL on rendered scenes (64×64 px → 16×16×4 latents), L1 + L2 with
   the object's pixels weighted up and a tiny KL term;
3. latents: a pool of rendered scenes encoded once; the latent scaling factor is measured there
   (1 / std of the latents), not taken from SD;
4. unet: the UNet (SD 1.x topology) and the CLIP text encoder trained jointly with ε-prediction
   on the SD DDIM schedule, classifier-free guidance dropout, AdamW with warm-up and cosine decay
   over a wall-clock budget, gradient clipping and an EMA of the weights.

The EMA weights are exported as a diffusers folder in ``OUT/model`` with ``attnprobe.json``
(the sampling defaults). Example::

    from probe.toy.train import TrainConfig, train
    train(TrainConfig(out="runs/toy_train", unet_minutes=70))
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from probe.models.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer
from probe.models.loading import (
    assemble_pipeline,
    sd_ddim_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_words,
)
from probe.toy.world import Scene, caption, random_scene, render_scene


@dataclass
class TrainConfig:
    """Settings of a toy training run (the defaults are those of the shipped model)."""

    out: str | Path = "runs/toy_train"
    seed: int = 0
    image_size: int = 64
    text_dim: int = 64
    vae_minutes: float = 20.0
    vae_batch: int = 16
    vae_lr: float = 1e-3
    pool: int = 30000
    unet_minutes: float = 70.0
    batch: int = 48
    lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    checkpoint_minutes: float = 5.0
    threads: int = 2
    max_vae_steps: int | None = None
    max_unet_steps: int | None = None
    guidance_scale: float = 4.0
    num_inference_steps: int = 20
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def smoke(cls, out: str | Path) -> TrainConfig:
        """A few steps of every stage: the CI path of the real script."""
        return cls(
            out=out, vae_batch=4, pool=32, batch=4, warmup=2, max_vae_steps=3, max_unet_steps=3
        )


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(work: Path, stage: str, step: int, elapsed: float, **values: float) -> None:
    line = {"stage": stage, "step": step, "elapsed_s": round(elapsed, 1), **values}
    with open(work / "loss.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def toy_vae() -> AutoencoderKL:
    """A factor-4 AutoencoderKL: 64×64 px images ↔ 16×16×4 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def render_batch(rng: np.random.Generator, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random scenes as images in [-1, 1] ``[n, 3, H, W]`` and masks ``[n, 1, H, W]``."""
    renders = [render_scene(random_scene(rng)[1], size) for _ in range(n)]
    x = torch.from_numpy(np.stack([r.image for r in renders])).permute(0, 3, 1, 2).float()
    m = torch.from_numpy(np.stack([r.mask for r in renders]))[:, None].float()
    return x / 127.5 - 1, m


class _Clock:
    """Wall-clock budget that survives resuming (elapsed time is stored in the checkpoint)."""

    def __init__(self, budget_s: float, elapsed: float = 0.0) -> None:
        self.budget, self.before, self.start = budget_s, elapsed, time.monotonic()

    @property
    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.start

    @property
    def fraction(self) -> float:
        return min(1.0, self.elapsed / self.budget) if self.budget > 0 else 1.0


def train_vae(cfg: TrainConfig, work: Path) -> AutoencoderKL:
    """Stage 2: the VAE, resumable from ``work/vae.pt``."""
    ckpt_path = work / "vae.pt"
    torch.manual_seed(cfg.seed)
    vae = toy_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    state: dict[str, Any] = {"step": 0, "elapsed": 0.0, "done": False}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    if state["done"]:
        return vae.eval()
    rng = np.random.default_rng([cfg.seed, 1, state["step"]])
    clock, last = _Clock(cfg.vae_minutes * 60, state["elapsed"]), time.monotonic()
    unit = "step" if cfg.max_vae_steps else "s"
    bar = tqdm(total=cfg.max_vae_steps or round(clock.budget), desc="vae", unit=unit)
    step = state["step"]

    def checkpoint(done: bool) -> None:
        _save_atomic(
            {
                "model": vae.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "elapsed": clock.elapsed,
                "done": done,
            },
            ckpt_path,
        )

    try:
        while not _stage_over(cfg.max_vae_steps, step, clock):
            for g in opt.param_groups:
                g["lr"] = _cosine(cfg.vae_lr, step, 100, cfg.max_vae_steps, clock)
            loss, psnr = _vae_step(vae, opt, *render_batch(rng, cfg.vae_batch, cfg.image_size))
            step += 1
            if step % 25 == 0:
                _log(work, "vae", step, clock.elapsed, loss=loss, psnr=psnr)
                bar.set_postfix(loss=f"{loss:.3f}", psnr=f"{psnr:.1f}")
            bar.update(1 if cfg.max_vae_steps else round(clock.elapsed) - bar.n)
            if time.monotonic() - last > cfg.checkpoint_minutes * 60:
                checkpoint(False)
                last = time.monotonic()
    except KeyboardInterrupt:
        checkpoint(False)  # an interrupted run resumes from here
        raise
    bar.close()
    checkpoint(True)
    return vae.eval()


def _vae_step(
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


def _cosine(base: float, step: int, warmup: int, max_steps: int | None, clock: _Clock) -> float:
    """Linear warm-up, then cosine decay to a tenth over the step or time budget."""
    frac = step / max_steps if max_steps else clock.fraction
    return base * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def _stage_over(max_steps: int | None, step: int, clock: _Clock) -> bool:
    return step >= max_steps if max_steps is not None else clock.elapsed >= clock.budget


@torch.no_grad()
def encode_pool(
    cfg: TrainConfig, vae: AutoencoderKL, work: Path
) -> tuple[torch.Tensor, list[Scene], float]:
    """Stage 3: render and encode the scene pool; measure the latent scaling factor."""
    path = work / "latents.safetensors"
    if path.exists():
        data = load_file(str(path))
        meta = json.loads((work / "latents.json").read_text())
        return data["latents"], [Scene(**s) for s in meta["scenes"]], meta["scaling_factor"]
    rng = np.random.default_rng([cfg.seed, 2])
    scenes = [random_scene(rng)[1] for _ in range(cfg.pool)]
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


class _Captions:
    """Captions drawn afresh for each use, tokenized once per distinct string."""

    def __init__(self, tokenizer: Any, dropout: float, rng: np.random.Generator) -> None:
        self.tokenizer, self.dropout, self.rng = tokenizer, dropout, rng
        self.cache: dict[str, torch.Tensor] = {}

    def ids(self, scenes: list[Scene]) -> torch.Tensor:
        texts = ["" if self.rng.random() < self.dropout else caption(s, self.rng) for s in scenes]
        return torch.stack([self._one(t) for t in texts])

    def _one(self, text: str) -> torch.Tensor:
        if text not in self.cache:
            self.cache[text] = self.tokenizer(
                text,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids[0]
        return self.cache[text]


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


class _UNetTrainer:
    """The UNet stage's loop: one object holding the models, optimiser, clock and data."""

    def __init__(
        self,
        cfg: TrainConfig,
        work: Path,
        state: dict[str, Any],
        models: torch.nn.ModuleList,
        ema: torch.nn.ModuleList,
        opt: torch.optim.Optimizer,
        captions: _Captions,
        latents: torch.Tensor,
        scenes: list[Scene],
    ) -> None:
        self.cfg, self.work, self.models, self.ema, self.opt = cfg, work, models, ema, opt
        self.captions, self.latents, self.scenes = captions, latents, scenes
        self.scheduler = sd_ddim_scheduler()
        self.step = state["step"]
        self.rng = np.random.default_rng([cfg.seed, 3, self.step])
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.step)
        self.clock = _Clock(cfg.unet_minutes * 60, state["elapsed"])
        self.losses: list[float] = []

    def run(self) -> None:
        cfg = self.cfg
        bar = tqdm(
            total=cfg.max_unet_steps or round(self.clock.budget),
            desc="unet",
            unit="step" if cfg.max_unet_steps else "s",
        )
        last = time.monotonic()
        try:
            while not _stage_over(cfg.max_unet_steps, self.step, self.clock):
                self.train_step()
                if self.step % 50 == 0:
                    mean = float(np.mean(self.losses[-50:]))
                    lr = self.opt.param_groups[0]["lr"]
                    _log(self.work, "unet", self.step, self.clock.elapsed, loss=mean, lr=lr)
                    bar.set_postfix(loss=f"{mean:.4f}", step=self.step)
                bar.update(1 if cfg.max_unet_steps else round(self.clock.elapsed) - bar.n)
                if time.monotonic() - last > cfg.checkpoint_minutes * 60:
                    self.checkpoint(done=False)
                    last = time.monotonic()
        except KeyboardInterrupt:
            self.checkpoint(done=False)  # an interrupted run resumes from here
            raise
        bar.close()
        self.checkpoint(done=True)

    def train_step(self) -> None:
        unet, text_encoder = self.models[0], self.models[1]
        idx = self.rng.integers(0, len(self.scenes), self.cfg.batch)
        z = self.latents[idx]
        ids = self.captions.ids([self.scenes[i] for i in idx])
        noise = torch.randn(z.shape, generator=self.gen)
        t = torch.randint(
            0, self.scheduler.config.num_train_timesteps, (len(idx),), generator=self.gen
        )
        pred = unet(self.scheduler.add_noise(z, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        for g in self.opt.param_groups:
            g["lr"] = _cosine(
                self.cfg.lr, self.step, self.cfg.warmup, self.cfg.max_unet_steps, self.clock
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.models.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        _ema_update(
            self.ema, self.models, min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        )
        self.losses.append(loss.item())

    def checkpoint(self, done: bool) -> None:
        _save_atomic(
            {
                "models": self.models.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "step": self.step,
                "elapsed": self.clock.elapsed,
                "done": done,
            },
            self.work / "unet.pt",
        )


def train_unet(
    cfg: TrainConfig,
    work: Path,
    tokenizer: Any,
    latents: torch.Tensor,
    scenes: list[Scene],
    scaling: float,
) -> tuple[UNet2DConditionModel, Any]:
    """Stage 4: UNet and text encoder, jointly; returns their EMA copies."""
    ckpt_path = work / "unet.pt"
    torch.manual_seed(cfg.seed)
    text_encoder = tiny_text_encoder(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, hidden=cfg.text_dim
    )
    unet = tiny_unet(cross_attention_dim=cfg.text_dim, sample_size=latents.shape[-1])
    models = torch.nn.ModuleList([unet, text_encoder])
    ema = copy.deepcopy(models).requires_grad_(False)
    opt = torch.optim.AdamW(models.parameters(), lr=cfg.lr, weight_decay=0.01)
    state: dict[str, Any] = {"step": 0, "elapsed": 0.0, "done": False}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        models.load_state_dict(state["models"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
    if not state["done"]:
        rng = np.random.default_rng([cfg.seed, 4, state["step"]])
        captions = _Captions(tokenizer, cfg.caption_dropout, rng)
        trainer = _UNetTrainer(
            cfg, work, state, models, ema, opt, captions, latents * scaling, scenes
        )
        trainer.run()
    return ema[0], ema[1]


def export(
    cfg: TrainConfig,
    out: Path,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: Any,
    tokenizer: Any,
    scaling: float,
) -> Path:
    """Save the pipeline as a diffusers folder with its sampling defaults."""
    vae.register_to_config(scaling_factor=scaling)
    pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet)
    folder = out / "model"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    defaults = {
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "height": cfg.image_size,
        "width": cfg.image_size,
    }
    (folder / "attnprobe.json").write_text(json.dumps(defaults, indent=2) + "\n")
    return folder


def keep_record(out: Path, folder: Path) -> None:
    """Copy the run's settings and loss log into the model folder (``training/``)."""
    record = folder / "training"
    record.mkdir(exist_ok=True)
    shutil.copy(out / "train_config.json", record / "train_config.json")
    shutil.copy(out / "work" / "loss.jsonl", record / "loss.jsonl")


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) every stage and export the model; returns the model folder."""
    out = Path(cfg.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    (out / "train_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0 = time.monotonic()
        # closed: the toy learns these words only, so a prompt with another one is refused
        tok_dir = write_clip_tokenizer(tiny_words(), work / "tokenizer", closed=True)
        tokenizer = load_clip_tokenizer(tok_dir)
        vae = train_vae(cfg, work).requires_grad_(False)
        latents, scenes, scaling = encode_pool(cfg, vae, work)
        unet, text_encoder = train_unet(cfg, work, tokenizer, latents, scenes, scaling)
        folder = export(cfg, out, vae, unet, text_encoder, tokenizer, scaling)
        _log(work, "export", 0, time.monotonic() - t0, scaling_factor=scaling)
        keep_record(out, folder)
        return folder
    finally:
        torch.set_num_threads(threads)

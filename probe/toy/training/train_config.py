"""The settings of a toy training run (:class:`TrainConfig`): the defaults are toy v2's recipe.

Example::

    TrainConfig(out="runs/toy_v2")                     # world v2, every stage, ~2.5 h
    TrainConfig.smoke("runs/smoke")                    # a few steps of every stage
    TrainConfig(out="runs/toy_128", image_size=128)    # 32×32 latents (factor-4 VAE)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Settings of a toy training run.

    Budgets are wall-clock minutes (the learning rate follows a cosine over the budget);
    ``max_*_steps`` replace a budget by a step count (the smoke run). The stages, in order:
    ``judge`` (the category judge of ``world``), ``text`` (the contrastive image-text model whose
    text encoder is then frozen), ``vae``, the latent pool, ``unet``.
    """

    out: str | Path = "runs/toy_train"
    world: str = "v2"
    seed: int = 0
    image_size: int = 64
    vae_factor: int = 4
    text_dim: int = 64
    embed_dim: int = 64
    text_minutes: float = 15.0
    text_batch: int = 128
    text_lr: float = 1e-3
    text_warmup: int = 200
    vae_minutes: float = 20.0
    vae_batch: int = 16
    vae_lr: float = 1e-3
    pool: int = 30000
    unet_minutes: float = 100.0
    batch: int = 48
    lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    judge_examples: int = 24000
    judge_epochs: int = 12
    checkpoint_minutes: float = 5.0
    threads: int = 2
    max_text_steps: int | None = None
    max_vae_steps: int | None = None
    max_unet_steps: int | None = None
    guidance_scale: float = 4.0
    num_inference_steps: int = 20
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vae_factor not in (4, 8):
            raise ValueError(f"vae_factor {self.vae_factor}: the toy VAE downsamples by 4 or 8")
        if self.image_size % (8 * self.vae_factor):
            raise ValueError(
                f"image_size {self.image_size}: use a multiple of {8 * self.vae_factor} so the "
                f"UNet's three downsamplings of the {self.vae_factor}× latent stay whole"
            )

    @property
    def latent_size(self) -> int:
        """Latent positions per side (64 px through a factor-4 VAE: 16)."""
        return self.image_size // self.vae_factor

    @classmethod
    def smoke(cls, out: str | Path, **changes: Any) -> TrainConfig:
        """A few steps of every stage: the CI path of the real script."""
        small: dict[str, Any] = {
            "text_batch": 8, "text_warmup": 2, "max_text_steps": 3, "vae_batch": 4, "pool": 32,
            "batch": 4, "warmup": 2, "max_vae_steps": 3, "max_unet_steps": 3,
            "judge_examples": 256, "judge_epochs": 1,
        }  # fmt: skip
        return cls(out=out, **(small | changes))

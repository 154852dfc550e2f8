"""What the benchmarks run on: the SD 1.5 and SDXL UNets from their configs, and a UNet-only
sampling rig.

Weights do not change the cost of a forward pass, so the SD 1.5 UNet is built from its
``unet/config.json`` (``tests/replicas/sd15/unet/config.json``) with random weights, and fed
random text embeddings ``[rows, 77, 768]``; the SDXL base UNet likewise
(``tests/replicas/sdxl-base/unet/config.json``), fed random ``[rows, 77, 2048]`` embeddings and
random pooled embeddings with the time ids of the size generated
(:func:`random_conditioning`). :class:`UNetRig` looks enough like a pipeline
(``unet``, ``scheduler``, ``do_classifier_free_guidance``, ``device``) for
:class:`probe.attention.hooks.AttentionHooks`, :func:`probe.recording.recorder.record_attention`
and :func:`editing.sampling.denoise` to drive it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import Tensor

from probe.families import Conditioning
from probe.models import sd_ddim_scheduler

REPLICAS = Path(__file__).resolve().parents[1] / "tests/replicas"
SD15_CONFIG = REPLICAS / "sd15/unet/config.json"
SDXL_CONFIG = REPLICAS / "sdxl-base/unet/config.json"
TEXT_TOKENS = 77


def _unet_from_config(path: Path, seed: int) -> UNet2DConditionModel:
    config = {k: v for k, v in json.loads(path.read_text()).items() if k[0] != "_"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config)
    return unet.eval().requires_grad_(False)


def sd15_unet(seed: int = 0) -> UNet2DConditionModel:
    """The Stable Diffusion 1.5 UNet (860 M parameters, fp32) with random weights.

    Example:
        >>> unet = sd15_unet()
        >>> unet.config.cross_attention_dim
        768
    """
    return _unet_from_config(SD15_CONFIG, seed)


def sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """The SDXL base 1.0 UNet (2.6 G parameters, ~9.6 GiB in fp32) with random weights.

    Example:
        >>> unet = sdxl_unet()
        >>> unet.config.cross_attention_dim, unet.config.addition_embed_type
        (2048, 'text_time')
    """
    return _unet_from_config(SDXL_CONFIG, seed)


@dataclass
class UNetRig:
    """A bare UNet with a DDIM scheduler, shaped like a pipeline for the hooks.

    Attributes:
        unet: the UNet.
        scheduler: SD's DDIM schedule.
        do_classifier_free_guidance: whether the batch holds unconditional rows first.
        name: how tables name the model.
    """

    unet: UNet2DConditionModel
    scheduler: DDIMScheduler = field(default_factory=sd_ddim_scheduler)
    do_classifier_free_guidance: bool = True
    name: str = "unet"

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def params_mib(self) -> float:
        """Size of the weights in MiB."""
        n = sum(p.numel() * p.element_size() for p in self.unet.parameters())
        return round(n / 2**20, 1)


def random_latents(rig: UNetRig, samples: int, latent: int, seed: int = 0) -> Tensor:
    """Initial noise ``[samples, 4, latent, latent]`` (the same noise for every sample)."""
    g = torch.Generator().manual_seed(seed)
    channels = rig.unet.config.in_channels
    noise = torch.randn(1, channels, latent, latent, generator=g)
    return noise.repeat(samples, 1, 1, 1) * rig.scheduler.init_noise_sigma


def random_embeddings(rig: UNetRig, rows: int, seed: int = 1) -> Tensor:
    """Random text embeddings ``[rows, 77, cross_attention_dim]``."""
    g = torch.Generator().manual_seed(seed)
    dim = rig.unet.config.cross_attention_dim
    return torch.randn(rows, TEXT_TOKENS, dim, generator=g)


def random_conditioning(rig: UNetRig, rows: int, latent: int, seed: int = 1) -> Conditioning:
    """What every row needs: random text embeddings and, for an SDXL UNet, a random pooled
    embedding ``[rows, pooled]`` and the time ids ``[rows, 6]`` of a square image of
    ``latent * 8`` pixels (no crop), as diffusers' SDXL pipeline makes them."""
    embeddings = random_embeddings(rig, rows, seed)
    config = rig.unet.config
    if config.get("addition_embed_type") != "text_time":
        return Conditioning(embeddings)
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    g = torch.Generator().manual_seed(seed + 1)
    px = float(latent * 8)
    time_ids = torch.tensor([[px, px, 0.0, 0.0, px, px]]).repeat(rows, 1)
    text_embeds = torch.randn(rows, pooled, generator=g)
    return Conditioning(embeddings, {"text_embeds": text_embeds, "time_ids": time_ids})


@torch.no_grad()
def unet_loop(
    rig: UNetRig,
    latents: Tensor,
    embeddings: Tensor | Conditioning,
    steps: int,
    guidance_scale: float = 7.5,
) -> Tensor:
    """A plain guided DDIM loop, as diffusers' pipeline runs it, without VAE or text encoder.

    Args:
        latents: ``[samples, 4, h, w]``.
        embeddings: ``[2 * samples, 77, dim]`` (unconditional rows first) when the rig
            guides, else ``[samples, 77, dim]``; or a :class:`Conditioning` of those rows (an
            SDXL UNet needs one: :func:`random_conditioning`).
        steps: DDIM steps.

    Returns:
        Final latents ``[samples, 4, h, w]``.
    """
    scheduler = rig.scheduler
    scheduler.set_timesteps(steps)
    guided = rig.do_classifier_free_guidance
    rows = embeddings if isinstance(embeddings, Conditioning) else Conditioning(embeddings)
    for t in scheduler.timesteps:
        model_in = torch.cat([latents] * 2) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        noise = rig.unet(model_in, t, **rows.unet_kwargs()).sample
        if guided:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(noise, t, latents).prev_sample
    return latents


def toy_like_unet(cross_attention_dim: int = 64, seed: int = 0) -> UNet2DConditionModel:
    """The toy model's UNet architecture (channels 32/64/64/64) with random weights."""
    from probe.models.tiny import tiny_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet(cross_attention_dim=cross_attention_dim, sample_size=16)
    return unet.eval().requires_grad_(False)


def tiny_xl_like_unet(seed: int = 0) -> UNet2DConditionModel:
    """``tiny-xl``'s UNet (SDXL topology, 28 layers) with random weights: the quick mode's
    stand-in for the SDXL base UNet."""
    from probe.models.tiny import tiny_xl_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_xl_unet()
    return unet.eval().requires_grad_(False)


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory and library versions, for the results' header."""
    import os
    import platform

    import diffusers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        mem = round(int(meminfo.read_text().split()[1]) / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "platform": platform.platform(),
    }

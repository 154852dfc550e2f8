"""The sampler of an edit: timesteps, the model call with guidance, the scheduler step, decoding.

    sampler = family_of(pipe).sampler(pipe, num_steps=50, latent_hw=(64, 64))
    latents = sampler.noise(seed=0, n=2)
    for t in sampler.timesteps:
        latents = sampler.denoise_step(t, latents, cond, guided=True, guidance_scale=7.5)
    images = sampler.decode(latents)

Every published UNet editing method (FPE, Prompt-to-Prompt, null-text inversion, MasaCtrl)
samples and inverts with DDIM at eta 0, whatever scheduler the checkpoint folder ships (SD 1.5
ships PNDM, SD 2.x Euler, PixArt-Σ DPM-Solver): :class:`DDIMSampler` builds a ``DDIMScheduler``
from ``pipe.scheduler.config``. ``from_config`` keeps the schedule (``num_train_timesteps``,
``beta_*``, ``trained_betas``), ``prediction_type``, ``steps_offset``, ``set_alpha_to_one`` and
``timestep_spacing`` where the config sets them, drops the other class's own keys (PNDM's
``skip_prk_steps``, Euler's sigma options), and falls back to DDIM's defaults for values the
folder's file left out (e.g. Euler's default ``timestep_spacing`` "linspace" becomes DDIM's
"leading"). Only ``clip_sample`` is set here when the config does not say: ``False``, as the
official code sets it. For SD 1.5's folder this gives the official FPE / Prompt-to-Prompt
scheduler (``beta 0.00085-0.012 scaled_linear, clip_sample False, set_alpha_to_one False``) with
the folder's ``steps_offset: 1`` (the official code leaves it at 0: its timesteps are 980, 960,
..., 0 where attnprobe's are 981, 961, ..., 1).

Rectified-flow models (SD3, Flux) are sampled by their own deterministic Euler scheduler
(:class:`FlowSampler`: a new ``FlowMatchEulerDiscreteScheduler`` from the folder's config; the
family sets the shift). ``pipe.scheduler`` is never changed.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image
from torch import Tensor

from probe.families.conditioning import Conditioning
from probe.models.placement import execution_device
from probe.models.schedulers import scheduler_settings

EDIT_ETA = 0.0
"""DDIM's eta in every edit and inversion: deterministic sampling, as the authors run it."""


def ddim_scheduler(pipe: Any, **overrides: Any) -> DDIMScheduler:
    """A new DDIM scheduler from the pipeline's scheduler config (the pipeline keeps its own).

    Args:
        pipe: the pipeline.
        overrides: config values to set (the family's ``ddim_overrides``).

    Returns:
        A ``DDIMScheduler`` with the folder's schedule, prediction type, ``steps_offset`` and
        ``set_alpha_to_one``, ``clip_sample`` False unless the config sets it.

    Example:
        >>> type(pipe.scheduler).__name__, type(ddim_scheduler(pipe)).__name__
        ('PNDMScheduler', 'DDIMScheduler')
    """
    config = pipe.scheduler.config
    clip = bool(config.get("clip_sample", False))
    return DDIMScheduler.from_config(config, **{"clip_sample": clip, **overrides})


def inverse_scheduler(scheduler: DDIMScheduler) -> DDIMInverseScheduler:
    """The DDIM inverse scheduler of the same config (for DDIM inversion); only the keys
    ``DDIMInverseScheduler`` takes are passed on (PNDM's ``skip_prk_steps`` would warn)."""
    takes = inspect.signature(DDIMInverseScheduler.__init__).parameters
    return DDIMInverseScheduler.from_config(
        {k: v for k, v in scheduler.config.items() if k in takes}
    )


class Sampler:
    """One generation's sampling loop, step by step (the loop itself is the caller's).

    Args:
        family: the model family (its :meth:`~probe.families.base.ModelFamily.predict` calls
            the denoiser).
        pipe: the pipeline.
        scheduler: a new scheduler, timesteps set.
        latent_hw: the VAE latent (height, width) generated.
        eta: the eta the steps use (None: the scheduler has none).
    """

    def __init__(
        self, family: Any, pipe: Any, scheduler: Any, latent_hw: tuple[int, int],
        eta: float | None = None,
    ) -> None:  # fmt: skip
        self.family, self.pipe, self.scheduler = family, pipe, scheduler
        self.latent_hw = latent_hw
        self.eta = eta

    @property
    def timesteps(self) -> Tensor:
        return self.scheduler.timesteps

    def noise(self, seed: int, n: int) -> Tensor:
        """The shared initial noise of ``n`` rows: one draw ``[1, C, h, w]`` for ``seed``,
        scaled to the scheduler's first sigma, repeated."""
        channels = self.family.latent_channels(self.pipe)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(1, channels, *self.latent_hw, generator=generator)
        denoiser = self.family.denoiser(self.pipe)
        sigma = float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        noise = noise.to(device=execution_device(self.pipe), dtype=denoiser.dtype) * sigma
        return noise.repeat(n, 1, 1, 1)

    def predict(self, t: Tensor, latents: Tensor, cond: Conditioning, guided: bool,
                guidance_scale: float | Tensor) -> Tensor:  # fmt: skip
        """The guided model output for ``latents`` ``[n, C, h, w]`` (both halves under
        classifier-free guidance, combined). ``guidance_scale``: one scale, or one per row
        ``[n]`` (Stable Flow's reference row at 1, its edits at 3)."""
        model_in = torch.cat([latents] * 2) if guided else latents
        if hasattr(self.scheduler, "scale_model_input"):
            model_in = self.scheduler.scale_model_input(model_in, t)
        out = self.family.predict(self.pipe, model_in, t, cond, guidance_scale=guidance_scale)
        if guided:
            uncond, text = out.chunk(2)
            out = uncond + row_scales(guidance_scale, text) * (text - uncond)
        return out

    def step(self, output: Tensor, t: Tensor, latents: Tensor) -> Tensor:
        """One scheduler step from ``latents`` with the model ``output``."""
        kwargs = {} if self.eta is None else {"eta": self.eta}
        return self.scheduler.step(output, t, latents, return_dict=False, **kwargs)[0]

    def denoise_step(self, t: Tensor, latents: Tensor, cond: Conditioning, guided: bool,
                     guidance_scale: float | Tensor) -> Tensor:  # fmt: skip
        """:meth:`predict` then :meth:`step`: the latents one step later."""
        return self.step(self.predict(t, latents, cond, guided, guidance_scale), t, latents)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> list[Image.Image]:
        """Latents ``[n, C, h, w]`` → PIL images (unscaled, and shifted where the VAE says)."""
        return decode_latents(self.pipe, latents)

    def settings(self) -> dict[str, Any]:
        """What settings files say about it: class, key config, eta, and the class of the
        folder's own scheduler it was built from."""
        return {
            **scheduler_settings(self.scheduler, self.eta),
            "built_from": type(self.pipe.scheduler).__name__,
        }


class DDIMSampler(Sampler):
    """DDIM at eta 0 from the folder's scheduler config (see the module)."""

    def __init__(self, family: Any, pipe: Any, num_steps: int, latent_hw: tuple[int, int]):
        scheduler = family.ddim_scheduler(pipe)
        scheduler.set_timesteps(num_steps, device=execution_device(pipe))
        super().__init__(family, pipe, scheduler, latent_hw, EDIT_ETA)


class FlowSampler(Sampler):
    """The folder's flow-match Euler scheduler (a new instance), deterministic.

    Args:
        mu: the resolution-dependent shift (``use_dynamic_shifting``), from the family.
        sigmas: explicit sigmas (Flux's ``linspace(1, 1/N, N)``), else the scheduler's own.
    """

    def __init__(
        self, family: Any, pipe: Any, num_steps: int, latent_hw: tuple[int, int],
        mu: float | None = None, sigmas: Any = None,
    ) -> None:  # fmt: skip
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        kwargs: dict[str, Any] = {"mu": mu} if mu is not None else {}
        if sigmas is not None:
            kwargs["sigmas"] = sigmas
        scheduler.set_timesteps(num_steps, device=execution_device(pipe), **kwargs)
        super().__init__(family, pipe, scheduler, latent_hw, None)
        self.mu = mu

    def settings(self) -> dict[str, Any]:
        """As :meth:`Sampler.settings`; with dynamic shifting (FLUX.1-dev) also the config's
        ``base_shift``, ``max_shift``, ``base_image_seq_len``, ``max_image_seq_len`` and the
        ``mu`` this image size gave, without which the sigmas cannot be told from the file
        (the static ``shift`` is then unused)."""
        said = super().settings()
        config = self.scheduler.config
        if config.get("use_dynamic_shifting") and self.mu is not None:
            said["config"] |= {key: config[key] for key in DYNAMIC_SHIFT_KEYS}
            said["mu"] = self.mu
        return said


DYNAMIC_SHIFT_KEYS = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
"""The flow-match config keys that set ``mu`` from the image's token count."""


def flow_shift(config: Any, tokens: int, max_shift: float) -> float:
    """The shift ``mu`` for ``tokens`` image tokens, as diffusers' SD3 and Flux pipelines
    compute it (linear in the token count between the config's base and max)."""
    base_len = config.get("base_image_seq_len", 256)
    max_len = config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", max_shift)
    slope = (top - base) / (max_len - base_len)
    return float(tokens * slope + base - slope * base_len)


@torch.no_grad()
def decode_latents(pipe: Any, latents: Tensor) -> list[Image.Image]:
    """Latents ``[n, C, h, w]`` → PIL images, as the family's pipeline decodes them."""
    config = pipe.vae.config
    shift = config.get("shift_factor") or 0.0
    images = pipe.vae.decode(latents / config.scaling_factor + shift).sample
    return pipe.image_processor.postprocess(images, output_type="pil")


def row_scales(scale: float | Tensor, like: Tensor) -> float | Tensor:
    """A guidance scale to multiply rows ``[n, ...]`` of ``like`` by: a float as it is, one
    scale per row ``[n]`` shaped ``[n, 1, …]`` on ``like``'s device and dtype.

    Raises:
        ValueError: per-row scales of another count than the rows'.
    """
    if not isinstance(scale, Tensor):
        return scale
    n = like.shape[0]
    if scale.shape != (n,):
        raise ValueError(f"{scale.numel()} guidance scales for {n} rows: give one per row")
    return scale.to(like.device, like.dtype).view(n, *[1] * (like.dim() - 1))

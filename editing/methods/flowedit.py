"""FlowEdit (Kulikov et al., ICCV 2025): inversion-free editing of a real image on a flow model.

    result = flowedit(pipe, "car.png", "a red car", "a blue car")   # the authors' defaults
    result.image.save("blue.png")

As the authors' ``FlowEditSD3`` and ``FlowEditFLUX`` (fallenshock/FlowEdit, ``FlowEdit_utils.py``;
settings in ``SD3_exp.yaml`` and ``FLUX_exp.yaml``, image encoding in ``run_script.py``). With the
family's edit sampler (:class:`~probe.families.sampler.FlowSampler`: sigmas
``σ_0 = 1 > … > σ_N = 0``, timesteps ``t_i``) and ``x_src`` the encoded image (VAE mean/mode,
``(· − shift_factor) · scaling_factor``), ``z = x_src``; for every step ``i`` with
``N − i ≤ n_max`` (the first ``N − n_max`` steps are skipped):

- while ``N − i > n_min``: ``n_avg`` times draw ``ε``, ``z_src = (1 − σ_i)·x_src + σ_i·ε``,
  ``z_tar = z + z_src − x_src``, and average ``ΔV = V_tar(z_tar) − V_src(z_src)`` (the target
  prompt's velocity at the target guidance, the source's at the source guidance, both at
  ``t_i``); then ``z += (σ_{i+1} − σ_i)·ΔV``;
- the last ``n_min`` steps sample plainly: at the first of them draw ``ε``,
  ``x = z + (1 − σ_i)·x_src + σ_i·ε − x_src``, then ``x += (σ_{i+1} − σ_i)·V_tar(x)`` each step.

The result is ``z`` (``n_min = 0``) or ``x``. Guidance goes as the family guides: SD3 and a Flux
without a guidance embedding by classifier-free guidance with the empty prompt's rows (one
transformer call for all four rows; the authors' negative prompt is ``""``); FLUX.1-dev by its
guidance input, one call per prompt as the authors do. The noise is attnprobe's own rule (the
authors draw ``torch.randn_like`` from the global generator seeded once): one CPU generator seeded
with ``seed``, one ``[1, C, h, w]`` draw per (step, average) in order, then one for the switch to
plain sampling. The latents are updated in float32, as the authors do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from editing.flow_inversion import encode_flow_image, flow_sampler, flow_size
from probe.attention.clock import denoising_steps
from probe.families import Conditioning, family_of
from probe.families.sampler import FlowSampler
from probe.models.vocabulary import check_known_words


@dataclass(frozen=True)
class FlowEditDefaults:
    """The authors' settings for one family (their experiment YAML files)."""

    num_steps: int
    n_max: int
    source_guidance: float
    target_guidance: float
    seed: int
    n_min: int = 0
    n_avg: int = 1


FLOWEDIT_DEFAULTS = {
    "sd3": FlowEditDefaults(num_steps=50, n_max=33, source_guidance=3.5, target_guidance=13.5,
                           seed=42),
    "flux": FlowEditDefaults(num_steps=28, n_max=24, source_guidance=1.5, target_guidance=5.5,
                            seed=10),
}  # fmt: skip
"""By family: SD3 medium (``SD3_exp.yaml``) and FLUX.1-dev (``FLUX_exp.yaml``)."""


@dataclass
class FlowEditResult:
    """A FlowEdit and its settings.

    Attributes:
        image: the edited image.
        latents: its latents ``[1, C, h, w]``.
        source_latents: the encoded image ``x_src`` ``[1, C, h, w]``.
        settings: every setting used (JSON-serialisable).
    """

    image: Image.Image
    latents: Tensor
    source_latents: Tensor
    settings: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def flowedit(
    pipe: Any,
    image: str | Path | Image.Image | np.ndarray,
    source_prompt: str,
    target_prompt: str,
    num_steps: int | None = None,
    n_max: int | None = None,
    n_min: int | None = None,
    n_avg: int | None = None,
    source_guidance: float | None = None,
    target_guidance: float | None = None,
    seed: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> FlowEditResult:
    """Edit a real image from ``source_prompt`` to ``target_prompt`` without inversion.

    Args:
        pipe: an SD3 or Flux pipeline.
        image: a file, a PIL image or a uint8 array ``[H, W, 3]`` of exactly the size edited.
        source_prompt, target_prompt: what the image shows, and what it should show.
        num_steps: sampler steps ``N``; n_max: steps run (the first ``N − n_max`` skipped);
            n_min: last steps sampled plainly; n_avg: noise draws averaged per step.
        source_guidance, target_guidance: guidance of the source and target velocities.
        seed: seed of the noise draws.
        height, width: the image's size in pixels (default: the model's).
        (``None``: the authors' value for the family, :data:`FLOWEDIT_DEFAULTS`; a family
        without one takes SD3's. ``n_max`` at another ``num_steps`` keeps the authors' fraction
        of the steps: :func:`authors_n_max`.)

    Returns:
        :class:`FlowEditResult`.

    Raises:
        NotImplementedError: a UNet or PixArt pipeline (edit it with ``edit(...,
            inversion=ddim_invert(pipe, image))``).
        ValueError: an image of another size or mode, or bad ``n_min``/``n_max``/``n_avg``.

    Example:
        >>> r = flowedit(pipe, "cat.png", "a cat on grass", "a dog on grass")
        >>> r.image.save("dog.png"); r.settings["n_max"]
        24
    """
    from editing.sampling import encode_prompts

    family = family_of(pipe)
    given = {"num_steps": num_steps, "n_max": n_max, "n_min": n_min, "n_avg": n_avg, "seed": seed,
             "source_guidance": source_guidance, "target_guidance": target_guidance}  # fmt: skip
    authors = FLOWEDIT_DEFAULTS.get(family.name, FLOWEDIT_DEFAULTS["sd3"])
    given["n_max"] = n_max if n_max is not None else authors_n_max(authors, num_steps)
    settings = {k: asdict(authors)[k] if v is None else v for k, v in given.items()}
    size, latent_hw = flow_size(pipe, height, width)
    sampler = flow_sampler(pipe, int(settings["num_steps"]), latent_hw, "flowedit (FlowEdit)")
    _check_counts(settings)
    check_known_words(pipe, [source_prompt, target_prompt])  # the toy's closed vocabulary
    x_src = encode_flow_image(pipe, image, size)
    guidance = (settings["source_guidance"], settings["target_guidance"])
    guided = max(guidance) > 1.0 and family.guides_with_rows(pipe)
    cond = encode_prompts(pipe, [source_prompt, target_prompt], guided, size)
    velocity = _Velocity(pipe, sampler, cond, guidance, guided)
    edited = _run(sampler, velocity, x_src, settings)
    settings |= {"source_prompt": source_prompt, "target_prompt": target_prompt,
                 "height": size[0], "width": size[1], "scheduler": sampler.settings()}  # fmt: skip
    result = edited.to(family.denoiser(pipe).dtype)
    return FlowEditResult(sampler.decode(result)[0], result, x_src, settings)


def authors_n_max(authors: FlowEditDefaults, num_steps: int | None) -> int:
    """The authors' ``n_max`` at ``num_steps``: their own at their step count (or ``None``),
    else the same fraction of the steps, at least 1 (24 of 28 on FLUX.1-dev: 6 of 7; 33 of
    50 on SD3), so that another step count keeps their share of the trajectory edited.

    Example:
        >>> authors_n_max(FLOWEDIT_DEFAULTS["flux"], 7)
        6
    """
    if num_steps is None or num_steps == authors.num_steps:
        return authors.n_max
    return max(1, min(num_steps, round(authors.n_max * num_steps / authors.num_steps)))


def _check_counts(settings: dict[str, Any]) -> None:
    n, n_max, n_min = settings["num_steps"], settings["n_max"], settings["n_min"]
    if not 0 <= n_min <= n_max <= n:
        raise ValueError(
            f"n_min={n_min}, n_max={n_max}, num_steps={n}: FlowEdit needs "
            "0 <= n_min <= n_max <= num_steps (the authors: 0 <= 24 <= 28 on FLUX.1-dev)"
        )
    if settings["n_avg"] < 1:
        raise ValueError(f"n_avg={settings['n_avg']}: average at least 1 draw (the authors: 1)")


class _Velocity:
    """The guided velocities of the source (prompt 0) and target (prompt 1) at one timestep."""

    def __init__(
        self, pipe: Any, sampler: FlowSampler, cond: Conditioning, guidance: tuple[float, float],
        guided: bool,
    ) -> None:  # fmt: skip
        self.pipe, self.sampler, self.cond, self.guided = pipe, sampler, cond, guided
        self.guidance = guidance
        self.family = family_of(pipe)
        self.as_input = not self.family.guides_with_rows(pipe)  # FLUX.1-dev's guidance input
        self.dtype = self.family.denoiser(pipe).dtype

    def __call__(self, t: Tensor, z_src: Tensor, z_tar: Tensor) -> tuple[Tensor, Tensor]:
        """``(V_src(z_src), V_tar(z_tar))`` in float32, for latents ``[1, C, h, w]``."""
        out = self.rows(t, torch.cat([z_src, z_tar]), [0, 1])
        return out[:1], out[1:]

    def target(self, t: Tensor, x: Tensor) -> Tensor:
        """``V_tar(x)`` alone (the plain sampling of the last ``n_min`` steps)."""
        return self.rows(t, x, [1])

    def rows(self, t: Tensor, latents: Tensor, prompts: list[int]) -> Tensor:
        """Velocities of latents ``[k, C, h, w]``, row ``j`` with prompt ``prompts[j]``."""
        latents = latents.to(self.dtype)
        if self.as_input:  # one call per prompt, its guidance an input (as the authors)
            return torch.cat([
                self.family.predict(self.pipe, latents[[j]], t, self.cond.rows([p]),
                                    guidance_scale=self.guidance[p]).float()
                for j, p in enumerate(prompts)
            ])  # fmt: skip
        if not self.guided:
            return self.family.predict(self.pipe, latents, t, self.cond.rows(prompts)).float()
        rows = self.cond.rows([*prompts, *(2 + p for p in prompts)])  # uncond rows first
        out = self.family.predict(self.pipe, torch.cat([latents] * 2), t, rows).float()
        uncond, text = out.chunk(2)
        scales = torch.tensor([self.guidance[p] for p in prompts], device=out.device)
        return uncond + scales.view(-1, 1, 1, 1) * (text - uncond)


def _run(sampler: FlowSampler, velocity: _Velocity, x_src: Tensor, settings: dict) -> Tensor:
    """The FlowEdit ODE (see the module) from ``x_src`` ``[1, C, h, w]``, float32."""
    n, n_min, n_avg = settings["num_steps"], settings["n_min"], settings["n_avg"]
    sigmas = sampler.scheduler.sigmas.float()
    generator = torch.Generator().manual_seed(int(settings["seed"]))

    def draw() -> Tensor:
        return torch.randn(x_src.shape, generator=generator).to(x_src.device)

    z, x = x_src.clone(), x_src
    start = n - settings["n_max"]
    timesteps = list(sampler.timesteps[start:])
    for j, t in denoising_steps(velocity.pipe, timesteps):
        i = start + j
        sigma, step = float(sigmas[i]), float(sigmas[i + 1] - sigmas[i])
        if n - i > n_min:
            delta = torch.zeros_like(x_src)
            for _ in range(n_avg):
                z_src = (1 - sigma) * x_src + sigma * draw()
                v_src, v_tar = velocity(t, z_src, z + z_src - x_src)
                delta += (v_tar - v_src) / n_avg
            z = z + step * delta
            continue
        if i == n - n_min:  # SDEdit-like plain sampling from here, from the edited latent
            x = z + (1 - sigma) * x_src + sigma * draw() - x_src
        x = x + step * velocity.target(t, x)
    return z if n_min == 0 else x

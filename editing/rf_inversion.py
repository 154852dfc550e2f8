"""RF-Inversion (Rout et al., ICLR 2025): a controlled forward ODE, then a controlled reverse.

    inv = rf_invert(pipe, "cat.png")                  # the authors' settings: γ 0.5, η 0.9, 7/28
    reconstruct(pipe, inv)                            # the controlled reverse, the empty prompt
    edit(pipe, "a cat", ["a sleeping cat"], method="none", inversion=inv)   # the published edit

Read from the diffusers community pipeline the authors point to
(huggingface/diffusers ``examples/community/pipeline_flux_rf_inversion.py``: ``invert`` is
their Algorithm 1, ``__call__`` with ``inverted_latents`` their Algorithm 2) and the authors'
repository (LituRout/RF-Inversion: ``README.md``, ``scripts/test.py``,
``pipeline_rf_inversion_sde.py``, whose ODE branch is the community one). With the family's
edit sampler (:class:`~probe.families.sampler.FlowSampler`: sigmas ``σ_0 = 1 > … > σ_N = 0``,
Flux's shifted by the token count, timesteps ``t_i = 1000·σ_i``) and the model's output ``v``
(the velocity towards the noise, ``noise − image``):

1. **Controlled forward ODE** (``invert``): ``y_0`` the encoded image, ``y_1`` one Gaussian
   draw; from ``x_N = y_0`` for ``k = N−1 … 0``::

       u      = v(x_{k+1}, t_k)                       (the prompt at guidance_scale)
       u_cond = (y_1 − x_{k+1}) / (1 − σ_{k+1})       (straight to y_1 from the time reached)
       x_k    = x_{k+1} + (σ_k − σ_{k+1}) · (u + γ · (u_cond − u))

   γ = 0 is :func:`~editing.flow_inversion.flow_invert` exactly; γ = 1 the straight line
   ``x_k = (1 − σ_k)·y_0 + σ_k·y_1`` (the latent forgets the model; ``x_0 = y_1``).
2. **Controlled reverse** (``__call__``: ``t_i = 1 − t/1000`` there, so ``1 − t_i = σ_i``): from
   ``x_0``, step ``i`` of an edit moves every row ``X`` by::

       v̂ = −v(X, t_i) + η_i · ((y_0 − X) / σ_i − (−v(X, t_i)))
       X ← X + (σ_i − σ_{i+1}) · v̂,     η_i = η while int(start·N) ≤ i < min(int(stop·N), N), else 0

   (:class:`ControlledReverse`, the inversion's :meth:`RFInversion.step_rule`); the guided
   ``v`` of the edit's own prompts and guidance. η = 1 pulls the row straight onto the image.

What the code does, detail by detail, and where attnprobe differs (on purpose):

- ``y_1`` is ``torch.randn_like`` of the packed latent from torch's *global* generator
  (``scripts/test.py`` calls ``set_seed(999)`` first, and the VAE's posterior *sample* draws
  before it); here one CPU generator seeded with ``seed`` (default 999), ``[1, C, h, w]``: the
  draw :meth:`~probe.families.sampler.Sampler.noise` gives for that seed. ``y_0`` is the VAE
  posterior *mean* (as :func:`flow_invert` and FlowEdit), not a sample.
- The forward loop there calls the model at timestep ``i/(N+1)`` (``N = len(sigmas)`` counts
  the trailing 0: unshifted, one off from ``i/N``), uses the same ``t_i`` in ``u_cond``, and
  steps by ``sigmas[i] − sigmas[i+1]``, the denoising intervals in denoising order (the
  noisiest interval first, at the image end). Here each step crosses its own interval
  ``σ_{k+1} → σ_k``, ``u_cond`` uses the latent's own time ``1 − σ_{k+1}``, and ``u`` is taken
  at ``t_k`` as :func:`flow_invert` takes it, so that the trajectory sits on the sampler's
  sigmas (an edit's forced source row lines up) and γ = 0 is inverse Euler. On an unshifted,
  uniform grid the step sizes agree and only the model's timestep differs.
- The inversion runs on ``source_prompt=""`` at ``source_guidance_scale=0.0`` (the code's
  defaults; "better to keep it 0"), as FLUX.1-dev's guidance *input*; a model without a
  guidance embedding gets no guidance there. Here ``prompt`` and ``guidance_scale`` (default
  ``""`` and 0: the same on FLUX.1-dev; unguided on SD3 and a true-CFG Flux, as any scale ≤ 1).
- ``start``/``stop`` are fractions of the steps, floored (``int(stop · N)``: attnprobe's one
  rule, :func:`probe.attention.steps.fraction_steps`); the code refuses ``start < 0`` or
  ``start > stop``; here also fractions outside [0, 1], and γ, η outside [0, 1].
- The edit samples at its own guidance (the code's ``guidance_scale`` default 3.5, FLUX.1-dev's
  guidance input; none on a Flux without an embedding); here ``edit(guidance_scale=)``.
- The published edit denoises one row with the target prompt. ``edit()`` has a source row and
  targets: the controlled reverse moves every row (targets towards ``y_0`` alike); a forced
  source row is then put back onto the stored trajectory after every step as after any flow
  inversion. ``method="none"`` with one target is the published edit.

Defaults: γ 0.5 (both), η 0.9 and stop 7/28 = 0.25 (the authors' ``README.md`` and
``scripts/test.py``; the community pipeline's defaults are η 1.0, stop 0.25), start 0, the
model's steps (the authors: 28, FLUX.1-dev's and SD3's own default).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from editing.flow_inversion import FlowInversion, encode_flow_image, flow_sampler, flow_size
from probe.attention.clock import denoising_steps
from probe.attention.steps import fraction_steps
from probe.families import Conditioning, family_of
from probe.models import generation_defaults
from probe.models.vocabulary import check_known_words

RF_INVERSION_GAMMA = 0.5
"""The forward controller strength γ (``invert(gamma=0.5)``; README, ``scripts/test.py``)."""
RF_INVERSION_ETA = 0.9
"""The reverse controller strength η of the authors' example (README, ``scripts/test.py``; the
community pipeline's default is 1.0)."""
RF_INVERSION_START = 0.0
"""The first controlled step, a fraction of the steps (``start_timestep=0``)."""
RF_INVERSION_STOP = 7 / 28
"""The end of the controlled steps, a fraction (README: ``stop_timestep=7/28``; default 0.25)."""
RF_INVERSION_SEED = 999
"""The authors' example seeds torch with 999 (``scripts/test.py``) before drawing ``y_1``."""
RF_INVERSION_GUIDANCE = 0.0
"""The inversion's guidance (``invert(source_guidance_scale=0.0)``)."""


@dataclass
class ControlledReverse:
    """RF-Inversion's controlled reverse as an :class:`editing.sampling.StepRule`: while step
    ``i`` is in ``steps``, the model's output ``v`` of every row ``X`` ``[n, C, h, w]`` becomes
    ``(1 − η)·v + η·(X − y_0)/σ_i`` before the scheduler's Euler step (the module's step 2
    written in the model's sign); other steps are the plain step.

    Attributes:
        image: ``y_0``, the encoded image ``[1, C, h, w]``.
        eta: η in [0, 1].
        steps: the controlled step indices.
    """

    image: Tensor
    eta: float
    steps: range

    def __call__(
        self, sampler: Any, i: int, t: Tensor, latents: Tensor, cond: Conditioning,
        guided: bool, guidance_scale: float | Tensor,
    ) -> Tensor:  # fmt: skip
        output = sampler.predict(t, latents, cond, guided, guidance_scale)
        if self.eta and i in self.steps:
            sigma = float(sampler.scheduler.sigmas[i])
            pull = (latents.float() - self.image.float().to(latents.device)) / sigma
            output = ((1.0 - self.eta) * output.float() + self.eta * pull).to(output.dtype)
        return sampler.step(output, t, latents)


@dataclass
class RFInversion(FlowInversion):
    """An RF-Inversion (see the module): the controlled forward ODE's latents and the settings
    of the controlled reverse an edit from it samples with.

    Attributes:
        trajectory: latents ``[1, C, h, w]`` noisiest first (``σ_0 = 1``), the encoded image
            ``y_0`` last; entry ``i`` is the latent at sampling step ``i``'s sigma.
        gamma: the forward controller strength γ.
        eta: the reverse controller strength η.
        start, stop: the controlled reverse steps, fractions: ``int(start·N) ≤ i < int(stop·N)``.
        seed: the seed of the noise ``y_1`` the forward ODE was steered to.
        guidance_scale: the guidance the forward velocities were taken at.
    """

    gamma: float = RF_INVERSION_GAMMA
    eta: float = RF_INVERSION_ETA
    start: float = RF_INVERSION_START
    stop: float = RF_INVERSION_STOP
    seed: int = RF_INVERSION_SEED

    @property
    def kind(self) -> str:
        return "rf-inversion"

    def controlled_steps(self) -> range:
        """The step indices the reverse controller acts on (the code: ``start_timestep <= i <
        stop_timestep`` after ``int(f * N)``)."""
        first = len(fraction_steps(self.start, self.num_steps))
        return range(first, len(fraction_steps(self.stop, self.num_steps)))

    def step_rule(self) -> ControlledReverse:
        """The controlled reverse towards the encoded image, for every row the edit denoises."""
        return ControlledReverse(self.trajectory[-1], self.eta, self.controlled_steps())


def check_rf_settings(gamma: float, eta: float, start: float, stop: float) -> None:
    """Refuse controller strengths or a step window RF-Inversion does not define.

    Raises:
        ValueError: γ or η not a number in [0, 1], ``start``/``stop`` not a fraction in
            [0, 1], or ``start > stop``; the message names the value and the authors' choice.
    """
    for name, value, meaning in (
        ("gamma", gamma, "0: plain inverse Euler (flow_invert), 1: straight to the noise; "
         f"the authors: {RF_INVERSION_GAMMA}"),
        ("eta", eta, "0: the plain edit, 1: straight back to the image; the authors: "
         f"{RF_INVERSION_ETA}"),
        ("start", start, f"a fraction of the steps; the authors: {RF_INVERSION_START}"),
        ("stop", stop, "a fraction of the steps; the authors: 7/28 = 0.25"),
    ):  # fmt: skip
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not real or not 0.0 <= float(value) <= 1.0:  # also refuses NaN
            raise ValueError(f"{name}={value!r}: use a number in [0, 1] ({meaning})")
    if start > stop:
        raise ValueError(
            f"start={start} > stop={stop}: the reverse controller acts on steps int(start·N) "
            "<= i < int(stop·N); give start <= stop (the authors: 0 and 7/28)"
        )


@torch.no_grad()
def rf_invert(
    pipe: Any,
    image: str | Path | Image.Image | np.ndarray,
    prompt: str = "",
    num_steps: int | None = None,
    gamma: float = RF_INVERSION_GAMMA,
    eta: float = RF_INVERSION_ETA,
    start: float = RF_INVERSION_START,
    stop: float = RF_INVERSION_STOP,
    guidance_scale: float = RF_INVERSION_GUIDANCE,
    seed: int = RF_INVERSION_SEED,
    height: int | None = None,
    width: int | None = None,
) -> RFInversion:
    """Invert an image by RF-Inversion's controlled forward ODE (see the module).

    Args:
        pipe: an SD3 or Flux pipeline.
        image: a file, a PIL image or a uint8 array ``[H, W, 3]`` of exactly the size inverted.
        prompt: the prompt of the forward velocities (the authors: ``""``).
        num_steps: Euler steps (default: the model's; the authors: 28). An edit samples as many.
        gamma: the forward controller strength γ in [0, 1] (0 is :func:`flow_invert`).
        eta: the reverse controller strength η in [0, 1] of edits from it (0: plain sampling).
        start, stop: the steps the reverse controller acts on, fractions of ``num_steps``.
        guidance_scale: guidance of the forward velocities (the authors: 0, FLUX.1-dev's
            guidance input; SD3 and a Flux without a guidance embedding: none at <= 1).
        seed: seed of the noise ``y_1`` the forward ODE is steered to.
        height, width: the image's size in pixels (default: the model's).

    Returns:
        :class:`RFInversion` of ``num_steps + 1`` latents ``[1, C, h, w]``.

    Raises:
        NotImplementedError: a UNet or PixArt pipeline (use ``ddim_invert``).
        ValueError: bad γ, η, ``start``, ``stop``; an image of another size or mode.

    Example:
        >>> inv = rf_invert(pipe, "cat.png", num_steps=28)
        >>> edit(pipe, "a cat", ["a tiger"], method="none", inversion=inv, guidance_scale=3.5)
    """
    from editing.sampling import encode_prompts

    check_rf_settings(gamma, eta, start, stop)
    num_steps = num_steps or int(generation_defaults(pipe)["num_inference_steps"])
    size, latent_hw = flow_size(pipe, height, width)
    sampler = flow_sampler(pipe, num_steps, latent_hw, "rf_invert")
    check_known_words(pipe, [prompt])  # the toy's closed vocabulary
    latent = encode_flow_image(pipe, image, size)
    noise = sampler.noise(seed, 1).float()  # y_1
    family = family_of(pipe)
    guided = guidance_scale > 1.0 and family.guides_with_rows(pipe)
    cond = encode_prompts(pipe, [prompt], guided, size)
    sigmas, dtype = sampler.scheduler.sigmas, family.denoiser(pipe).dtype
    path = [latent]
    for _, k in denoising_steps(pipe, list(reversed(range(num_steps)))):
        u = sampler.predict(sampler.timesteps[k], latent.to(dtype), cond, guided, guidance_scale)
        u = u.float()
        if gamma:
            u = u + gamma * ((noise - latent) / (1.0 - float(sigmas[k + 1])) - u)
        latent = latent + float(sigmas[k] - sigmas[k + 1]) * u
        path.append(latent)
    trajectory = [x.to(dtype) for x in reversed(path)]
    return RFInversion(
        trajectory, prompt, num_steps, guidance_scale=guidance_scale, gamma=gamma, eta=eta,
        start=start, stop=stop, seed=seed,
    )  # fmt: skip

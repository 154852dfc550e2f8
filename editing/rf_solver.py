"""RF-Solver and FireFlow: second-order inversion and sampling of a flow model (SD3, Flux).

    inv = solver_invert(pipe, "car.png", "a red car")                     # RF-Solver, 25 steps
    reconstruct(pipe, inv)                                                # sampled back, 2nd order
    edit(pipe, "a red car", ["a blue car"], method="rf-solver", inversion=inv, guidance_scale=2)
    inv = solver_invert(pipe, "car.png", "a red car", solver="fireflow")  # FireFlow, 8 steps

As the authors' FLUX code does it (Wang et al., "Taming Rectified Flow for Inversion and
Editing", ICML 2025: wangjiangshan0725/RF-Solver-Edit, ``FLUX_Image_Edit/src/flux/sampling.py``
``denoise`` and ``src/edit.py``; Deng et al., "FireFlow", ICML 2025:
HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing,
``src/flux/sampling.py`` ``denoise_fireflow`` and ``src/edit.py``). Their time ``t`` is the
flow's sigma (``get_schedule``: ``linspace(1, 0, N+1)`` time-shifted, the same sigmas as the
family's :class:`~probe.families.sampler.FlowSampler`; the model takes ``t``, diffusers'
transformers ``1000·t`` as their timestep). One step from ``x`` at ``σ`` to ``σ'`` (sampling:
``σ_i → σ_{i+1}``; inversion: ``σ_{k+1} → σ_k``, the same intervals crossed backwards, the
least noisy first), ``h = σ' − σ``::

    v     = v(x, σ)                              (the latent's own time, both directions)
    x_mid = x + h/2 · v
    v_mid = v(x_mid, σ + h/2)
    x'    = x + h · v_mid

RF-Solver writes the last line as ``x + h·v + ½h²·(v_mid − v)/(h/2)``, its second-order Taylor
step, which is the same expression. **FireFlow** takes ``v`` of every step after the loop's
first from the previous step's ``v_mid`` (one model call per step, ``N + 1`` in all); its
inversion and its sampling both do, each keeping the velocity from its own previous step
(:class:`SolverStep` keeps it for an edit, a new one per edit).

- The inversion runs on the source prompt at guidance 1 (``denoise(model, **inp, guidance=1,
  inverse=True)``, ``inp`` from ``source_prompt``: FLUX.1-dev's guidance input; on SD3 and a
  Flux without a guidance embedding 1 means no classifier-free guidance); here ``prompt``
  (default ``""``) at ``guidance_scale`` (default 1). The edit samples the target prompt at its
  own guidance (RF-Solver's scripts and README: 2; FireFlow's: 2, 2.5–3 for harder edits).
- Steps: RF-Solver's README example 25 (scripts 15–25, ``edit.py`` default 25); FireFlow's
  scripts and README 8 (10–15 for harder edits). Value injection: RF-Solver ``--inject 5`` in
  the README example (scripts 2–5; "typically 2 to 8"), single blocks 20–37; FireFlow
  ``--inject 1`` on all 38 single blocks. See :mod:`editing.methods.value_injection`.
- Unlike :func:`~editing.flow_inversion.flow_invert` (inverse Euler, the velocity of the latent
  in hand at the *noisier* step's timestep, as Stable Flow), both calls here are at the latent's
  own time: the trajectory is an ODE solve, second order, and its entry ``i`` sits on the
  sampler's sigma ``σ_i`` (a forced source row lines up).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from editing.flow_inversion import FlowInversion, encode_flow_image, flow_sampler, flow_size
from editing.methods.value_injection import (
    FIREFLOW_BLOCKS,
    RF_SOLVER_BLOCKS,
    StoredValues,
    ValueStore,
    solver_phases,
)
from editing.methods.value_injection import (
    SOLVERS as SOLVERS,  # re-exported: the solvers solver_invert takes
)
from probe.attention.batch import BatchLayout
from probe.attention.clock import denoising_steps
from probe.attention.layer_info import LayerSpec
from probe.families import Conditioning, family_of
from probe.families.sampler import FlowSampler
from probe.models.vocabulary import check_known_words

AUTHORS_STEPS = {"rf-solver": 25, "fireflow": 8}
"""Inversion and edit steps on FLUX.1-dev (RF-Solver's README example; FireFlow's scripts)."""
AUTHORS_INJECT = {"rf-solver": 5, "fireflow": 1}
"""Steps of value injection (``--inject``; RF-Solver's README example, FireFlow's scripts)."""
AUTHORS_BLOCKS = {"rf-solver": RF_SOLVER_BLOCKS, "fireflow": FIREFLOW_BLOCKS}
"""Blocks whose values are stored: RF-Solver's single blocks 20–37; FireFlow's all 38."""
AUTHORS_GUIDANCE = 2.0
"""The edit's guidance (FLUX.1-dev's input) in both authors' scripts; inversion runs at 1."""


@dataclass
class SolverInversion(FlowInversion):
    """A second-order inversion of a flow model (see the module).

    Attributes:
        trajectory: latents ``[1, C, h, w]`` noisiest first, the encoded image last; entry
            ``i`` is the latent at sampling step ``i``'s sigma.
        solver: ``"rf-solver"`` or ``"fireflow"`` (also :attr:`kind`).
        values: the values stored for value injection
            (:class:`~editing.methods.value_injection.StoredValues`), or ``None``.
    """

    solver: str = "rf-solver"
    values: StoredValues | None = None

    @property
    def kind(self) -> str:
        return self.solver

    def step_rule(self) -> SolverStep:
        """The same solver for the edit's sampling (a new one per edit: FireFlow's reused
        velocity starts empty)."""
        return SolverStep(self.solver)


class SolverStep:
    """RF-Solver's or FireFlow's sampling step (an :class:`editing.sampling.StepRule`).

    Args:
        solver: ``"rf-solver"`` or ``"fireflow"``.

    FireFlow's previous midpoint velocity is kept here, rows as the latents' (forgotten at
    step 0).
    """

    def __init__(self, solver: str) -> None:
        solver_phases(solver, 0)  # a bad name fails here
        self.solver = solver
        self.velocity: Tensor | None = None

    def __repr__(self) -> str:
        return f"SolverStep({self.solver!r})"

    def __call__(
        self, sampler: Any, i: int, t: Tensor, latents: Tensor, cond: Conditioning,
        guided: bool, guidance_scale: float | Tensor,
    ) -> Tensor:  # fmt: skip
        sigmas = sampler.scheduler.sigmas
        reuse = None if i == 0 or self.solver != "fireflow" else self.velocity
        out, self.velocity = solver_step(
            sampler, latents, float(sigmas[i]), float(sigmas[i + 1]), cond, guided,
            guidance_scale, reuse,
        )  # fmt: skip
        return out


def solver_step(
    sampler: FlowSampler, x: Tensor, sigma: float, sigma_next: float, cond: Conditioning,
    guided: bool, guidance_scale: float | Tensor, velocity: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One midpoint step of the flow ODE from ``x`` ``[n, C, h, w]`` at ``sigma`` to
    ``sigma_next`` (see the module).

    Args:
        velocity: ``v(x, sigma)`` when known (FireFlow: the previous midpoint velocity); else
            the model is called for it.

    Returns:
        ``(x', v_mid)``: the latents at ``sigma_next`` (``x``'s dtype) and the midpoint
        velocity (float32).
    """
    h = sigma_next - sigma
    if velocity is None:
        velocity = _velocity(sampler, x, sigma, cond, guided, guidance_scale)
    x32 = x.float()
    middle = (x32 + h / 2 * velocity).to(x.dtype)
    v_mid = _velocity(sampler, middle, sigma + h / 2, cond, guided, guidance_scale)
    return (x32 + h * v_mid).to(x.dtype), v_mid


def _velocity(
    sampler: FlowSampler, x: Tensor, sigma: float, cond: Conditioning, guided: bool,
    guidance_scale: float | Tensor,
) -> Tensor:  # fmt: skip
    """The guided velocity at ``sigma`` (timestep ``sigma · num_train_timesteps``), float32."""
    scale = float(sampler.scheduler.config.num_train_timesteps)
    t = torch.tensor(sigma * scale, device=x.device, dtype=sampler.timesteps.dtype)
    return sampler.predict(t, x, cond, guided, guidance_scale).float()


@torch.no_grad()
def solver_invert(
    pipe: Any,
    image: str | Path | Image.Image | np.ndarray,
    prompt: str = "",
    num_steps: int | None = None,
    guidance_scale: float = 1.0,
    solver: str = "rf-solver",
    store_values: LayerSpec = "authors",
    inject_steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> SolverInversion:
    """Invert an image with RF-Solver's or FireFlow's second-order solver (see the module).

    Args:
        pipe: an SD3 or Flux pipeline.
        image: a file, a PIL image or a uint8 array ``[H, W, 3]`` of exactly the size inverted.
        prompt: the prompt to invert with (the authors: the source prompt, or empty).
        num_steps: solver steps (default: the authors', :data:`AUTHORS_STEPS`: 25 for
            RF-Solver, 8 for FireFlow). An edit from it samples as many.
        guidance_scale: guidance of the velocities (the authors: 1).
        solver: ``"rf-solver"`` (two model calls per step) or ``"fireflow"`` (one).
        store_values: the blocks whose values are stored for method ``rf-solver``
            (:mod:`editing.methods.value_injection`): ``"authors"`` (the solver's authors':
            ``"rf-solver"``, the last 18/38 of the single-stream blocks, for RF-Solver;
            ``"fireflow"``, every single-stream block, for FireFlow), another layer spec, or
            ``None`` (store nothing).
        inject_steps: store for the first N sampling steps (default: the authors',
            :data:`AUTHORS_INJECT`: 5 and 1, at most ``num_steps``).
        height, width: the image's size in pixels (default: the model's).

    Returns:
        :class:`SolverInversion` of ``num_steps + 1`` latents ``[1, C, h, w]``.

    Raises:
        NotImplementedError: a UNet or PixArt pipeline (use ``ddim_invert``).
        ValueError: an unknown solver, ``inject_steps`` outside ``0 … num_steps``, a layer spec
            that does not fit, an image of another size or mode.

    Example:
        >>> inv = solver_invert(pipe, "car.png", "a red car", solver="fireflow")
        >>> edit(pipe, "a red car", ["a blue car"], method="rf-solver", inversion=inv)
    """
    from editing.sampling import encode_prompts, loop_hooks

    solver_phases(solver, 0)
    num_steps = num_steps or AUTHORS_STEPS[solver]
    if inject_steps is None:  # the authors', at most every step
        inject_steps = min(AUTHORS_INJECT[solver], num_steps)
    if isinstance(inject_steps, bool) or not 0 <= inject_steps <= num_steps:
        raise ValueError(
            f"inject_steps={inject_steps!r}: use 0 to {num_steps} (the steps inverted)"
        )
    size, latent_hw = flow_size(pipe, height, width)
    sampler = flow_sampler(pipe, num_steps, latent_hw, "solver_invert")
    check_known_words(pipe, [prompt])
    latent = encode_flow_image(pipe, image, size)
    guided = guidance_scale > 1.0 and family_of(pipe).guides_with_rows(pipe)
    cond = encode_prompts(pipe, [prompt], guided, size)
    blocks = AUTHORS_BLOCKS[solver] if store_values == "authors" else store_values
    store = None if blocks is None else ValueStore(blocks, inject_steps, solver, num_steps)
    layout = BatchLayout.for_samples(1, guided)
    hooks = loop_hooks(pipe, [] if store is None else [store], layout, num_steps, latent_hw)
    dtype = family_of(pipe).denoiser(pipe).dtype
    path = _invert(pipe, sampler, latent.to(dtype), cond, guided, guidance_scale, solver, hooks)
    return SolverInversion(
        [x.to(dtype) for x in reversed(path)], prompt, num_steps, guidance_scale=guidance_scale,
        solver=solver, values=None if store is None else store.values,
    )  # fmt: skip


def _invert(
    pipe: Any, sampler: FlowSampler, latent: Tensor, cond: Conditioning, guided: bool,
    guidance_scale: float, solver: str, hooks: Any,
) -> list[Tensor]:  # fmt: skip
    """``[x_N, x_{N−1}, …, x_0]``: the solver from the image back to the noise, under
    ``hooks`` (the value store, if any)."""
    sigmas, n = sampler.scheduler.sigmas, len(sampler.timesteps)
    path, velocity = [latent], None
    with hooks:
        for j, k in denoising_steps(pipe, list(reversed(range(n)))):  # σ_{k+1} → σ_k
            reuse = velocity if solver == "fireflow" and j > 0 else None
            latent, velocity = solver_step(
                sampler, latent, float(sigmas[k + 1]), float(sigmas[k]), cond, guided,
                guidance_scale, reuse,
            )  # fmt: skip
            path.append(latent)
    return path

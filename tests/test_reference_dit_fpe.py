"""The DiT FPE (``editing/methods/joint_fpe.py``) against a reference written from its documented
semantics and from diffusers' own processors and pipelines, not from attnprobe.

The reference (its processors and loops in tests/dit_reference.py) installs its own attention
processors on every joint attention of the transformer (Flux: the double-stream ``transformer_blocks.i.attn``, text projected with the
``add_*`` weights, and the single-stream ``single_transformer_blocks.j.attn``, both over
``[text; image]`` with QK RMS-norms and RoPE, as ``FluxAttnProcessor``; SD3: ``[image; text]``,
as ``JointAttnProcessor2_0``). Each writes the joint map out as ``softmax(q kᵀ / √d)`` and, in
the first ``int(0.8 · N)`` steps, gives the *conditional target*'s image-query rows

    P'_ii = P^src_ii                              (image keys: the conditional source's row)
    P'_it = (1 − m_src) · P^tgt_it / (1 − m_tgt)  (text keys: the target's, rescaled)

with ``m`` a row's mass on image keys (``text_mass="source"``, the default); text-query rows and
unconditional rows stay their own. It runs its own flow-match Euler loop (FluxPipeline's and
StableDiffusion3Pipeline's: sigmas, shift, packing, ids and timestep scaling written out here)
from the same noise ``edit`` draws (one ``randn(1, C, h, w)`` for the seed, repeated per sample),
on the batch ``[uncond source, uncond target, cond source, cond target]`` under classifier-free
guidance, ``[source, target]`` without. attnprobe's final latents must match it to 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
from torch import Tensor

from editing import edit
from editing.methods.joint_fpe import JointSelfAttentionReplace
from tests.dit_reference import (
    SEED,
    SIZE,
    RefAttention,
    flux_sigmas,
    run_flux_reference,
    run_sd3_reference,
    same_as_diffusers,
    sd3_sigmas,
    without_guidance_embedding,
)

STEPS = 7  # 7 steps: int(0.8 · 7) = 5 edited (a ceil or round: 6)
FRACTION = 0.8  # RowEditor's default; floored: probe/attention/steps.py fraction_steps
PROMPTS = ["a red car", "a blue car"]
TOL = 1e-4


@pytest.fixture(scope="module")
def flux():
    from probe.models import load_pipeline

    return load_pipeline("tiny-flux")


@pytest.fixture(scope="module")
def true_cfg_flux(flux):
    return without_guidance_embedding(flux)


@pytest.fixture(scope="module")
def sd3():
    from probe.models import load_pipeline

    return load_pipeline("tiny-sd3")


# ---- the edit: materialised joint maps ------------------------------------------------------


class RefJointFPE(RefAttention):
    """Joint attention with the DiT FPE on the conditional target rows. ``step`` is set by the
    loop; ``pairs`` are (source row, target row) of the conditional half."""

    def __init__(self, guided: bool, steps: int = STEPS, fraction: float = FRACTION) -> None:
        super().__init__()
        self.pairs = [(2, 3)] if guided else [(0, 1)]
        self.edited = int(fraction * steps)
        self.step = 0

    def attend(self, q: Tensor, k: Tensor, v: Tensor, image: slice, text: slice) -> Tensor:
        probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        if self.step >= self.edited:
            return probs @ v
        probs = probs.clone()
        for s, t in self.pairs:
            src, tgt = probs[s, :, image], probs[t, :, image]  # image queries [heads, n, all]
            m_src = src[..., image].sum(-1, keepdim=True)
            m_tgt = tgt[..., image].sum(-1, keepdim=True)
            row = tgt.clone()
            row[..., image] = src[..., image]
            row[..., text] = tgt[..., text] * (1 - m_src) / (1 - m_tgt)
            probs[t, :, image] = row
        return probs @ v


# ---- the tests ------------------------------------------------------------------------------


def flux_fpe(pipe, prompts: list[str], guidance_scale: float) -> Tensor:
    return run_flux_reference(pipe, prompts, guidance_scale, STEPS, RefJointFPE)


def sd3_fpe(pipe, prompts: list[str], guidance_scale: float) -> Tensor:
    return run_sd3_reference(pipe, prompts, guidance_scale, STEPS, RefJointFPE)


CASES = {  # pipeline fixture, guidance scale, reference loop, unconditional rows
    "flux-distilled": ("flux", 3.5, flux_fpe, False),
    "flux-true-cfg": ("true_cfg_flux", 4.0, flux_fpe, True),
    "sd3": ("sd3", 4.0, sd3_fpe, True),
}


def fpe_edit(pipe, guidance_scale: float, prompts=PROMPTS, **kwargs):
    kwargs = kwargs or {"method": "fpe"}
    return edit(pipe, prompts[0], prompts[1:], seed=SEED, num_steps=STEPS,
                guidance_scale=guidance_scale, height=SIZE, width=SIZE, **kwargs)  # fmt: skip


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


def test_the_reference_schedules_are_diffusers(flux, sd3):
    """The sigmas written out here are those of diffusers' scheduler, set as FluxPipeline and
    StableDiffusion3Pipeline set it."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = flux.scheduler.config
    tokens = (SIZE // flux.vae_scale_factor // 2) ** 2
    mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len,
                         config.base_shift, config.max_shift)  # fmt: skip
    linear = np.linspace(1.0, 1 / STEPS, STEPS)
    same_as_diffusers(flux_sigmas(config, STEPS, tokens), config, STEPS, sigmas=linear, mu=mu)
    same_as_diffusers(sd3_sigmas(sd3.scheduler.config, STEPS), sd3.scheduler.config, STEPS)


@pytest.mark.parametrize("case", list(CASES))
def test_dit_fpe_matches_the_reference(case, request):
    name, scale, reference, has_uncond_rows = CASES[case]
    pipe = request.getfixturevalue(name)
    ours = fpe_edit(pipe, scale)
    assert ours.settings["step_fraction"] == FRACTION
    assert ours.settings["controllers"][0].startswith("JointSelfAttentionReplace")
    ref = reference(pipe, PROMPTS, scale)
    assert ours.latents.shape == ref.shape
    assert max_diff(ours.latents, ref) <= TOL, max_diff(ours.latents, ref)
    plain = fpe_edit(pipe, scale, method="none")
    assert max_diff(plain.latents[1], ref[1]) > 10 * TOL  # the edit acts on the target
    if has_uncond_rows:  # the reference tells an edit of the unconditional rows apart
        both = fpe_edit(pipe, scale, controllers=[JointSelfAttentionReplace(guidance="both")])
        assert max_diff(both.latents[1], ref[1]) > 10 * TOL


@pytest.mark.parametrize("case", list(CASES))
def test_identity_edit_matches_the_reference_source(case, request):
    """Source and target the same prompt: the reference's target is its source, and so is
    attnprobe's."""
    name, scale, reference, _ = CASES[case]
    pipe = request.getfixturevalue(name)
    prompts = [PROMPTS[0], PROMPTS[0]]
    ref = reference(pipe, prompts, scale)
    assert max_diff(ref[0], ref[1]) <= TOL
    ours = fpe_edit(pipe, scale, prompts=prompts)
    assert max_diff(ours.latents, ref) <= TOL

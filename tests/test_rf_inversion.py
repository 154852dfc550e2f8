"""RF-Inversion (Rout et al., ICLR 2025) on tiny-sd3 and tiny-flux (with and without a guidance
embedding).

The reference below is written from the paper's equations as the diffusers community pipeline
(``examples/community/pipeline_flux_rf_inversion.py``) evaluates them: the controlled forward
ODE ``û = u + γ(u_cond − u)``, ``u_cond = (y_1 − Y)/(1 − t)``, and the controlled reverse
``v̂ = v + η(v_cond − v)``, ``v = −model``, ``v_cond = (y_0 − X)/(1 − t_i)`` with its
``t_i = 1 − t/1000``, on attnprobe's sigma grid (see the module's notes on the grid). It calls
the transformer and the VAE directly, with its own scheduler and prompt encodings
(``tests/test_flow_inversion.py``'s reference helpers), never attnprobe's sampler.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editing import edit
from editing.flow_inversion import FlowInversion, flow_invert
from editing.inversion import reconstruct
from editing.rf_inversion import RFInversion, rf_invert
from editing.sampling import decode
from tests.test_flow_inversion import ref_latent, ref_schedule, ref_velocity, scene

STEPS = 4


# -- the reference: the equations, the pipeline's transformer calls ------------------------------
@torch.no_grad()
def ref_forward(pipe, image, prompt, n, gamma, guidance, seed) -> list[torch.Tensor]:
    """Algorithm 1 from the image (σ = 0) to the noise (σ = 1), noisiest first."""
    sigmas, timesteps = ref_schedule(pipe, n)
    y0 = ref_latent(pipe, image)
    y1 = torch.randn(y0.shape, generator=torch.Generator().manual_seed(seed))
    path, x = [y0], y0
    for k in range(n - 1, -1, -1):
        u = ref_velocity(pipe, x, timesteps[k], prompt, guidance)
        u_cond = (y1 - x) / (1 - sigmas[k + 1])  # the time reached: 1 − σ_{k+1}
        x = x + (sigmas[k] - sigmas[k + 1]) * (u + gamma * (u_cond - u))
        path.append(x)
    return path[::-1]


@torch.no_grad()
def ref_reverse(pipe, x, y0, prompt, n, eta, first, last, guidance) -> torch.Tensor:
    """Algorithm 2 on one row from ``x``: controlled for ``first <= i < last``."""
    sigmas, timesteps = ref_schedule(pipe, n)
    for i, t in enumerate(timesteps):
        v = -ref_velocity(pipe, x, t, prompt, guidance)
        if first <= i < last:
            t_i = 1 - t / 1000
            v = v + eta * ((y0 - x) / (1 - t_i) - v)
        x = x + v * (sigmas[i] - sigmas[i + 1])
    return x


CASES = [  # model, inversion guidance, edit guidance, start, stop
    ("sd3", 0.0, 1.0, 0.0, 0.5),
    ("sd3", 0.0, 3.0, 0.25, 0.75),
    ("flux", 0.0, 3.5, 0.0, 0.5),  # FLUX.1-dev-like: guidance is an input, 0 in the inversion
    ("cfg_flux", 0.0, 2.0, 0.25, 1.0),  # true CFG in the edit
    ("cfg_flux", 2.0, 1.0, 0.0, 0.25),  # a guided inversion
]


@pytest.mark.parametrize(("model", "inv_guidance", "guidance", "start", "stop"), CASES)
def test_rf_inversion_matches_the_controlled_odes(model, inv_guidance, guidance, start, stop,
                                                  request):  # fmt: skip
    """The trajectory is the controlled forward ODE; every target row of an edit from it is the
    controlled reverse with its own prompt (the source row forced onto the trajectory)."""
    pipe = request.getfixturevalue(model)
    prompt, targets = "a red car", ["a blue car", "a green car"]
    inv = rf_invert(pipe, scene(), prompt, num_steps=STEPS, gamma=0.5, eta=0.9, start=start,
                    stop=stop, guidance_scale=inv_guidance, seed=3)  # fmt: skip
    ref = ref_forward(pipe, scene(), prompt, STEPS, 0.5, inv_guidance, seed=3)
    assert isinstance(inv, RFInversion) and inv.kind == "rf-inversion"
    assert len(inv.trajectory) == STEPS + 1
    worst = max((a - b).abs().max().item() for a, b in zip(inv.trajectory, ref, strict=True))
    assert worst <= 1e-4, worst
    assert torch.equal(inv.trajectory[-1], ref[-1])  # the encoded image itself

    result = edit(pipe, prompt, targets, method="none", inversion=inv, guidance_scale=guidance)
    first, last = int(start * STEPS), int(stop * STEPS)
    assert list(inv.controlled_steps()) == list(range(first, last))
    for row, target in enumerate(targets, start=1):
        want = ref_reverse(pipe, ref[0], ref[-1], target, STEPS, 0.9, first, last, guidance)
        assert (result.latents[row] - want[0]).abs().max().item() <= 1e-4
    assert torch.equal(result.latents[0], inv.trajectory[-1][0])
    assert result.settings["inversion"] == "rf-inversion"


def test_reconstruct_is_the_controlled_reverse_with_the_inversion_prompt(sd3):
    inv = rf_invert(sd3, scene(), num_steps=STEPS, stop=0.5)
    ref = ref_forward(sd3, scene(), "", STEPS, 0.5, 0.0, seed=999)
    want = ref_reverse(sd3, ref[0], ref[-1], "", STEPS, 0.9, 0, 2, 1.0)
    image = np.asarray(reconstruct(sd3, inv), dtype=np.int16)
    assert np.abs(image - np.asarray(decode(sd3, want)[0], dtype=np.int16)).max() <= 1


# -- the limits of γ and η -------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["sd3", "flux", "cfg_flux"])
def test_gamma_zero_is_inverse_euler_and_gamma_one_the_straight_line(model, request):
    pipe = request.getfixturevalue(model)
    plain = flow_invert(pipe, scene(), "a red car", num_steps=STEPS, guidance_scale=0.0)
    rf = rf_invert(pipe, scene(), "a red car", num_steps=STEPS, gamma=0.0, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(plain.trajectory, rf.trajectory, strict=True))
    # γ = 1 forgets the model: x_k = (1 − σ_k)·y_0 + σ_k·y_1, ending on the noise draw
    line = rf_invert(pipe, scene(), "a red car", num_steps=STEPS, gamma=1.0, seed=1)
    sigmas, _ = ref_schedule(pipe, STEPS)
    y0 = line.trajectory[-1]
    y1 = torch.randn(y0.shape, generator=torch.Generator().manual_seed(1))
    for k, x in enumerate(line.trajectory):
        torch.testing.assert_close(x, (1 - sigmas[k]) * y0 + sigmas[k] * y1)


@pytest.mark.parametrize("model", ["sd3", "cfg_flux"])
def test_eta_zero_is_the_plain_edit_and_eta_one_everywhere_the_image(model, request):
    pipe = request.getfixturevalue(model)
    inv = rf_invert(pipe, scene(), "a red car", num_steps=STEPS, eta=0.0, stop=1.0)
    plain = FlowInversion(inv.trajectory, inv.prompt, inv.num_steps)  # the same latents
    for method in ("none", "fpe"):
        ours = edit(pipe, "a red car", ["a blue car"], method=method, inversion=inv,
                    guidance_scale=2.0)  # fmt: skip
        theirs = edit(pipe, "a red car", ["a blue car"], method=method, inversion=plain,
                      guidance_scale=2.0)  # fmt: skip
        assert torch.equal(ours.latents, theirs.latents)
    # η = 1 on every step pulls each row straight onto the image, whatever its prompt
    inv.eta = 1.0
    back = edit(pipe, "a red car", ["a blue car"], method="none", inversion=inv,
                guidance_scale=2.0, source_branch="free")  # fmt: skip
    torch.testing.assert_close(back.latents, inv.trajectory[-1].expand(2, -1, -1, -1))


@pytest.mark.parametrize("method", ["none", "fpe"])
def test_identity_edit_returns_the_source(flux, method):
    """Target = source prompt: the target row is the source row (free, on the source prompt);
    forced, the source row is the encoded image."""
    inv = rf_invert(flux, scene(), "a red car", num_steps=STEPS)
    same = edit(flux, "a red car", ["a red car"], method=method, inversion=inv,
                source_branch="free", source_branch_prompt="source")  # fmt: skip
    torch.testing.assert_close(same.latents[1], same.latents[0], atol=1e-5, rtol=1e-5)
    forced = edit(flux, "a red car", ["a red car"], method=method, inversion=inv)
    assert torch.equal(forced.latents[0], inv.trajectory[-1][0])


# -- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gamma": -0.1}, r"gamma=-0\.1: use a number in \[0, 1\] \(0: plain inverse Euler"),
     ({"gamma": 1.5}, r"gamma=1\.5: .*the authors: 0\.5"),
     ({"eta": 2}, r"eta=2: use a number in \[0, 1\] \(0: the plain edit"),
     ({"eta": float("nan")}, r"eta=nan"),
     ({"stop": 1.5}, r"stop=1\.5: .*a fraction of the steps"),
     ({"start": True}, r"start=True"),
     ({"start": 0.5, "stop": 0.25}, r"start=0\.5 > stop=0\.25: .*give start <= stop")],
)  # fmt: skip
def test_bad_settings_are_refused(sd3, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rf_invert(sd3, scene(), num_steps=2, **kwargs)


def test_unets_are_refused(tiny_pipe):
    with pytest.raises(NotImplementedError, match=r"rf_invert needs a flow model.*ddim_invert"):
        rf_invert(tiny_pipe, np.zeros((64, 64, 3), dtype=np.uint8))

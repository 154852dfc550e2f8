"""The identity edit of a real image on SD3 and Flux, for every method that edits from an
inversion and every flow inversion: with the target prompt the one the source row runs on, every
target row computes what the source row computes, so a ``direct`` source branch (the source put
onto the inverted latents, the same correction added to the targets) returns the inverted image
exactly, and a ``free`` one returns the source row (the reconstruction). Value injection
(``rf-solver``) is left out: it gives the targets values the source row does not have (the
inversion's), by design; tests/test_rf_solver.py bounds its identity edit instead."""

from __future__ import annotations

import pytest
import torch

from editing import edit, flow_invert
from editing.rf_inversion import rf_invert
from editing.rf_solver import solver_invert
from probe.models import load_pipeline
from tests.test_flow_inversion import scene
from tests.test_flux import true_cfg_flux

STEPS = 3
PROMPT = "a red car"
INVERSIONS = {
    "euler": lambda pipe: flow_invert(pipe, scene(), PROMPT, num_steps=STEPS),
    "rf-inversion": lambda pipe: rf_invert(pipe, scene(), PROMPT, num_steps=STEPS, stop=1.0),
    "rf-solver": lambda pipe: solver_invert(pipe, scene(), PROMPT, num_steps=STEPS),
    "fireflow": lambda pipe: solver_invert(pipe, scene(), PROMPT, STEPS, solver="fireflow"),
}
METHODS = {
    "none": {},
    "fpe": {"layers": "all", "step_fraction": 1},
    "stable-flow": {"layers": "all", "injected_half": "both"},
    "masactrl": {"start_step": 0, "start_layer": 0},
}


@pytest.fixture(scope="module")
def models():
    flux = load_pipeline("tiny-flux")
    return {"sd3": load_pipeline("tiny-sd3"), "flux": flux, "cfg_flux": true_cfg_flux(flux)}


@pytest.mark.parametrize("model", ["sd3", "cfg_flux", "flux"])
@pytest.mark.parametrize("inversion", list(INVERSIONS))
def test_identity_edit_of_a_real_image_returns_it(model, inversion, models):
    pipe = models[model]
    inv = INVERSIONS[inversion](pipe)
    guidance = 1.0 if model == "flux" else 2.0  # unconditional rows where the family has them
    for method, options in METHODS.items():  # one guidance for every row (Stable Flow's own
        # real-image edit guides its source row at 1 and its targets at `guidance`)
        direct = edit(pipe, PROMPT, [PROMPT, PROMPT], method=method, inversion=inv,
                      guidance_scale=guidance, source_branch="direct",
                      source_branch_prompt="source", source_guidance_scale=guidance,
                      **options)  # fmt: skip
        for row in direct.latents:
            torch.testing.assert_close(row, inv.trajectory[-1][0], atol=1e-5, rtol=0,
                                       msg=f"{method}: direct")  # fmt: skip
        free = edit(pipe, PROMPT, [PROMPT], method=method, inversion=inv, guidance_scale=guidance,
                    source_branch="free", source_branch_prompt="source",
                    source_guidance_scale=guidance, **options)  # fmt: skip
        torch.testing.assert_close(free.latents[1], free.latents[0], atol=1e-5, rtol=0,
                                   msg=f"{method}: free")  # fmt: skip

"""Stable Flow's attention injection and MasaCtrl on DiTs (``editing/methods/kv_injection.py``)
against a reference written from the authors' code (snap-research/stable-flow,
``attention_processor.py``): the reference's own processors (tests/dit_reference.py) swap the
target rows' image-token keys and values, *as they come out of* ``to_k``/``to_v``, for the
source row's, before the QK norm and RoPE (attnprobe swaps after both: the test is also the
check that the two are the same); queries and text keys/values stay each row's own; the
softmax is written out; the flow-match Euler loop is the reference's own. Rows: Stable Flow
pairs the conditional target with the conditional source (the batch is ``[source, target]``
on a guidance-distilled Flux, ``[uncond source, uncond target, cond source, cond target]``
under classifier-free guidance); MasaCtrl pairs each guidance half.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FluxTransformer2DModel
from PIL import Image
from torch import Tensor

from editing import edit
from editing.methods.kv_injection import KVInjection, inject
from probe.attention.controller import AttentionCall
from probe.attention.layers import resolve_layers
from probe.families import family_of
from probe.models import layer_table
from tests.dit_reference import (
    SEED,
    SIZE,
    RefAttention,
    run_flux_reference,
    run_sd3_reference,
    without_guidance_embedding,
)
from tests.test_flux import FLUX_DEV

STEPS = 4
PROMPTS = ["a red car", "a blue car"]
TOL = 1e-4
FLUX_DEV_VITAL = [0, 1, 17, 18, 25, 28, 53, 54, 56]  # run_stable_flow.py, counted 0-56


@pytest.fixture(scope="module")
def true_cfg_flux(flux):
    return without_guidance_embedding(flux)


class RefKVInjection(RefAttention):
    """In ``layers`` and ``steps``, each target row's image keys and values, before the QK norm
    and RoPE, are its source row's (``pairs``: (source, target) rows)."""

    def __init__(self, pairs: list[tuple[int, int]], layers: set[int], steps: set[int]) -> None:
        super().__init__()
        self.pairs, self.layers, self.steps = pairs, layers, steps

    def before_norm(self, k_image: Tensor, v_image: Tensor) -> tuple[Tensor, Tensor]:
        if self.layer not in self.layers or self.step not in self.steps:
            return k_image, v_image
        k_image, v_image = k_image.clone(), v_image.clone()
        for s, t in self.pairs:
            k_image[t], v_image[t] = k_image[s], v_image[s]
        return k_image, v_image


def stable_flow_ref(layers: set[int]):
    """Conditional target from the conditional source, every step."""
    return lambda guided: RefKVInjection([(2, 3)] if guided else [(0, 1)], layers, set(range(99)))


def masactrl_ref(layers: set[int], start_step: int):
    """Each guidance half's target from its own source, steps ``start_step`` on."""
    pairs = lambda guided: [(0, 1), (2, 3)] if guided else [(0, 1)]  # noqa: E731
    return lambda guided: RefKVInjection(pairs(guided), layers, set(range(start_step, 99)))


def run(pipe, scale: float, prompts=PROMPTS, **kwargs):
    return edit(pipe, prompts[0], prompts[1:], seed=SEED, num_steps=STEPS,
                guidance_scale=scale, height=SIZE, width=SIZE, **kwargs)  # fmt: skip


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


class TextToo(KVInjection):
    """A mutant: the text tokens' keys and values injected as well."""

    def edit_joint(self, call: AttentionCall, q, k, v, n_image: int, out: Tensor) -> Tensor:
        src, tgt = self.pairs(call)
        return inject(q, k, v, k.shape[2], out, src, tgt) if tgt else out


# Flux (tiny: double blocks 0-1, single 2-3): a double and a single block; SD3 (tiny: 3 blocks)
CASES = {  # pipeline fixture, guidance, reference loop, injected layers, unconditional rows
    "flux-distilled": ("flux", 3.5, run_flux_reference, "0,3", False),
    "flux-true-cfg": ("true_cfg_flux", 4.0, run_flux_reference, "1,2", True),
    "sd3": ("sd3", 4.0, run_sd3_reference, "0,2", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stable_flow_matches_the_reference(case, request):
    name, scale, reference, layers, has_uncond_rows = CASES[case]
    pipe = request.getfixturevalue(name)
    ours = run(pipe, scale, method="stable-flow", layers=layers)
    assert ours.settings["step_fraction"] == 1.0
    assert ours.settings["controllers"][0].startswith("KVInjection")
    chosen = {int(i) for i in layers.split(",")}
    ref = reference(pipe, PROMPTS, scale, STEPS, stable_flow_ref(chosen))
    assert max_diff(ours.latents, ref) <= TOL, max_diff(ours.latents, ref)
    plain = run(pipe, scale, method="none")
    assert max_diff(plain.latents[0], ref[0]) <= TOL  # the source row is never touched
    assert max_diff(plain.latents[1], ref[1]) > 10 * TOL  # the edit acts on the target
    text_too = run(pipe, scale, controllers=[TextToo(layers)])  # the reference tells it apart
    assert max_diff(text_too.latents[1], ref[1]) > 10 * TOL
    if has_uncond_rows:  # and an injection of the unconditional rows too
        both = run(pipe, scale, method="stable-flow", layers=layers, injected_half="both")
        assert max_diff(both.latents[1], ref[1]) > 10 * TOL


MASACTRL_CASES = {  # the masactrl preset: layer 10 * n // 16 on (tiny-flux 4 -> 2, tiny-sd3 3 -> 1)
    "flux-true-cfg": ("true_cfg_flux", 4.0, run_flux_reference, {2, 3}),
    "sd3": ("sd3", 4.0, run_sd3_reference, {1, 2}),
}


@pytest.mark.parametrize("case", list(MASACTRL_CASES))
def test_masactrl_on_a_dit_matches_the_reference(case, request):
    name, scale, reference, layers = MASACTRL_CASES[case]
    pipe = request.getfixturevalue(name)
    ours = run(pipe, scale, method="masactrl", start_step=1)
    assert ours.settings["controllers"] == [
        f"JointMutualAttention(start_step=1, start_layer={min(layers)})"
    ]
    ref = reference(pipe, PROMPTS, scale, STEPS, masactrl_ref(layers, start_step=1))
    assert max_diff(ours.latents, ref) <= TOL, max_diff(ours.latents, ref)
    later = run(pipe, scale, method="masactrl", start_step=1, start_layer=max(layers))
    assert max_diff(later.latents[1], ref[1]) > 10 * TOL  # the start layer is honoured


@pytest.mark.parametrize("name", ["flux", "true_cfg_flux", "sd3"])
def test_identity_edit_returns_the_source(name, request):
    pipe = request.getfixturevalue(name)
    for kwargs in ({"method": "stable-flow", "layers": "all"}, {"method": "masactrl"}):
        same = run(pipe, 4.0, prompts=[PROMPTS[0], PROMPTS[0]], **kwargs)
        assert max_diff(same.latents[0], same.latents[1]) <= TOL


def test_vital_preset_is_flux_dev_published_set():
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_DEV)
        layers = family_of(transformer).layers(transformer)
    assert resolve_layers(layers, "vital") == FLUX_DEV_VITAL
    assert [layers[i].name for i in FLUX_DEV_VITAL[3:5]] == [
        "transformer_blocks.18",
        "single_transformer_blocks.6",
    ]
    assert resolve_layers(layers, "masactrl") == list(range(35, 57))


def test_vital_preset_refuses_without_a_measured_set():
    with pytest.raises(ValueError, match=r"published for FLUX.1-dev.*--layers.*vital_blocks"):
        resolve_layers(layer_table("toy-flux"), "vital")
    with pytest.raises(ValueError, match="vital_blocks"):
        resolve_layers(layer_table("tiny-sd3"), "vital")


def test_vital_blocks_from_the_model_folder(flux, tmp_path):
    """A folder's attnprobe.json ``vital_blocks`` is the ``vital`` preset of that model."""
    with pytest.raises(ValueError, match="no measured set.*--layers"):  # tiny-flux has none
        run(flux, 3.5, method="stable-flow")
    (tmp_path / "attnprobe.json").write_text(json.dumps({"vital_blocks": [1, 2]}))
    before = flux.config.get("_name_or_path")
    flux.register_to_config(_name_or_path=str(tmp_path))
    try:
        vital = run(flux, 3.5, method="stable-flow")
        (tmp_path / "attnprobe.json").write_text(json.dumps({"vital_blocks": "1,2"}))
        with pytest.raises(ValueError, match="not a list of layer indices"):
            run(flux, 3.5, method="stable-flow")
    finally:
        flux.register_to_config(_name_or_path=before)
    assert vital.settings["controllers"][0].startswith("KVInjection(layers=[1, 2]")
    assert torch.equal(vital.latents, run(flux, 3.5, method="stable-flow", layers="1,2").latents)


def test_unsupported_methods_on_a_dit_say_why(flux):
    with pytest.raises(NotImplementedError, match="joint softmax.*share one normalisation"):
        run(flux, 3.5, method="p2p")
    with pytest.raises(NotImplementedError, match="mask.*not carried to joint attention"):
        run(flux, 3.5, method="masactrl", mask_word="car")


@pytest.mark.parametrize("case", list(CASES))
def test_stable_flow_with_its_reference_row_at_guidance_one(case, request):
    """Stable Flow's real-image edit guides its reference row at 1 and its edits at 3: per-row
    guidance (FLUX.1-dev's guidance input per row; classifier-free guidance per row on SD3
    and a true-CFG Flux) matches the reference loop given one guidance per row."""
    name, scale, reference, layers, _ = CASES[case]
    pipe = request.getfixturevalue(name)
    ours = run(pipe, scale, method="stable-flow", layers=layers, source_guidance_scale=1.0)
    assert ours.settings["source_guidance_scale"] == 1.0
    chosen = {int(i) for i in layers.split(",")}
    ref = reference(pipe, PROMPTS, [1.0, scale], STEPS, stable_flow_ref(chosen))
    assert max_diff(ours.latents, ref) <= TOL, max_diff(ours.latents, ref)
    one = run(pipe, scale, method="stable-flow", layers=layers)  # one guidance: another edit
    assert max_diff(one.latents[0], ref[0]) > 10 * TOL
    alone = run(pipe, 1.0, method="none")  # the source row as if generated at guidance 1
    assert max_diff(alone.latents[0], ref[0]) <= TOL


def test_stable_flow_guides_the_reference_row_at_one_on_a_real_image_only(flux):
    from editing.flow_inversion import flow_invert

    inv = flow_invert(flux, Image.new("RGB", (SIZE, SIZE), (200, 40, 40)), PROMPTS[0], STEPS)
    real = edit(flux, PROMPTS[0], PROMPTS[1:], method="stable-flow", layers="0",
                inversion=inv, guidance_scale=3.0)  # fmt: skip
    assert (real.settings["source_guidance_scale"], real.settings["guidance_scale"]) == (1.0, 3.0)
    fpe = edit(flux, PROMPTS[0], PROMPTS[1:], method="fpe", layers="0", inversion=inv,
               guidance_scale=3.0)  # fmt: skip
    assert fpe.settings["source_guidance_scale"] == 3.0  # FPE: one guidance for every row
    generated = run(flux, 3.0, method="stable-flow", layers="0")
    assert generated.settings["source_guidance_scale"] == 3.0
    told = edit(flux, PROMPTS[0], PROMPTS[1:], method="stable-flow", layers="0", inversion=inv,
                guidance_scale=3.0, source_guidance_scale=3.0)  # fmt: skip
    assert max_diff(told.latents[1], real.latents[1]) > 10 * TOL  # the row's guidance matters

"""The real-image path: the source branch (forced, free, direct inversion), the prompt it runs
on, each method's authors' defaults, and reconstruction quality measured without forcing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from editing import edit
from editing.inversion import ddim_invert, encode_image, load_image, reconstruct
from editing.methods.registry import get_method
from editing.sampling import decode, denoise, encode_prompts
from editing.scoring.images import psnr
from probe.attention.batch import BatchLayout
from probe.cli.main import main
from probe.models import TOY_DIR

STEPS = 4


@pytest.fixture(scope="module")
def image(tiny_pipe) -> np.ndarray:
    return np.asarray(edit(tiny_pipe, "a red car", ["a red car"], num_steps=STEPS).source)


@pytest.fixture(scope="module")
def inverted(tiny_pipe, image):
    return ddim_invert(tiny_pipe, image, num_steps=STEPS)  # the empty prompt, as the FPE code


def test_each_method_samples_the_source_as_its_authors_do(tiny_pipe, inverted):
    """FPE (edit_real.ipynb): forced, on the empty prompt it was inverted with; MasaCtrl
    (playground_real.ipynb): free, empty prompt; Prompt-to-Prompt: free, the source prompt."""
    expected = {"fpe": ("forced", ""), "masactrl": ("free", ""), "p2p": ("free", "a red car"),
                "cross": ("forced", "a red car"), "none": ("forced", "")}  # fmt: skip
    for method, (branch, prompt) in expected.items():
        spec = get_method(method)
        assert (spec.source_on_real_image, spec.source_prompt_on_real_image) == (
            branch, "inversion" if prompt == "" else "source")  # fmt: skip
        target = "a blue car"
        result = edit(tiny_pipe, "a red car", [target], method=method, inversion=inverted)
        settings = result.settings
        assert (settings["source_branch"], settings["source_branch_prompt"]) == (branch, prompt)
        assert settings["inversion_prompt"] == "" and settings["real_image"] is True
        forced = torch.allclose(result.latents[0], inverted.trajectory[-1][0])
        assert forced == (branch == "forced"), method


def test_the_source_branch_prompt_is_the_inversions_or_the_source(tiny_pipe, inverted):
    empty = edit(tiny_pipe, "a red car", ["a blue car"], inversion=inverted, source_branch="free")
    given = edit(tiny_pipe, "a red car", ["a blue car"], inversion=inverted, source_branch="free",
                 source_branch_prompt="source")  # fmt: skip
    assert empty.settings["source_branch_prompt"] == ""
    assert given.settings["source_branch_prompt"] == "a red car"
    assert (empty.latents[0] - given.latents[0]).abs().max() > 1e-3  # the prompt is really used


def test_a_free_source_is_the_plain_reconstruction(tiny_pipe, inverted):
    """Free: the source row is denoised from the inverted noise like any row: the same latents
    as :func:`reconstruct` (the source alone), whatever the targets do."""
    result = edit(tiny_pipe, "a red car", ["a blue car"], method="masactrl", inversion=inverted,
                  guidance_scale=5.0, start_step=0, start_layer=0)  # fmt: skip
    alone = denoise(tiny_pipe, encode_prompts(tiny_pipe, [""], True), inverted.trajectory[0].clone(),
                    BatchLayout.for_samples(1, True), [], STEPS, 5.0)  # fmt: skip
    assert (result.latents[0] - alone[0]).abs().max() <= 1e-4
    image = np.asarray(reconstruct(tiny_pipe, inverted, 5.0), dtype=np.int16)
    assert np.abs(np.asarray(result.source, dtype=np.int16) - image).max() <= 1  # batch rounding


def test_direct_inversion_corrects_the_targets_with_the_sources_correction(tiny_pipe, inverted):
    """Ju et al.'s variant: the source's per-step correction (inverted latent minus its denoised
    one) is added to the targets. A target identical to the source branch then follows the
    inverted latents exactly; forcing the source alone leaves it to drift."""
    kwargs = {"method": "none", "inversion": inverted, "guidance_scale": 5.0}
    direct = edit(tiny_pipe, "", [""], source_branch="direct", **kwargs)
    forced = edit(tiny_pipe, "", [""], source_branch="forced", **kwargs)
    z0 = inverted.trajectory[-1][0]
    assert torch.allclose(direct.latents[0], z0) and torch.allclose(forced.latents[0], z0)
    assert (direct.latents[1] - z0).abs().max() <= 1e-4
    assert (forced.latents[1] - z0).abs().max() > 1e-2
    # another target gets the same correction: direct − forced is the summed corrections' effect,
    # so a target that differs from the source differs from its forced run too
    other = edit(tiny_pipe, "", ["a blue car"], source_branch="direct", **kwargs)
    plain = edit(tiny_pipe, "", ["a blue car"], source_branch="forced", **kwargs)
    assert (other.latents[1] - plain.latents[1]).abs().max() > 1e-3
    assert direct.settings["source_branch"] == "direct"


def test_null_text_inversion_runs_the_source_free_by_default(tiny_pipe, image):
    from editing.null_text import null_text_invert

    pivot = ddim_invert(tiny_pipe, image, prompt="a red car", num_steps=STEPS)
    tuned = null_text_invert(tiny_pipe, pivot, "a red car", guidance_scale=5.0, inner_steps=1)
    result = edit(tiny_pipe, "a red car", ["a blue car"], inversion=tuned, guidance_scale=5.0)
    assert result.settings["source_branch"] == "free"
    assert result.settings["source_branch_prompt"] == "a red car"
    forced = edit(tiny_pipe, "a red car", ["a blue car"], inversion=tuned, guidance_scale=5.0,
                  source_branch="forced")  # fmt: skip
    assert torch.allclose(forced.latents[0], pivot.trajectory[-1][0])
    with pytest.raises(ValueError, match="null-text inversion only matters with guidance"):
        reconstruct(tiny_pipe, tuned, 1.0)


def test_bad_source_branch_arguments_are_refused(tiny_pipe, inverted):
    with pytest.raises(ValueError, match="source_branch only apply to a real image"):
        edit(tiny_pipe, "a red car", ["a blue car"], num_steps=2, source_branch="forced")
    with pytest.raises(ValueError, match="source_branch_prompt only apply to a real image"):
        edit(tiny_pipe, "a red car", ["a blue car"], num_steps=2, source_branch_prompt="source")
    with pytest.raises(ValueError, match="source_branch='pinned': use one of forced, free, direct"):
        edit(tiny_pipe, "a red car", ["a blue car"], inversion=inverted, source_branch="pinned")
    with pytest.raises(ValueError, match="source_branch_prompt='mine': use 'inversion'"):
        edit(tiny_pipe, "a red car", ["a b"], inversion=inverted, source_branch_prompt="mine")
    with pytest.raises(ValueError, match="the inversion has 5 latents, 3 steps need 4"):
        denoise(tiny_pipe, encode_prompts(tiny_pipe, [""], False), inverted.trajectory[0].clone(),
                BatchLayout.for_samples(1, False), [], 3, 1.0,
                source_trajectory=inverted.trajectory)  # fmt: skip


def test_edit_command_source_branch_flags(tmp_path, capsys, image):
    from PIL import Image

    path = tmp_path / "car.png"
    Image.fromarray(image).save(path)
    base = ["edit", "--model", "tiny", "--source", "a red car", "--target", "a blue car",
            "--num-steps", str(STEPS)]  # fmt: skip
    out = tmp_path / "direct"
    assert main([*base, "--image", str(path), "--source-branch", "direct", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["source_branch"], settings["source_branch_prompt"]) == ("direct", "")
    out = tmp_path / "p2p"  # Prompt-to-Prompt inverts with the source prompt and runs it free
    assert main([*base, "--image", str(path), "--method", "p2p", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["inversion_prompt"] == "a red car" and settings["source_branch"] == "free"
    assert main([*base, "--source-branch", "free", "--out", str(tmp_path / "x")]) == 2
    assert "--source-branch only apply to a real image: add --image" in capsys.readouterr().err
    bad = [*base, "--image", str(path), "--inversion", "null-text", "--source-branch-prompt",
           "empty", "--out", str(tmp_path / "y")]  # fmt: skip
    assert main(bad) == 2
    assert "does not apply to --inversion null-text" in capsys.readouterr().err


# ---- reconstruction quality, measured without forcing (the trained toy) ---------------------

needs_toy = pytest.mark.skipif(
    not (TOY_DIR / "model_index.json").is_file(),
    reason=f"the trained toy model is not in {TOY_DIR} (train it with `attnprobe toy train`)",
)


@needs_toy
def test_inversion_reconstructs_toy_renders_without_forcing():
    """The source denoised from the inverted noise, nothing forced, against the VAE round trip
    (the ceiling of any latent path). Measured (docs/editing.md): 37-41 dB with the empty prompt,
    36-40 dB with the source prompt at guidance 1, 19-25 dB at guidance 7.5. A forced source
    reaches the round trip by construction, so it is no measure of the inversion."""
    from probe.models import generation_defaults, load_pipeline
    from probe.toy.world.world import render_scene, scene_for_prompt

    pipe = load_pipeline("toy")
    size = generation_defaults(pipe)["height"]
    for i, prompt in enumerate(["a red car", "a yellow car"]):
        render = render_scene(scene_for_prompt(prompt, 500 + i * 2), size).image
        vae = decode(pipe, encode_image(pipe, load_image(render, (size, size))))[0]
        empty, with_source = ddim_invert(pipe, render), ddim_invert(pipe, render, prompt=prompt)
        assert psnr(vae, reconstruct(pipe, empty, 1.0)) >= 33
        assert psnr(vae, reconstruct(pipe, empty, 7.5)) >= 33  # "" guided is "" unguided
        at_1 = psnr(vae, reconstruct(pipe, with_source, 1.0))
        at_75 = psnr(vae, reconstruct(pipe, with_source, 7.5))
        assert at_1 >= 33 and at_75 <= at_1 - 8  # guidance pulls DDIM off its inversion
        result = edit(pipe, prompt, [prompt], inversion=empty, guidance_scale=7.5)
        assert psnr(vae, result.source) >= 60  # forced: the round trip, up to batch rounding

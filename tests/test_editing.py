from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from editing.editor import edit, make_controller
from editing.inversion import ddim_invert, load_image
from editing.methods.masactrl import MutualSelfAttention
from editing.methods.p2p import PromptToPrompt, ThresholdSelfReplace
from editing.methods.p2p_align import global_alignment
from editing.methods.replace import (
    CrossAttentionReplace,
    MaterialisedSelfAttentionReplace,
    SelfAttentionReplace,
)
from editing.sampling import decode, denoise, encode_prompts
from probe.attention.batch import BatchLayout
from probe.attention.controller import Controller
from probe.cli.main import main


def test_target_equal_to_source_returns_the_source(tiny_pipe):
    result = edit(tiny_pipe, "a red car", ["a red car"], method="fpe", num_steps=8)
    a = np.asarray(result.source, dtype=np.float32)
    b = np.asarray(result.targets[0], dtype=np.float32)
    assert np.abs(a - b).max() <= 1e-4 * 255
    assert torch.allclose(result.latents[0], result.latents[1], atol=1e-4)


def test_fused_fpe_equals_materialised_version(tiny_pipe):
    kwargs = {"num_steps": 8, "seed": 3}
    fused = edit(tiny_pipe, "a red car", ["a blue car", "a green dog"],
                 controllers=[SelfAttentionReplace("fpe", 0.8)], **kwargs)  # fmt: skip
    mat = edit(tiny_pipe, "a red car", ["a blue car", "a green dog"],
               controllers=[MaterialisedSelfAttentionReplace("fpe", 0.8)], **kwargs)  # fmt: skip
    plain = edit(tiny_pipe, "a red car", ["a blue car", "a green dog"], method="none", **kwargs)
    assert (fused.latents - mat.latents).abs().max() < 1e-4
    assert (fused.latents[1:] - plain.latents[1:]).abs().max() > 1e-2  # the edit did something
    assert torch.equal(fused.latents[0], plain.latents[0])  # the source branch is untouched


class SawProbs(Controller):
    """Fails the test if any attention call materialises probabilities."""

    def __init__(self) -> None:
        self.calls = 0

    def active(self, call):
        self.calls += 1
        return False


def test_fpe_never_materialises_probabilities(tiny_pipe, monkeypatch):
    import probe.attention.processor as processor

    def forbidden(*args, **kwargs):
        raise AssertionError("FPE materialised an attention map")

    monkeypatch.setattr(processor, "attention_probs", forbidden)
    edit(tiny_pipe, "a red car", ["a blue car"], method="fpe", num_steps=4)
    with pytest.raises(AssertionError, match="materialised"):
        edit(tiny_pipe, "a red car", ["a blue car"], num_steps=4,
             controllers=[MaterialisedSelfAttentionReplace("fpe", 0.8)])  # fmt: skip


def test_targets_share_one_source_branch(tiny_pipe):
    one = edit(tiny_pipe, "a red car", ["a blue car"], num_steps=6)
    two = edit(tiny_pipe, "a red car", ["a blue car", "a white car"], num_steps=6)
    assert (one.latents[1] - two.latents[1]).abs().max() < 1e-4
    assert len(two.targets) == 2


def test_step_fraction_and_layers_limit_the_edit(tiny_pipe):
    plain = edit(tiny_pipe, "a red car", ["a blue car"], method="none", num_steps=6)
    nothing = edit(
        tiny_pipe, "a red car", ["a blue car"], method="fpe", step_fraction=0.0, num_steps=6
    )
    no_layers = edit(
        tiny_pipe, "a red car", ["a blue car"], method="fpe", layers="none", num_steps=6
    )
    assert torch.equal(nothing.latents, plain.latents)
    assert torch.equal(no_layers.latents, plain.latents)
    controller = SelfAttentionReplace("fpe", 0.5)
    edit(tiny_pipe, "a red car", ["a blue car"], controllers=[controller], num_steps=6)
    assert controller.steps == frozenset({0, 1, 2})
    assert controller.layers == frozenset(range(2, 13))


def test_methods_build_their_controllers():
    assert isinstance(make_controller("fpe")[0], SelfAttentionReplace)
    assert isinstance(make_controller("cross")[0], CrossAttentionReplace)
    p2p = make_controller("p2p")
    assert isinstance(p2p[0], PromptToPrompt)
    assert isinstance(p2p[1], ThresholdSelfReplace) and p2p[1].threshold == 16
    assert isinstance(make_controller("masactrl")[0], MutualSelfAttention)
    assert make_controller("none") == []
    with pytest.raises(ValueError, match="unknown edit method 'sdedit'"):
        make_controller("sdedit")
    with pytest.raises(ValueError, match="option 'start_step' does not apply to fpe"):
        make_controller("fpe", start_step=3)


def test_masactrl_starts_at_its_step_and_layer(tiny_pipe):
    c = MutualSelfAttention(start_step=2, start_layer=13)
    edit(tiny_pipe, "a red car", ["a blue car"], controllers=[c], num_steps=5)
    assert c.layers == frozenset({13, 14, 15}) and c.steps == frozenset({2, 3, 4})
    with pytest.raises(ValueError, match="start_layer 16 does not exist"):
        edit(
            tiny_pipe,
            "a red car",
            ["a blue car"],
            controllers=[MutualSelfAttention(4, 16)],
            num_steps=2,
        )


def test_inversion_is_aligned_with_sampling(tiny_pipe):
    """With a UNet that predicts zero noise, DDIM inversion and sampling are exact inverses:
    a trajectory off by one step would rescale the latent."""
    from copy import deepcopy

    pipe = deepcopy(tiny_pipe)
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    inv = ddim_invert(pipe, image, num_steps=10)
    assert len(inv.trajectory) == 11
    emb = encode_prompts(pipe, [""], False)
    layout = BatchLayout.for_samples(1, False)
    final = denoise(pipe, emb, inv.trajectory[0].clone(), layout, [], 10, 1.0)
    assert torch.allclose(final, inv.trajectory[-1], atol=1e-4)
    # the real-image edit's source row follows the trajectory and ends on z_0
    result = edit(pipe, "", ["a blue car"], inversion=inv, guidance_scale=1.0)
    assert torch.allclose(result.latents[0], inv.trajectory[-1])
    alone = np.asarray(decode(pipe, inv.trajectory[-1])[0], dtype=np.int16)
    assert np.abs(np.asarray(result.source, dtype=np.int16) - alone).max() <= 1  # batch rounding


def test_bad_inputs_get_clear_errors(tiny_pipe):
    with pytest.raises(ValueError, match="has 8[0-9] tokens; the text encoder reads 77"):
        edit(tiny_pipe, "a red car", ["a " * 80 + "blue car"], num_steps=2)
    with pytest.raises(ValueError, match="layer 16 does not exist"):
        edit(tiny_pipe, "a red car", ["a blue car"], layers="10-16", num_steps=2)
    with pytest.raises(ValueError, match="non-empty list"):
        edit(tiny_pipe, "a red car", "a blue car", num_steps=2)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    from PIL import Image

    with pytest.raises(ValueError, match="mode is RGBA, not RGB"):
        load_image(Image.fromarray(image).convert("RGBA"), (64, 64))
    with pytest.raises(ValueError, match="is 32x32 px but the model works at 64x64"):
        ddim_invert(tiny_pipe, image[:32, :32])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ddim_invert(tiny_pipe, "/no/such.png")


def test_edit_command_writes_images_grid_and_settings(tmp_path, capsys):
    out = tmp_path / "e"
    code = main(["edit", "--model", "tiny", "--source", "a red car", "--target", "a blue car",
                 "--target", "a green car", "--num-steps", "4", "--layers", "2-12", "--out", str(out)])  # fmt: skip
    assert code == 0
    for name in ("source.png", "target_0.png", "target_1.png", "grid.png", "settings.json"):
        assert (out / name).is_file(), name
    settings = json.loads((out / "settings.json").read_text())
    assert settings["targets"] == ["a blue car", "a green car"] and settings["method"] == "fpe"
    real = tmp_path / "r"
    assert main(["edit", "--model", "tiny", "--source", "a red car", "--target", "a blue car",
                 "--image", str(out / "source.png"), "--num-steps", "4", "--out", str(real)]) == 0  # fmt: skip
    assert json.loads((real / "settings.json").read_text())["real_image"] is True
    with pytest.raises(SystemExit) as exited:  # --method's choices come from the registry
        main(["edit", "--model", "tiny", "--source", "a", "--target", "b", "--method", "x",
              "--out", str(real)])  # fmt: skip
    assert exited.value.code == 2
    assert "--method: invalid choice: 'x'" in capsys.readouterr().err


def test_token_alignment_for_refinement():
    src = ["<s>", "a", "car", "</s>"]
    tgt = ["<s>", "a", "red", "car", "</s>"]
    assert global_alignment(src, tgt) == [0, 1, -1, 2, 3]


def test_prompt_to_prompt_modes(tiny_pipe):
    plain = edit(tiny_pipe, "a red car", ["a blue car"], method="none", num_steps=4)
    swap = edit(tiny_pipe, "a red car", ["a blue car"], method="p2p", num_steps=4)
    assert (swap.latents[1] - plain.latents[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="same number of words.*mode='refine'"):
        edit(tiny_pipe, "a red car", ["a big blue car"], method="p2p", num_steps=2)
    refine = edit(tiny_pipe, "a car", ["a red car"], method="p2p", mode="refine", num_steps=4)
    assert len(refine.targets) == 1
    same = edit(tiny_pipe, "a red car", ["a red car"], method="p2p", mode="reweight", num_steps=4,
                weights={"red": 1.0})  # fmt: skip
    assert torch.allclose(same.latents[0], same.latents[1], atol=1e-4)  # factor 1 changes nothing
    heavy = edit(tiny_pipe, "a red car", ["a red car"], method="p2p", mode="reweight", num_steps=4,
                 weights={"red": 3.0})  # fmt: skip
    assert (heavy.latents[1] - heavy.latents[0]).abs().max() > 1e-3
    with pytest.raises(KeyError, match="word 'green' is not in the prompt"):
        edit(
            tiny_pipe,
            "a red car",
            ["a red car"],
            method="p2p",
            mode="reweight",
            weights={"green": 2.0},
        )


def test_null_text_inversion_retraces_the_pivot_under_guidance(tiny_pipe):
    from editing.null_text import null_text_invert

    image = np.asarray(edit(tiny_pipe, "a red car", ["a red car"], num_steps=5).source)
    pivot = ddim_invert(tiny_pipe, image, prompt="a red car", num_steps=5)
    tuned = null_text_invert(
        tiny_pipe, pivot, "a red car", guidance_scale=5.0, inner_steps=20, lr=0.1
    )
    assert tuned.kind == "null-text" and len(tuned.null_embeddings) == 5
    plain = edit(tiny_pipe, "a red car", ["a red car"], method="none", guidance_scale=5.0,
                 inversion=ddim_invert(tiny_pipe, image, prompt="a red car", num_steps=5))  # fmt: skip
    # the official path pins the source row to z_0; null-text must get there by denoising
    nt = edit(
        tiny_pipe, "a red car", ["a red car"], method="none", guidance_scale=5.0, inversion=tuned
    )
    z0 = pivot.trajectory[-1][0]
    drift_without = (_denoise_plain(tiny_pipe, pivot, 5.0) - z0).norm()
    drift_with = (nt.latents[0] - z0).norm()
    assert drift_with < 0.5 * drift_without
    assert torch.allclose(plain.latents[0], z0)


def _denoise_plain(pipe, inversion, scale):
    emb = encode_prompts(pipe, [inversion.prompt], True)
    start = inversion.trajectory[0].clone()
    return denoise(
        pipe, emb, start, BatchLayout.for_samples(1, True), [], inversion.num_steps, scale
    )[0]


@pytest.mark.parametrize(("inversion", "pivot_prompt"), [("ddim", ""), ("null-text", "a red car")])
def test_cli_inverts_as_published(tmp_path, monkeypatch, inversion, pivot_prompt):
    """FPE's path inverts with the empty prompt; null-text's pivot is the source prompt's DDIM
    inversion at guidance 1 (``null_text_w_ptp.ipynb``), optimised at the edit's guidance."""
    from PIL import Image

    import editing.inversion
    import editing.null_text

    seen: dict = {}
    invert = editing.inversion.ddim_invert

    def spy_invert(pipe, image, prompt="", num_steps=None):
        seen["pivot"] = prompt
        return invert(pipe, image, prompt, num_steps)

    def spy_null_text(pipe, pivot, prompt, guidance_scale=None):
        seen["null_text"] = (pivot.prompt, prompt, guidance_scale)
        return pivot

    monkeypatch.setattr(editing.inversion, "ddim_invert", spy_invert)
    monkeypatch.setattr(editing.null_text, "null_text_invert", spy_null_text)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "car.png")
    assert main(["edit", "--model", "tiny", "--source", "a red car", "--target", "a blue car",
                 "--image", str(tmp_path / "car.png"), "--inversion", inversion, "--guidance",
                 "3.0", "--num-steps", "2", "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    assert seen["pivot"] == pivot_prompt
    if inversion == "null-text":
        assert seen["null_text"] == ("a red car", "a red car", 3.0)
    else:
        assert "null_text" not in seen

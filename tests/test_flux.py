"""Flux through the same hooks (issue 15): double- and single-stream blocks recorded in the four
joint kinds, T5 words, a dataset, DiT FPE, on ``tiny-flux`` (units) and FLUX.1-dev's transformer
config built on the meta device.

FLUX.1-dev's ``transformer/config.json`` values are pinned below as read from several public
copies of it (the Hugging Face repository itself is gated): 19 double- and 38 single-stream
blocks of 24 heads × 128, joint (T5) width 4096, pooled (CLIP) 768, guidance embedding.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from editing import edit
from editing.methods.joint_fpe import (
    JointSelfAttentionReplace,
    MaterialisedJointSelfAttentionReplace,
)
from probe.attention.layers import resolve_layers
from probe.cli.main import main
from probe.families import family_of
from probe.models import generation_defaults, layer_table, load_pipeline
from probe.recording.recorder import record_attention
from tests.conftest import assert_same_edit, generate

FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
KINDS = ("self", "cross", "text_image", "text_text")
STEPS = 3


@pytest.fixture(scope="module")
def flux():
    return load_pipeline("tiny-flux")


def test_tiny_flux_has_flux_topology(flux):
    assert type(flux) is FluxPipeline and family_of(flux).name == "flux"
    transformer = flux.transformer
    assert (len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)) == (
        2,
        2,
    )
    assert transformer.config.guidance_embeds and transformer.config.in_channels == 64
    assert flux.scheduler.config.use_dynamic_shifting
    assert flux.tokenizer_2.tokenize("a dog standing in the park") == [
        "\u2581a", "\u2581dog", "\u2581standing", "\u2581in", "\u2581the", "\u2581park",
    ]  # fmt: skip
    assert generation_defaults(flux)["height"] == 128
    again = load_pipeline("tiny-flux").transformer.state_dict()
    assert all(torch.equal(again[k], v) for k, v in transformer.state_dict().items())


def test_flux_dev_layer_table_is_pinned(tmp_path):
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_DEV)
        layers = family_of(transformer).layers(transformer)
    assert len(layers) == 57
    assert layers[18].name == "transformer_blocks.18" and layers[18].place == "joint"
    assert layers[19].name == "single_transformer_blocks.0" and layers[56].place == "single"
    assert {(lay.heads, lay.channels, lay.resolution, lay.family) for lay in layers} == {
        (24, 3072, (64, 64), "flux")
    }  # 1024 px: 128x128 latents packed 2x2
    assert {lay.cross_dim for lay in layers[:19]} == {3072} and layers[19].cross_dim == 0
    assert resolve_layers(layers, "single") == list(range(19, 57))
    assert resolve_layers(layers, "fpe") == list(range(57))
    with pytest.raises(ValueError, match="no meaning on this FLUX transformer of 57"):
        resolve_layers(layers, "paper")
    assert resolve_layers(layers, "masactrl") == list(range(35, 57))  # 10 of 16, carried
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (tmp_path / "transformer").mkdir()
    config = {"_class_name": "FluxTransformer2DModel", **FLUX_DEV}
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config))
    assert [lay.resolution for lay in layer_table(tmp_path, 512, 512)][:1] == [(32, 32)]


def test_recording_both_block_kinds_leaves_the_image_unchanged(flux):
    prompts = ["a red car", "a dog standing in the park"]
    plain = generate(flux, prompts, steps=STEPS)
    with record_attention(flux, kinds=KINDS, heads="all", dtype=torch.float32) as maps:
        recorded = generate(flux, prompts, steps=STEPS)
    assert np.abs(plain - recorded).max() <= 1e-5
    n, t = 64, 512  # 8x8 packed image tokens; T5's 512 text tokens
    assert maps.recorded_layers() == [0, 1, 2, 3] and maps.steps == list(range(STEPS))
    for layer in range(4):  # double-stream 0-1, single-stream 2-3
        for step in range(STEPS):
            parts = {kind: maps[layer, step, kind] for kind in KINDS}
            assert parts["self"].shape == (2, 4, n, n) and parts["cross"].shape == (2, 4, n, t)
            assert parts["text_image"].shape == (2, 4, t, n)
            assert parts["text_text"].shape == (2, 4, t, t)
            image_rows = parts["self"].sum(-1) + parts["cross"].sum(-1)
            text_rows = parts["text_image"].sum(-1) + parts["text_text"].sum(-1)
            assert (image_rows - 1).abs().max() <= 1e-5
            assert (text_rows - 1).abs().max() <= 1e-5


def test_words_are_t5_columns(flux):
    with record_attention(flux, kinds=("cross",)) as maps:
        generate(flux, ["a red car", "a dog standing in the park"], steps=2)
    assert maps.tokens[0] == ["\u2581a", "\u2581red", "\u2581car", "</s>"]  # no start token
    assert maps.word_positions("car") == [2] and maps.word_positions("park", sample=1) == [5]
    by_hand = torch.stack(
        [maps.cross(layer, step)[..., 2].mean(0) for layer in range(4) for step in range(2)]
    ).mean(0)
    assert torch.allclose(maps.word_map("car"), by_hand, atol=1e-6)


def test_a_saved_flux_folder_loads_as_flux(flux, tmp_path):
    flux.save_pretrained(tmp_path / "flux")
    pipe = load_pipeline(tmp_path / "flux")
    assert type(pipe) is FluxPipeline and family_of(pipe).name == "flux"
    assert generation_defaults(pipe)["guidance_scale"] == 3.5
    assert pipe.tokenizer_2.tokenize("a red car") == flux.tokenizer_2.tokenize("a red car")


def test_flux_dataset_records_and_probes(two_colours, tmp_path, capsys):
    data = tmp_path / "ds"
    args = ["record", "--model", "tiny-flux", "--template", str(two_colours.path), "--seeds",
            "0-3", "--num-steps", "2", "--layers", "1,3", "--out", str(data)]  # fmt: skip
    assert main(args) == 0
    assert "8 samples recorded" in capsys.readouterr().out
    assert main(["probe", "--data", str(data), "--folds", "2"]) == 0
    assert "8 cells probed" in capsys.readouterr().out


def test_identity_edit_returns_the_source(flux):
    result = edit(flux, "a red car", ["a red car"], method="fpe", num_steps=STEPS, seed=1)
    assert result.settings["controllers"][0].startswith("JointSelfAttentionReplace")
    assert (result.latents[0] - result.latents[1]).abs().max() <= 1e-4


@pytest.mark.parametrize("text_mass", ["source", "target"])
def test_dit_fpe_fused_equals_materialised_on_both_block_kinds(flux, text_mass):
    def run(cls):
        c = cls("all", 1.0, text_mass=text_mass)
        return edit(flux, "a red car", ["a blue car"], controllers=[c], num_steps=STEPS, seed=1)

    fused, reference = run(JointSelfAttentionReplace), run(MaterialisedJointSelfAttentionReplace)
    assert_same_edit(flux, fused.latents, reference.latents)
    plain = edit(flux, "a red car", ["a blue car"], method="none", num_steps=STEPS, seed=1)
    assert torch.equal(fused.latents[0], plain.latents[0])
    assert (fused.latents[1] - plain.latents[1]).abs().max() > 1e-4  # the edit acts


def test_the_edit_loop_is_the_pipelines(flux):
    plain = edit(flux, "a red car", ["a blue car"], method="none", num_steps=STEPS, seed=1,
                 guidance_scale=3.5)  # fmt: skip
    noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    packed = flux._pack_latents(noise, 1, 16, 16, 16)
    ref = flux("a red car", num_inference_steps=STEPS, guidance_scale=3.5, latents=packed,
               output_type="latent").images  # fmt: skip
    ref = flux._unpack_latents(ref, 128, 128, flux.vae_scale_factor)
    assert (plain.latents[0] - ref[0]).abs().max() <= 1e-4


def true_cfg_flux(flux):
    """tiny-flux without a guidance embedding (as the toy Flux): guided by true CFG."""
    config = {**flux.transformer.config, "guidance_embeds": False}
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel.from_config(config)
    plain = FluxPipeline(**{**flux.components, "transformer": transformer})
    plain.set_progress_bar_config(disable=True)
    return plain


def test_a_flux_without_guidance_embedding_guides_with_unconditional_rows(flux):
    """FLUX.1-dev (guidance_embeds) takes guidance as a transformer input and refuses
    unconditional rows; a Flux without a guidance embedding (the toy Flux) gets true CFG: the
    empty prompt's rows first, and a guidance scale that changes the edit."""
    from editing.sampling import encode_prompts

    assert not family_of(flux).guides_with_rows(flux)
    with pytest.raises(ValueError, match="guidance-distilled"):
        encode_prompts(flux, ["a red car"], True)
    plain = true_cfg_flux(flux)
    family = family_of(plain)
    assert family.guides_with_rows(plain) and family.text_key_count(plain) == 512
    cond = encode_prompts(plain, ["a red car"], True)
    empty = encode_prompts(plain, [""], False)
    assert cond.embeddings.shape[0] == 2 and torch.equal(cond.embeddings[0], empty.embeddings[0])
    guided = edit(plain, "a red car", ["a red car"], method="fpe", num_steps=2, guidance_scale=4.0)
    # identity edit under true CFG: the target row follows the source (float rounding apart)
    torch.testing.assert_close(guided.latents[0], guided.latents[1], rtol=1e-5, atol=1e-5)
    unguided = edit(plain, "a red car", ["a red car"], method="fpe", num_steps=2, guidance_scale=1.0)
    assert not torch.allclose(guided.latents, unguided.latents)


def test_flux_pipeline_true_cfg_records_its_conditional_pass_only(flux):
    """FluxPipeline's true CFG calls the transformer twice per step (conditional, then
    unconditional): the recording keeps one step per iteration and the conditional rows. At
    step 0 both runs see the same latents, so the guided run's maps equal the unguided run's;
    recording the unconditional pass instead would change them."""
    plain = true_cfg_flux(flux)
    family = family_of(plain)
    prompts = ["a red car"]
    kwargs = family.pipe_kwargs(plain, prompts, 4.0)
    assert kwargs["true_cfg_scale"] == 4.0 and kwargs["negative_prompt"] == [""]
    assert "true_cfg_scale" not in family.pipe_kwargs(flux, prompts, 4.0)  # FLUX.1-dev-like
    calls: list[int] = []
    plain.transformer.register_forward_pre_hook(lambda *_: calls.append(1))

    def run(guidance: float, rows: str = "cond"):
        with record_attention(
            plain, layers=[0, 2], kinds=("self", "cross"), dtype=torch.float32, rows=rows,
            prompts=prompts,
        ) as maps:  # fmt: skip
            plain(
                prompts, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                output_type="latent", **family.pipe_kwargs(plain, prompts, guidance),
            )  # fmt: skip
        return maps

    guided = run(4.0)
    assert len(calls) == 2 * STEPS and guided.steps == list(range(STEPS))
    unguided = run(1.0)
    assert len(calls) == 3 * STEPS
    assert guided[0, 0, "cross"].shape[0] == 1
    torch.testing.assert_close(guided[0, 0, "cross"], unguided[0, 0, "cross"])
    torch.testing.assert_close(guided[2, 0, "self"], unguided[2, 0, "self"])
    assert not torch.allclose(guided[0, STEPS - 1, "cross"], unguided[0, STEPS - 1, "cross"])
    with pytest.raises(ValueError, match="rows='cond'"):
        run(4.0, rows="all")


def test_a_joint_editor_keeps_to_its_targets(flux):
    """The sweep edits several jobs in one batch, each editor on its own targets: carried to
    joint attention, an FPE editor of target 1 leaves target 0 as method 'none' samples it."""
    from editing.methods.replace import SelfAttentionReplace

    fpe = SelfAttentionReplace(layers="all")
    fpe.targets = frozenset({1})
    both = edit(flux, "a red car", ["a blue car", "a blue car"], controllers=[fpe], num_steps=STEPS)
    alone = edit(flux, "a red car", ["a blue car"], method="none", num_steps=STEPS)
    torch.testing.assert_close(both.latents[1], alone.latents[1], atol=1e-4, rtol=1e-4)
    assert (both.latents[2] - alone.latents[1]).abs().max() > 1e-3

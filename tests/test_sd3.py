"""SD3 through the same hooks (issue 15): loading, the layer table, recording the four parts of
the joint map, words, a dataset probed and selected, and DiT FPE, on ``tiny-sd3`` (units) and
SD3 medium's transformer config built on the meta device.

SD3 medium's ``transformer/config.json`` values are pinned below as read from several public
copies of it (the Hugging Face repository itself is gated): 24 joint blocks of 24 heads × 64,
caption projection 1536, pooled 2048, patch 2, sample size 128, pos_embed_max_size 192.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

from editing import edit
from editing.inversion import ddim_invert
from editing.methods.joint_fpe import (
    JointSelfAttentionReplace,
    MaterialisedJointSelfAttentionReplace,
)
from probe.attention.hooks import AttentionHooks
from probe.attention.layers import resolve_layers
from probe.cli.main import main
from probe.families import family_of
from probe.models import generation_defaults, layer_table, load_pipeline
from probe.recording.recorder import SelfReduce, plan_recording, record_attention
from tests.conftest import assert_same_edit, generate

SD3_MEDIUM = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "out_channels": 16,
    "pos_embed_max_size": 192,
}  # fmt: skip
KINDS = ("self", "cross", "text_image", "text_text")
STEPS = 3


@pytest.fixture(scope="module")
def sd3():
    return load_pipeline("tiny-sd3")


def sd3_medium_table(latent: int | None = None):
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**SD3_MEDIUM)
    return family_of(transformer).layers(transformer, latent, latent)


# --- models and layers -----------------------------------------------------------------------


def test_tiny_sd3_has_sd3_topology(sd3):
    assert type(sd3) is StableDiffusion3Pipeline and family_of(sd3).name == "sd3"
    assert sd3.text_encoder_3 is None and sd3.tokenizer_3 is None
    blocks = sd3.transformer.transformer_blocks
    assert [b.context_pre_only for b in blocks] == [False, False, True]
    assert type(sd3.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert sd3.scheduler.config.shift == 3.0
    assert generation_defaults(sd3)["height"] == 128
    again = load_pipeline("tiny-sd3").transformer.state_dict()
    assert all(torch.equal(again[k], v) for k, v in sd3.transformer.state_dict().items())


def test_sd3_medium_layer_table_is_pinned():
    layers = sd3_medium_table()
    assert [layer.name for layer in layers] == [f"transformer_blocks.{i}" for i in range(24)]
    assert {(lay.place, lay.heads, lay.channels, lay.cross_dim, lay.resolution, lay.family)
            for lay in layers} == {("joint", 24, 1536, 1536, (64, 64), "sd3")}  # fmt: skip
    assert [layer.resolution for layer in sd3_medium_table(64)][:1] == [(32, 32)]  # 512 px
    assert resolve_layers(layers, "fpe") == list(range(24))  # attnprobe's DiT reading
    assert resolve_layers(layers, "joint") == list(range(24))
    assert resolve_layers(layers, "res<=32") == []
    with pytest.raises(ValueError, match="no meaning on this SD3 transformer of 24"):
        resolve_layers(layers, "paper")
    assert resolve_layers(layers, "masactrl") == list(range(15, 24))  # 10 of 16, carried


def test_layer_table_of_an_sd3_folder_from_its_config(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusion3Pipeline"})
    )
    (tmp_path / "transformer").mkdir()
    config = {"_class_name": "SD3Transformer2DModel", **SD3_MEDIUM}
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config))
    table = layer_table(tmp_path)
    assert len(table) == 24 and table[23].resolution == (64, 64)
    assert layer_table(tmp_path, 512, 512)[0].resolution == (32, 32)


def test_a_saved_sd3_folder_loads_as_sd3(sd3, tmp_path):
    sd3.save_pretrained(tmp_path / "sd3")
    pipe = load_pipeline(tmp_path / "sd3")
    assert type(pipe) is StableDiffusion3Pipeline and pipe.text_encoder_3 is None
    assert generation_defaults(pipe) == {
        "num_inference_steps": 28, "guidance_scale": 7.0, "height": 128, "width": 128,
    }  # fmt: skip
    a, b = generate(sd3, steps=2), generate(pipe, steps=2)
    assert np.abs(a - b).max() <= 1e-5


# --- hooks and recording ---------------------------------------------------------------------


def test_recording_the_four_parts_leaves_the_image_unchanged(sd3):
    prompts = ["a red car", "a dog standing in the park"]
    plain = generate(sd3, prompts, steps=STEPS)
    with record_attention(sd3, kinds=KINDS, heads="all", dtype=torch.float32) as maps:
        recorded = generate(sd3, prompts, steps=STEPS)
    assert np.abs(plain - recorded).max() <= 1e-5
    n, t = 64, 77 + 256  # 8x8 image tokens; 77 CLIP + 256 (zero) T5 text tokens
    assert maps.recorded_layers() == [0, 1, 2] and maps.steps == list(range(STEPS))
    for layer in range(3):  # the last block (context_pre_only) too
        for step in range(STEPS):
            parts = {kind: maps[layer, step, kind] for kind in KINDS}
            assert parts["self"].shape == (2, 4, n, n) and parts["cross"].shape == (2, 4, n, t)
            assert parts["text_image"].shape == (2, 4, t, n)
            assert parts["text_text"].shape == (2, 4, t, t)
            image_rows = parts["self"].sum(-1) + parts["cross"].sum(-1)
            text_rows = parts["text_image"].sum(-1) + parts["text_text"].sum(-1)
            assert (image_rows - 1).abs().max() <= 1e-5
            assert (text_rows - 1).abs().max() <= 1e-5
            assert parts["cross"].sum(-1).min() > 0 and parts["self"].sum(-1).min() > 0


def test_words_are_clip_columns_of_the_joint_text(sd3):
    with record_attention(sd3, kinds=("cross",)) as maps:
        generate(sd3, ["a red car", "a dog standing in the park"], steps=2)
    assert maps.tokens[1][:3] == ["<|startoftext|>", "a</w>", "dog</w>"]
    assert maps.word_positions("car") == [3] and maps.word_positions("dog", sample=1) == [2]
    car = maps.word_map("car")
    by_hand = torch.stack(
        [maps.cross(layer, step)[..., 3].mean(0) for layer in range(3) for step in range(2)]
    ).mean(0)
    assert car.shape == (8, 8) and torch.allclose(car, by_hand, atol=1e-6)


def test_heat_maps_and_svd_of_image_to_image(sd3):
    from probe.viz import word_heatmaps
    from probe.viz.svd import self_attention_components

    with record_attention(sd3, kinds=("cross", "self"), self_reduce="svd:4") as maps:
        image = sd3("a red car", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
                    ).images[0]  # fmt: skip
    assert maps.data["self/L01/S001/u"].shape == (1, 1, 64, 4)
    assert len(word_heatmaps(maps, image, ["red", "car"]).axes) == 3
    fig = self_attention_components(maps, 1, 1, k=4, image=image)
    assert "layer 1 (8x8), step 1" in fig._suptitle.get_text()


def test_hooks_restore_the_joint_processors_after_an_exception(sd3):
    before = dict(sd3.transformer.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), AttentionHooks(sd3) as hooks:
        assert len(hooks.layers) == 3
        assert "HookedSD3AttnProcessor" in repr(sd3.transformer.attn_processors)
        raise RuntimeError("boom")
    after = sd3.transformer.attn_processors
    assert all(after[name] is proc for name, proc in before.items())


def test_text_kinds_are_refused_on_a_unet(tiny_pipe):
    with pytest.raises(ValueError, match="parts of a DiT's joint map"):
        with record_attention(tiny_pipe, kinds=("cross", "text_text")):
            generate(tiny_pipe, steps=1)


def test_memory_plan_of_sd3_medium_at_1024_px():
    """Per joint block and step, head mean, fp16, one row: image->image 4096x4096 = 32 MiB,
    image->text 4096x333, text->image 333x4096 (2.6 MiB each), text->text 333x333."""
    layers = sd3_medium_table()[:1]
    plan = plan_recording(layers, (128, 128), [0], 1, KINDS, "mean", SelfReduce("full"),
                          torch.float16, tokens=333)  # fmt: skip
    assert plan.self_bytes == 4096 * 4096 * 2 == 32 * 2**20
    assert plan.cross_bytes == 4096 * 333 * 2
    assert plan.text_bytes == (333 * 4096 + 333 * 333) * 2


# --- a dataset: record, probe, select --------------------------------------------------------


def test_sd3_dataset_records_probes_and_selects(two_colours, tmp_path, capsys):
    data = tmp_path / "ds"
    args = ["record", "--model", "tiny-sd3", "--template", str(two_colours.path), "--seeds",
            "0-3", "--num-steps", "2", "--layers", "0,2", "--out", str(data)]  # fmt: skip
    assert main(args) == 0
    assert "8 samples recorded" in capsys.readouterr().out
    index = [json.loads(line) for line in (data / "index.jsonl").read_text().splitlines()]
    assert len(index) == 8
    assert main(["probe", "--data", str(data), "--folds", "2"]) == 0
    assert "8 cells probed" in capsys.readouterr().out  # 2 layers x 2 steps x 2 kinds
    for name in ("results.csv", "heatmap_cross.png", "heatmap_self.png"):
        assert (data / "probe" / name).is_file()
    out = tmp_path / "l.json"
    code = main(["select", "--probe", str(data / "probe"), "--out", str(out),
                 "--threshold", "0.0", "--within", "all"])  # fmt: skip
    assert code == 0
    assert set(json.loads(out.read_text())["layers"]) <= {0, 2}


# --- editing ---------------------------------------------------------------------------------


def test_identity_edit_returns_the_source(sd3):
    result = edit(sd3, "a red car", ["a red car"], method="fpe", num_steps=STEPS, seed=1)
    assert result.settings["controllers"][0].startswith("JointSelfAttentionReplace")
    assert result.settings["scheduler"]["class"] == "FlowMatchEulerDiscreteScheduler"
    source, target = (np.asarray(im, dtype=np.float32) / 255 for im in
                      (result.source, result.targets[0]))  # fmt: skip
    assert (result.latents[0] - result.latents[1]).abs().max() <= 1e-4
    assert np.abs(source - target).max() <= 1 / 255  # uint8 images: at most one level


@pytest.mark.parametrize("text_mass", ["source", "target"])
def test_dit_fpe_fused_equals_materialised(sd3, text_mass):
    def run(cls):
        c = cls("all", 1.0, text_mass=text_mass)
        return edit(sd3, "a red car", ["a blue car"], controllers=[c], num_steps=STEPS, seed=1)

    fused, reference = run(JointSelfAttentionReplace), run(MaterialisedJointSelfAttentionReplace)
    assert_same_edit(sd3, fused.latents, reference.latents)
    plain = edit(sd3, "a red car", ["a blue car"], method="none", num_steps=STEPS, seed=1)
    assert torch.equal(fused.latents[0], plain.latents[0])  # the source row is never touched
    assert (fused.latents[1] - plain.latents[1]).abs().max() > 1e-3  # the edit acts


def test_the_edit_loop_is_the_pipelines(sd3):
    plain = edit(sd3, "a red car", ["a blue car"], method="none", num_steps=STEPS, seed=1)
    noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = sd3("a red car", num_inference_steps=STEPS, guidance_scale=7.5, latents=noise,
              output_type="latent")  # fmt: skip
    assert (plain.latents[0] - ref.images[0]).abs().max() <= 1e-4


def test_unet_only_methods_are_refused_on_sd3(sd3):
    with pytest.raises(NotImplementedError, match="not carried to joint attention"):
        edit(sd3, "a red car", ["a blue car"], method="cross", num_steps=1)
    with pytest.raises(NotImplementedError, match="invert the image with its own ODE"):
        ddim_invert(sd3, np.zeros((128, 128, 3), dtype=np.uint8))

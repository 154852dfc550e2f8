from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.families.unet import unet_layers
from probe.recording.maps import AttentionMaps
from probe.recording.recorder import DEFAULT_BUDGET, BudgetError, record_attention
from tests.conftest import generate


def test_recording_leaves_output_unchanged(tiny_pipe):
    base = generate(tiny_pipe, steps=10)
    with record_attention(tiny_pipe, self_reduce="full", dtype=torch.float32):
        recorded = generate(tiny_pipe, steps=10)
    assert np.abs(recorded - base).max() <= 1e-5


def test_every_layer_step_and_kind_within_default_budget(tiny_pipe):
    steps = 20
    with record_attention(tiny_pipe, budget_bytes=DEFAULT_BUDGET) as maps:
        generate(tiny_pipe, steps=steps)
    assert maps.recorded_layers("cross") == list(range(16))
    assert maps.recorded_layers("self") == list(range(16))
    assert maps.steps == list(range(steps))
    assert len(maps.data) == 16 * steps * 2
    assert maps.settings["self_reduce"] == "full"  # 'auto' keeps whole maps when they fit


def test_rows_sum_to_one_and_shapes_match_layer_info(tiny_pipe):
    with record_attention(tiny_pipe, self_reduce="full", dtype=torch.float32, heads="all") as maps:
        generate(tiny_pipe, steps=3, height=64, width=128)  # non-square catches transposes
    layers = unet_layers(tiny_pipe.unet, 8, 16)
    for layer in layers:
        h, w = layer.resolution
        cross = maps[layer.index, 2, "cross"]
        selfm = maps[layer.index, 2, "self"]
        assert cross.shape == (1, layer.heads, h * w, 77)
        assert selfm.shape == (1, layer.heads, h * w, h * w)
        assert torch.allclose(cross.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.allclose(selfm.sum(-1), torch.ones(()), atol=1e-5)
        assert maps.cross(layer.index, 2).shape == (layer.heads, h, w, 77)


def test_budget_fails_before_any_step(tiny_pipe):
    calls = []
    handle = tiny_pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(BudgetError, match="over budget_bytes.*self_reduce="):
            with record_attention(tiny_pipe, self_reduce="full", budget_bytes=10_000):
                generate(tiny_pipe, steps=5)
    finally:
        handle.remove()
    assert calls == []  # the UNet never ran
    assert all(
        type(p).__name__ != "HookedAttnProcessor" for p in tiny_pipe.unet.attn_processors.values()
    )


def test_auto_falls_back_to_svd_when_full_is_over_budget(tiny_pipe):
    with record_attention(tiny_pipe, layers=[0, 13], kinds=("self",), budget_bytes=50_000) as maps:
        generate(tiny_pipe, steps=5)
    assert maps.settings["self_reduce"] == "svd:8"
    u, s, v = maps.svd(0, 4)
    assert u.shape == (1, 1, 64, 8) and s.shape == (1, 1, 8) and v.shape == (1, 1, 64, 8)
    assert maps[0, 4, "self"].shape == (1, 1, 64, 64)


def test_svd_and_pool_approximate_the_full_map(tiny_pipe):
    kwargs = {"layers": [13], "kinds": ("self",), "dtype": torch.float32}
    with record_attention(tiny_pipe, self_reduce="full", **kwargs) as full:
        generate(tiny_pipe, steps=3)
    with record_attention(tiny_pipe, self_reduce="svd:64", **kwargs) as svd:
        generate(tiny_pipe, steps=3)
    with record_attention(tiny_pipe, self_reduce="pool:4", **kwargs) as pool:
        generate(tiny_pipe, steps=3)
    assert torch.allclose(svd[13, 2, "self"], full[13, 2, "self"], atol=1e-4)
    pooled = pool[13, 2, "self"]
    assert pooled.shape == (1, 1, 16, 16)
    assert torch.allclose(pooled.sum(-1), torch.ones(()), atol=1e-5)
    # the first cell's row is the mean of the 2x2 block of query rows, summed into key cells
    f = full[13, 2, "self"][0, 0].reshape(8, 8, 8, 8)
    expected = f[:2, :2].mean((0, 1)).reshape(4, 2, 4, 2).sum((1, 3)).flatten()
    assert torch.allclose(pooled[0, 0, 0], expected, atol=1e-5)


def test_selected_layers_steps_and_heads(tiny_pipe):
    with record_attention(
        tiny_pipe, layers="up_blocks.1", kinds=("cross",), steps="first:0.5", heads=[0, 2]
    ) as maps:
        generate(tiny_pipe, steps=6)
    assert maps.recorded_layers() == [7, 8, 9]
    assert maps.steps == [0, 1, 2]
    assert maps.kinds == ["cross"]
    assert maps[7, 0, "cross"].shape[1] == 2
    with pytest.raises(KeyError, match="layer 3 was not recorded"):
        maps[3, 0, "cross"]
    with pytest.raises(KeyError, match="step 4 was not recorded"):
        maps[7, 4, "cross"]


def test_unknown_step_and_kind_are_clear_errors(tiny_pipe):
    with pytest.raises(ValueError, match="step 9 does not exist: this run has steps 0-4"):
        with record_attention(tiny_pipe, steps=[9]):
            generate(tiny_pipe, steps=5)
    with pytest.raises(ValueError, match="kind 'value' is neither"):
        with record_attention(tiny_pipe, kinds=("value",)):
            pass
    with pytest.raises(ValueError, match="self_reduce 'svd'"):
        with record_attention(tiny_pipe, self_reduce="svd"):
            pass


def test_batches_images_per_prompt_and_negative_prompts(tiny_pipe):
    with record_attention(tiny_pipe, kinds=("cross",)) as maps:
        generate(
            tiny_pipe, ["a red car", "a blue dog"], num_images_per_prompt=2,
            negative_prompt=["blurry", "ugly"],
        )  # fmt: skip
    assert maps[0, 0, "cross"].shape[0] == 4
    assert [t[2] for t in maps.tokens] == ["red</w>", "red</w>", "blue</w>", "blue</w>"]
    assert maps.word_positions("dog", sample=3) == [3]
    assert [r["sample"] for r in maps.settings["row_roles"]] == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="word 'dog' is not in the prompt"):
        maps.word_map("dog", sample=0)


def test_guidance_one_has_no_unconditional_rows(tiny_pipe):
    with record_attention(tiny_pipe, kinds=("cross",), rows="all") as maps:
        generate(tiny_pipe, guidance_scale=1.0)
    assert maps[0, 0, "cross"].shape[0] == 1
    assert maps.settings["row_roles"] == [{"guidance": "cond", "sample": 0, "branch": "sample"}]
    with record_attention(tiny_pipe, kinds=("cross",), rows="all") as maps:
        generate(tiny_pipe, guidance_scale=5.0)
    assert [r["guidance"] for r in maps.settings["row_roles"]] == ["uncond", "cond"]


def test_word_lookup_multi_token_repeated_and_long_prompts(tiny_pipe):
    prompt = "a zebra and a red car and a red dog"  # 'zebra' is not in tiny's vocabulary
    with record_attention(tiny_pipe, kinds=("cross",)) as maps:
        generate(tiny_pipe, prompt)
    zebra = maps.word_positions("zebra")
    assert len(zebra) > 1 and zebra == list(range(2, 2 + len(zebra)))
    assert maps.word_map("zebra").shape == (8, 8)
    with pytest.raises(KeyError, match="appears 2 times"):
        maps.word_map("red")
    assert maps.word_positions("red", occurrence=1) > maps.word_positions("red", occurrence=0)
    assert maps.word_map("red", occurrence="all").shape == (8, 8)
    long_prompt = "a " * 80 + "red car"
    with pytest.warns(UserWarning, match="cut off at 77 tokens"):
        with record_attention(tiny_pipe, kinds=("cross",)) as maps:
            generate(tiny_pipe, long_prompt)
    assert len(maps.tokens[0]) == 77
    with pytest.raises(KeyError, match="not in the prompt.*cut off"):
        maps.word_map("car")


def test_word_map_peaks_where_the_token_attends(tiny_pipe):
    with record_attention(tiny_pipe, kinds=("cross",), dtype=torch.float32) as maps:
        generate(tiny_pipe, steps=3)
    pos = maps.word_positions("car")[0]
    m = maps.word_map("car", layers=[0], steps=[1])
    raw = maps.cross(0, 1)[0, :, :, pos]
    assert torch.allclose(m, raw, atol=1e-6)  # one layer, one step, native size: no resampling


def test_save_and_load_round_trip(tiny_pipe, tmp_path):
    with record_attention(tiny_pipe, self_reduce="svd:4") as maps:
        generate(tiny_pipe, steps=3)
    path = maps.save(tmp_path / "maps.safetensors")
    loaded = AttentionMaps.load(path)
    assert loaded.data.keys() == maps.data.keys()
    assert all(torch.equal(loaded.data[k], maps.data[k]) for k in maps.data)
    assert loaded.tokens == maps.tokens and loaded.layers == maps.layers
    assert loaded.timesteps == maps.timesteps and loaded.latent_hw == maps.latent_hw
    assert torch.equal(loaded.word_map("car"), maps.word_map("car"))
    (tmp_path / "other.safetensors").write_bytes(b"garbage")
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error type
        AttentionMaps.load(tmp_path / "other.safetensors")


def test_v_prediction_sd2_style_model(tiny_pipe):
    """SD 2.x: linear projections, upcast attention, per-block head counts, v-prediction."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **{**tiny_pipe.unet.config, "use_linear_projection": True, "upcast_attention": True,
           "attention_head_dim": [2, 4, 4, 4]},
    )  # fmt: skip
    sched = DDIMScheduler.from_config(tiny_pipe.scheduler.config, prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(**{**tiny_pipe.components, "unet": unet, "scheduler": sched})
    base = generate(pipe)
    with record_attention(pipe, self_reduce="full", dtype=torch.float32) as maps:
        out = generate(pipe)
    assert np.abs(out - base).max() <= 1e-5
    assert maps[0, 0, "self"].shape == (1, 1, 64, 64)
    assert [layer.heads for layer in maps.layers][:2] == [2, 2]


def test_svd_of_large_maps_matches_the_exact_top_components():
    """Above FULL_SVD_MAX positions svd_self is randomised: on a real 1024-position map (the toy
    at 32x32 latents) it must leave the exact rank-8 residual and the top singular values."""
    from probe.models import load_pipeline
    from probe.recording.reduce import FULL_SVD_MAX, svd_self

    toy_pipe = load_pipeline("toy")
    kw = {"layers": [0], "kinds": ("self",), "self_reduce": "full", "dtype": torch.float32}
    with record_attention(toy_pipe, steps=[1], **kw) as maps:
        size = 32 * toy_pipe.vae_scale_factor
        generate(toy_pipe, prompt="a red car", steps=2, height=size, width=size)
    x = maps[0, 1, "self"][0, 0]  # sample 0, head mean
    assert x.shape[-1] == 1024 > FULL_SVD_MAX
    u, s, v = svd_self(x, 8)
    exact = torch.linalg.svdvals(x)[:8]
    assert torch.allclose(s, exact, rtol=1e-4)
    _, full_s, _ = torch.linalg.svd(x)
    optimal = full_s[8:].square().sum().sqrt()
    residual = torch.linalg.norm(x - u @ torch.diag(s) @ v.T)
    assert residual <= optimal * 1.001


def test_record_command_takes_the_image_size(tmp_path, capsys):
    import json

    from probe.cli.main import main
    from probe.recording.maps import AttentionMaps as Maps

    one = ["record", "--model", "tiny", "--num-steps", "2", "--layers", "0"]
    assert main([*one, "--prompt", "a red car", "--height", "128", "--width", "96",
                 "--out", str(tmp_path / "one")]) == 0  # fmt: skip
    settings = json.loads((tmp_path / "one" / "settings.json").read_text())
    assert (settings["height"], settings["width"]) == (128, 96)
    maps = Maps.load(tmp_path / "one" / "maps.safetensors")
    assert maps.latent_hw == (16, 12)  # the tiny VAE's factor 8
    assert main([*one, "--template", "colour_car", "--seeds", "0", "--height", "96", "--width",
                 "128", "--out", str(tmp_path / "set")]) == 0  # fmt: skip
    entry = json.loads((tmp_path / "set" / "index.jsonl").read_text().splitlines()[0])
    assert entry["settings"]["latent_hw"] == [12, 16]
    with pytest.raises(SystemExit) as exited:  # argparse refuses it, as any bad flag
        main([*one, "--prompt", "a red car", "--height", "100", "--out", str(tmp_path)])
    assert exited.value.code == 2
    assert "100 pixels: give a positive multiple of 16, e.g. 96" in capsys.readouterr().err

from __future__ import annotations

import json

import pytest

from probe.attention.layer_info import format_layer_table
from probe.attention.layers import fpe_rule, resolve_layers
from probe.families.unet import fpe_max_positions, unet_layers
from probe.models.loading import TOY_DIR
from tests.conftest import empty_unet

SD15_NAMES = (
    [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)]
    + ["mid_block.attentions.0"]
    + [f"up_blocks.{b}.attentions.{a}" for b in range(1, 4) for a in range(3)]
)
SD15_RES_512 = [64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64]


@pytest.fixture(scope="module")
def sd15():
    return empty_unet("sd15")


@pytest.fixture(scope="module")
def sd21():
    return empty_unet("sd21")


def test_sd15_table_is_pinned(sd15):
    layers = unet_layers(sd15)
    assert [layer.name for layer in layers] == SD15_NAMES
    assert [layer.index for layer in layers] == list(range(16))
    assert [layer.resolution for layer in layers] == [(r, r) for r in SD15_RES_512]
    assert [layer.place for layer in layers] == ["down"] * 6 + ["mid"] + ["up"] * 9
    assert {layer.heads for layer in layers} == {8}
    assert [layer.channels for layer in layers] == [320] * 2 + [640] * 2 + [1280] * 6 + [
        640
    ] * 3 + [320] * 3
    assert {layer.cross_dim for layer in layers} == {768}


def test_sd21_table_is_pinned(sd21):
    layers = unet_layers(sd21)  # sample_size 96: 768 px
    assert [layer.name for layer in layers] == SD15_NAMES
    assert [layer.resolution[0] for layer in layers] == [r * 3 // 2 for r in SD15_RES_512]
    assert [layer.heads for layer in layers] == [
        5,
        5,
        10,
        10,
        20,
        20,
        20,
        20,
        20,
        20,
        10,
        10,
        10,
        5,
        5,
        5,
    ]
    assert {layer.cross_dim for layer in layers} == {1024}


def test_resolution_follows_latent_size(sd15):
    layers = unet_layers(sd15, 32, 48)  # 256x384 px
    assert layers[0].resolution == (32, 48)
    assert layers[6].resolution == (4, 6)
    assert layers[6].resolution_at(9, 9) == (2, 2)  # odd sizes round up like the stride-2 convs


def test_execution_order_is_not_processor_order(sd15):
    # diffusers lists processors down, up, mid; layer 6 must still be the mid block
    names = list(sd15.attn_processors)
    assert (
        names.index("mid_block.attentions.0.transformer_blocks.0.attn1.processor") == len(names) - 2
    )
    assert unet_layers(sd15)[6].name == "mid_block.attentions.0"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (5, [5]),
        ("4-14", list(range(4, 15))),
        ("2,5,7", [2, 5, 7]),
        ([1, "3-4"], [1, 3, 4]),
        ("up_blocks.1", [7, 8, 9]),
        ("up_blocks.3.attentions.2", [15]),
        ("mid", [6]),
        ("down", [0, 1, 2, 3, 4, 5]),
        ("res<=32", list(range(2, 13))),
        ("res<max", list(range(2, 13))),
        ("res==8", [6]),
        ("positions<=1024", list(range(2, 13))),
        ("positions <= 32x32", list(range(2, 13))),
        ("positions<256", [6]),
        ("positions>1024", [0, 1, 13, 14, 15]),
        ("fpe", list(range(2, 13))),
        ("paper", list(range(4, 15))),
        ("all", list(range(16))),
        (None, list(range(16))),
        ("none", []),
    ],
)
def test_resolve_layers(sd15, spec, expected):
    assert resolve_layers(sd15, spec) == expected


def test_fpe_preset_on_tiny_is_the_official_rule_carried_to_its_size(tiny_pipe):
    # tiny's native latent is 8x8 (64 px): the official 32x32-at-64x64 becomes 4x4 = 16
    # positions, which at its native size picks 2-12 as the official rule does on SD 1.5
    assert resolve_layers(tiny_pipe.unet, "fpe") == list(range(2, 13))
    assert fpe_rule(unet_layers(tiny_pipe.unet)) == "positions<=16"
    assert resolve_layers(unet_layers(tiny_pipe.unet, 16, 16), "fpe") == [4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [(512, list(range(2, 13))), (768, [4, 5, 6, 7, 8, 9]), (1024, [4, 5, 6, 7, 8, 9]),
     (256, list(range(0, 16)))],
)  # fmt: skip
def test_official_fpe_rule_on_the_sd15_replica(replica, pixels, expected):
    """The official code replaces where the query map has <= 32x32 positions, at any size:
    2-12 at 512 px, 4-9 at 768 px (its 64x64 and 48x48 maps are left alone)."""
    from probe.attention.hooks import AttentionHooks
    from probe.models import layer_table, load_pipeline, run_layer_table

    folder = replica("sd15")
    table = layer_table(folder, pixels, pixels)
    assert fpe_rule(table) == "positions<=1024"
    assert resolve_layers(table, "fpe") == expected
    assert resolve_layers(table, "positions<=1024") == expected
    pipe = load_pipeline(folder)
    assert resolve_layers(run_layer_table(pipe, pixels, pixels), "fpe") == expected
    hooks = AttentionHooks(pipe, latent_hw=(pixels // 8, pixels // 8))  # as the edit loop opens
    assert resolve_layers(hooks.layers, "fpe") == expected


def test_fpe_rule_on_the_toy_is_the_official_rule_carried_to_its_size():
    """The toy is SD 1.x scaled down: native 64 px with a factor-4 VAE, 16x16 latents (its
    UNet's sample_size). SD's <= 32x32 at native 64x64 latents carried to 16x16 is <= 8x8 = 64
    positions, absolute: 2-12 at 64 px, 4-9 at 128 px."""
    from probe.models import layer_table

    def config(name: str) -> dict:
        return json.loads((TOY_DIR / name).read_text())

    vae_scale = 2 ** (len(config("vae/config.json")["block_out_channels"]) - 1)
    native = config("attnprobe.json")["height"] // vae_scale
    assert (vae_scale, native, config("unet/config.json")["sample_size"]) == (4, 16, 16)
    assert fpe_max_positions((16, 16)) == 64
    assert fpe_rule(layer_table("toy")) == "positions<=64"
    assert resolve_layers(layer_table("toy"), "fpe") == list(range(2, 13))
    assert resolve_layers(layer_table("toy", 128, 128), "fpe") == [4, 5, 6, 7, 8, 9]


def test_fpe_preset_needs_a_table_that_knows_its_model():
    from probe.attention.layer_files import layers_from_json
    from probe.attention.layer_info import LayerInfo

    old = [{k: v for k, v in row.items() if k != "native_latent"}
           for row in [layer.to_json() for layer in unet_layers(empty_unet("sd15"))]]  # fmt: skip
    table = layers_from_json(old)  # written before native_latent was stored: still readable
    assert isinstance(table[0], LayerInfo) and table[0].native_latent is None
    assert resolve_layers(table, "res<max") == list(range(2, 13))
    with pytest.raises(ValueError, match="give the rule itself, 'positions<=1024'"):
        resolve_layers(table, "fpe")
    with pytest.raises(ValueError, match="unknown layer spec 'p2p'"):
        resolve_layers(table, "p2p")  # removed: P2P edits cross-attention in every layer


def test_resolve_from_selection_file(sd15, tmp_path):
    path = tmp_path / "layers.json"
    path.write_text(json.dumps({"layers": [3, 4, 9], "step_fraction": 0.8}))
    assert resolve_layers(sd15, str(path)) == [3, 4, 9]
    assert resolve_layers(sd15, path) == [3, 4, 9]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a layer selection file"):
        resolve_layers(sd15, tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (17, "layer 17 does not exist: this UNet has layers 0-15"),
        ("3-20", "layer 16 does not exist"),
        ("9-4", "is empty"),
        ("sideways", "unknown layer spec 'sideways'"),
        (-1, "layer -1 does not exist"),
    ],
)
def test_bad_layer_specs_name_the_value(sd15, spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_layers(sd15, spec)


def test_table_text(tiny_pipe):
    text = format_layer_table(unet_layers(tiny_pipe.unet))
    assert "mid_block.attentions.0" in text
    assert len(text.splitlines()) == 18


def test_an_edit_resolves_fpe_at_the_size_it_generates(tiny_pipe):
    from editing.editor import edit

    result = edit(tiny_pipe, "a red car", ["a blue car"], num_steps=1, height=128, width=128)
    assert result.settings["layers"] == "fpe"
    assert "SelfAttentionReplace(layers=[4, 5, 6, 7, 8, 9]" in result.settings["controllers"][0]
    assert result.targets[0].size == (128, 128)


def test_layers_command_prints_the_official_fpe_layers(replica, capsys):
    from probe.cli.main import main

    args = ["layers", "--model", str(replica("sd15")), "--spec", "fpe", "--height", "768"]
    assert main(args) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [int(row.split()[0]) for row in rows] == [4, 5, 6, 7, 8, 9]

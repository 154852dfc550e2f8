from __future__ import annotations

import json

import pytest

from probe.attention.layers import format_layer_table, resolve_layers, unet_layers
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
        ("fpe", list(range(2, 13))),
        ("paper", list(range(4, 15))),
        ("all", list(range(16))),
        (None, list(range(16))),
        ("none", []),
    ],
)
def test_resolve_layers(sd15, spec, expected):
    assert resolve_layers(sd15, spec) == expected


def test_fpe_preset_means_all_but_finest_on_any_size(tiny_pipe):
    # tiny's finest layers are 8x8, not 64x64: the rule still picks 2-12
    assert resolve_layers(tiny_pipe.unet, "fpe") == list(range(2, 13))


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

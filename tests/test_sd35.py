"""SD3.5 through the SD3 family: Large's and Medium's tables pinned from their transformer configs
on the meta device, and Medium's image-only ``attn2`` (kind ``image_only``) hooked, recorded and
left alone by DiT FPE, on a tiny SD3.5-Medium-shaped pipeline (``build_tiny_sd35_pipeline``).

The two configs below are ``transformer/config.json`` of ``stabilityai/stable-diffusion-3.5-medium``
and ``-large`` (gated repositories) as read from public copies of them: the ``frankjoshua/...``
mirrors on the Hugging Face hub (Large: the "SD3.5 Large Public Release" commit, with no
``dual_attention_layers`` key, so diffusers' default ``()``), a fine-tune whose config names
Medium's snapshot, and code that hard-codes them. Diffusers' ``scripts/convert_sd3_to_diffusers.py``
and Stability's reference ``sd3_impls.py`` agree where they derive them from a checkpoint: heads =
layers, ``pos_embed_max_size`` 384 for the 2.5B Medium and 192 for SD3 and the 8B Large, attn2 in
blocks 0-12 of Medium only, q/k RMS norms on SD3.5.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.normalization import RMSNorm

from editing import edit
from editing.methods.joint_fpe import JointSelfAttentionReplace
from probe.attention.controller import Controller
from probe.attention.hooks import AttentionHooks
from probe.attention.joint import JOINT_KINDS, HookedSD3AttnProcessor
from probe.attention.processor import HookedAttnProcessor
from probe.families import family_of
from probe.models import layer_table
from probe.models.tiny_dit import build_tiny_sd3_pipeline, build_tiny_sd35_pipeline
from probe.recording.recorder import BudgetError, SelfReduce, plan_recording, record_attention
from tests.conftest import generate
from tests.test_sd3 import SD3_MEDIUM

SD35_MEDIUM = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "out_channels": 16,
    "pos_embed_max_size": 384, "qk_norm": "rms_norm",
    "dual_attention_layers": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
}  # fmt: skip
SD35_LARGE = {  # no "dual_attention_layers" key in the released config
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38,
    "attention_head_dim": 64, "num_attention_heads": 38, "joint_attention_dim": 4096,
    "caption_projection_dim": 2432, "pooled_projection_dim": 2048, "out_channels": 16,
    "pos_embed_max_size": 192, "qk_norm": "rms_norm",
}  # fmt: skip
STEPS = 3
PROMPTS = ["a red car", "a dog standing in the park"]


@pytest.fixture(scope="module")
def sd35():
    return build_tiny_sd35_pipeline()


def meta_transformer(config: dict) -> SD3Transformer2DModel:
    with torch.device("meta"):
        return SD3Transformer2DModel(**config)


class ImageOnlySpy(Controller):
    """Keeps every image-only call and its probabilities."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def claims(self, layer, kind):
        return kind == "image_only"

    def needs_probs(self, call):
        return True

    def observe(self, call, probs):
        self.seen.append((call, probs))


# --- the real tables ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "blocks", "width", "dual"),
    [(SD35_MEDIUM, 24, 24 * 64, range(13)), (SD35_LARGE, 38, 38 * 64, range(0))],
    ids=["medium", "large"],
)
def test_sd35_tables_are_pinned_from_their_configs(config, blocks, width, dual):
    transformer = meta_transformer(config)
    family = family_of(transformer)
    layers = family.layers(transformer)
    assert family.name == "sd3" and len(layers) == blocks
    assert [layer.name for layer in layers] == [f"transformer_blocks.{i}" for i in range(blocks)]
    assert {(lay.place, lay.heads, lay.channels, lay.cross_dim, lay.resolution, lay.family)
            for lay in layers} == {("joint", blocks, width, width, (64, 64), "sd3")}  # fmt: skip
    assert family.layers(transformer, 64, 64)[0].resolution == (32, 32)  # 512 px
    modules = family.attention_modules(transformer)
    joint = {f"transformer_blocks.{i}.attn.processor": (i, JOINT_KINDS) for i in range(blocks)}
    image_only = {f"transformer_blocks.{i}.attn2.processor": (i, ("image_only",)) for i in dual}
    assert modules == joint | image_only
    assert set(modules) == set(transformer.attn_processors)  # every attention module is hooked
    assert list(modules)[:2] == ["transformer_blocks.0.attn.processor",
                                 "transformer_blocks.0.attn2.processor" if dual
                                 else "transformer_blocks.1.attn.processor"]  # fmt: skip
    assert all(isinstance(b.attn.norm_q, RMSNorm) for b in transformer.transformer_blocks)


def test_sd3_medium_hooks_only_its_joint_attention():
    transformer = meta_transformer(SD3_MEDIUM)
    modules = family_of(transformer).attention_modules(transformer)
    assert list(modules) == [f"transformer_blocks.{i}.attn.processor" for i in range(24)]
    assert {kinds for _, kinds in modules.values()} == {JOINT_KINDS}


def test_medium_attn2_is_plain_attention_with_qk_norms():
    """What HookedAttnProcessor reads of attn2 is what JointAttnProcessor2_0 does without text
    tokens: no residual, no rescale, no spatial/group/cross norms, scale 1/sqrt(64)."""
    transformer = meta_transformer(SD35_MEDIUM)
    for i, block in enumerate(transformer.transformer_blocks):
        assert (block.attn2 is not None) == (i < 13)
    attn2 = transformer.transformer_blocks[12].attn2
    assert type(attn2.processor) is JointAttnProcessor2_0
    assert (attn2.heads, attn2.to_q.in_features, attn2.to_out[0].out_features) == (24, 1536, 1536)
    assert not attn2.is_cross_attention and getattr(attn2, "add_k_proj", None) is None
    assert isinstance(attn2.norm_q, RMSNorm) and isinstance(attn2.norm_k, RMSNorm)
    assert attn2.spatial_norm is None and attn2.group_norm is None and attn2.norm_cross is None
    assert not attn2.residual_connection and attn2.rescale_output_factor == 1.0
    assert attn2.scale == 64**-0.5


def test_layer_table_of_an_sd35_medium_folder_from_its_config(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusion3Pipeline"})
    )
    (tmp_path / "transformer").mkdir()
    config = {"_class_name": "SD3Transformer2DModel", **SD35_MEDIUM}
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config))
    table = layer_table(tmp_path)
    assert len(table) == 24 and table[23].resolution == (64, 64)
    family = family_of(tmp_path)
    modules = family.attention_modules(family.empty_denoiser(tmp_path))
    assert sorted(i for i, kinds in modules.values() if kinds == ("image_only",)) == list(range(13))


def test_memory_plan_counts_image_only_like_self_in_its_blocks():
    """SD3.5 Medium at 1024 px, fp16 head mean, one row, one step: 4096x4096 = 32 MiB per map,
    24 blocks of self, 13 of image_only; svd:8 reduces both alike."""
    transformer = meta_transformer(SD35_MEDIUM)
    layers = family_of(transformer).layers(transformer)
    args = (layers, (128, 128), [0], 1, ("self", "image_only"), "mean")
    full = plan_recording(*args, SelfReduce("full"), torch.float16, 333, range(13))
    assert full.self_bytes == 24 * 32 * 2**20 and full.image_only_bytes == 13 * 32 * 2**20
    assert full.total_bytes == 37 * 32 * 2**20
    svd = plan_recording(*args, SelfReduce("svd", 8), torch.float16, 333, range(13))
    assert svd.image_only_bytes == 13 * (2 * 4096 * 8 + 8) * 2
    assert plan_recording(*args, SelfReduce("full"), torch.float16, 333).image_only_bytes == (
        24 * 32 * 2**20
    )  # without the blocks given: every layer


# --- the tiny SD3.5 pipeline ------------------------------------------------------------------


def test_tiny_sd35_has_sd35_medium_shape(sd35):
    blocks = sd35.transformer.transformer_blocks
    assert family_of(sd35).name == "sd3" and sd35.text_encoder_3 is None
    assert [b.attn2 is not None for b in blocks] == [True, True, False]
    assert [b.context_pre_only for b in blocks] == [False, False, True]
    assert all(isinstance(b.attn.norm_q, RMSNorm) for b in blocks)
    tiny_sd3 = build_tiny_sd3_pipeline()
    same = tiny_sd3.text_encoder.state_dict()
    assert all(torch.equal(same[k], v) for k, v in sd35.text_encoder.state_dict().items())
    again = build_tiny_sd35_pipeline().transformer.state_dict()
    assert all(torch.equal(again[k], v) for k, v in sd35.transformer.state_dict().items())


def test_hooks_install_on_attn2_and_restore_the_same_processors(sd35):
    before = dict(sd35.transformer.attn_processors)
    for fail in (False, True):
        with pytest.raises(RuntimeError, match="boom") if fail else contextlib.nullcontext():
            with AttentionHooks(sd35):
                hooked = sd35.transformer.attn_processors
                for i in (0, 1):
                    proc = hooked[f"transformer_blocks.{i}.attn2.processor"]
                    assert type(proc) is HookedAttnProcessor and proc.kind == "image_only"
                    assert proc.layer.index == i
                    assert proc.fallback is before[f"transformer_blocks.{i}.attn2.processor"]
                assert all(type(hooked[f"transformer_blocks.{i}.attn.processor"])
                           is HookedSD3AttnProcessor for i in range(3))  # fmt: skip
                if fail:
                    raise RuntimeError("boom")
        after = sd35.transformer.attn_processors
        assert after.keys() == before.keys()
        assert all(after[name] is proc for name, proc in before.items())


def test_hooked_attn2_equals_joint_attn_processor(sd35):
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(0))  # 8x8 image tokens
    spy = ImageOnlySpy()
    with torch.no_grad():
        for i in (0, 1):
            attn2 = sd35.transformer.transformer_blocks[i].attn2
            reference = JointAttnProcessor2_0()(attn2, x)
            with AttentionHooks(sd35, [spy]):
                hooked = attn2(hidden_states=x)  # attnprobe's own path: an observer is active
            assert torch.equal(hooked, reference)
    assert [(call.layer.index, call.kind, call.keys) for call, _ in spy.seen] == [
        (0, "image_only", 64), (1, "image_only", 64)
    ]  # fmt: skip
    probs = spy.seen[0][1]
    assert probs.shape == (2, 4, 64, 64) and (probs.sum(-1) - 1).abs().max() <= 1e-6


def test_recording_image_only_leaves_the_image_unchanged(sd35):
    plain = generate(sd35, PROMPTS, steps=STEPS)
    with record_attention(sd35, kinds=("self", "image_only"), heads="all",
                          dtype=torch.float32) as maps:  # fmt: skip
        recorded = generate(sd35, PROMPTS, steps=STEPS)
    assert np.array_equal(plain, recorded)
    assert maps.recorded_layers("image_only") == [0, 1]  # the dual blocks only
    assert maps.recorded_layers("self") == [0, 1, 2]
    for layer in (0, 1):
        for step in range(STEPS):
            image_only = maps[layer, step, "image_only"]
            assert image_only.shape == (2, 4, 64, 64)
            assert (image_only.sum(-1) - 1).abs().max() <= 1e-5  # its own softmax
            assert (image_only - maps[layer, step, "self"]).abs().max() > 1e-3
    with pytest.raises(KeyError, match=r"layer 2 was not recorded \(image_only\).*\[0, 1\]"):
        maps[2, 0, "image_only"]


def test_image_only_is_reduced_as_self(sd35):
    with record_attention(sd35, kinds=("self", "image_only"), self_reduce="svd:4") as maps:
        generate(sd35, steps=2)
    assert maps.data["image_only/L01/S001/u"].shape == (1, 1, 64, 4)
    u, s, v = maps.svd(1, 1, "image_only")
    assert (u.shape, s.shape, v.shape) == ((1, 1, 64, 4), (1, 1, 4), (1, 1, 64, 4))
    assert maps[1, 1, "image_only"].shape == (1, 1, 64, 64)
    with record_attention(sd35, kinds=("image_only",), self_reduce="pool:4") as maps:
        generate(sd35, steps=2)
    assert maps[0, 1, "image_only"].shape == (1, 1, 16, 16)


def test_the_budget_counts_image_only_in_the_dual_blocks_only(sd35):
    """Two dual blocks x 3 steps x 1 row x 64x64 fp16: exactly that fits, a byte less does not
    (a plan counting all three blocks would refuse both)."""
    need = 2 * STEPS * 64 * 64 * 2
    with record_attention(sd35, kinds=("image_only",), self_reduce="full", budget_bytes=need
                          ) as maps:  # fmt: skip
        generate(sd35, steps=STEPS)
    assert maps.nbytes == need
    with pytest.raises(BudgetError, match=r"image_only .* as 'full'"):
        with record_attention(sd35, kinds=("image_only",), self_reduce="full",
                              budget_bytes=need - 1):  # fmt: skip
            generate(sd35, steps=STEPS)


def test_image_only_where_no_layer_has_it_is_refused(sd35):
    with pytest.raises(ValueError, match=r"only layers \[0, 1\] have one"):
        with record_attention(sd35, layers="2", kinds=("image_only",)):
            generate(sd35, steps=1)
    tiny_sd3 = build_tiny_sd3_pipeline()
    with pytest.raises(ValueError, match="this model has none"):
        with record_attention(tiny_sd3, kinds=("self", "image_only")):
            generate(tiny_sd3, steps=1)
    with pytest.raises(ValueError, match="'images' is neither 'cross' nor 'self'"):
        with record_attention(sd35, kinds=("images",)):
            pass


# --- editing --------------------------------------------------------------------------------


def test_fpe_runs_on_sd35_and_leaves_attn2_alone(sd35):
    layers = family_of(sd35).layers(sd35.transformer)
    fpe = JointSelfAttentionReplace()
    fpe.bind(layers)
    assert all(fpe.claims(layer, "self") for layer in layers)
    assert not any(fpe.claims(layer, "image_only") for layer in layers)
    same = edit(sd35, "a red car", ["a red car"], method="fpe", num_steps=STEPS, seed=1)
    assert same.settings["controllers"][0].startswith("JointSelfAttentionReplace")
    assert (same.latents[0] - same.latents[1]).abs().max() <= 1e-4
    fpe_edit = edit(sd35, "a red car", ["a blue car"], method="fpe", num_steps=STEPS, seed=1)
    plain = edit(sd35, "a red car", ["a blue car"], method="none", num_steps=STEPS, seed=1)
    assert torch.equal(fpe_edit.latents[0], plain.latents[0])  # the source row is never touched
    assert (fpe_edit.latents[1] - plain.latents[1]).abs().max() > 1e-3  # the edit acts

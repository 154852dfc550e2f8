"""Block bypass (Stable Flow's "the block returns its input unchanged"): a block made the
identity changes nothing when bypassed; the model comes back exactly; what cannot be bypassed
is refused with the way out; the vital rule on hand numbers."""

from __future__ import annotations

import pytest
import torch

from probe.vital.bypass import block_modules, bypass_blocks, bypass_output, is_bypassed
from probe.vital.vitality import vital_layers


def _flux_call(transformer, seed=0):
    """One call of a Flux transformer on fixed random inputs: ``[1, tokens, channels]``."""
    cfg = transformer.config
    g = torch.Generator().manual_seed(seed)
    tokens, text = 16, 5
    ids = torch.zeros(tokens, 3)
    ids[:, 1], ids[:, 2] = torch.arange(tokens) // 4, torch.arange(tokens) % 4
    kwargs = {
        "hidden_states": torch.randn(1, tokens, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(1, text, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([0.5]), "img_ids": ids, "txt_ids": torch.zeros(text, 3),
        "return_dict": False,
    }  # fmt: skip
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.tensor([3.5])
    with torch.no_grad():
        return transformer(**kwargs)[0]


def _zero(*linears):
    with torch.no_grad():
        for linear in linears:
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()


@pytest.fixture(scope="module")
def flux():
    from probe.models import load_pipeline

    return load_pipeline("tiny-flux").transformer


def test_a_flux_block_made_the_identity_changes_nothing_when_bypassed(flux):
    """Zero the output projections of a double block (attention out, text attention out, both
    feed-forward outputs) and of a single block (its proj_out): each block then returns its
    input exactly, so the whole transformer's output with it bypassed is the same."""
    import copy

    model = copy.deepcopy(flux)
    double, single = model.transformer_blocks[0], model.single_transformer_blocks[0]
    _zero(double.attn.to_out[0], double.attn.to_add_out, double.ff.net[-1],
          double.ff_context.net[-1], single.proj_out)  # fmt: skip
    n_double = len(model.transformer_blocks)
    full = _flux_call(model)
    for layer in (0, n_double):  # the double block, the single block (attnprobe numbering)
        with bypass_blocks(model, [layer]):
            assert torch.equal(_flux_call(model), full), layer


def test_bypassing_a_real_block_changes_the_output_and_the_model_comes_back_exactly(flux):
    before = _flux_call(flux)
    blocks = block_modules(flux, [1, 3])
    with bypass_blocks(flux, [1, 3]) as bypassed:
        assert set(bypassed) == {1, 3} and all(is_bypassed(m) for m in bypassed.values())
        changed = _flux_call(flux)
    assert not torch.allclose(changed, before, atol=1e-4)
    for module in blocks.values():
        assert "forward" not in module.__dict__ and not is_bypassed(module)
    assert torch.equal(_flux_call(flux), before)


def test_the_bypass_is_undone_after_an_exception_and_refuses_to_nest(flux):
    block = block_modules(flux, [0])[0]
    with pytest.raises(RuntimeError, match="inside"):
        with bypass_blocks(flux, 0):
            with pytest.raises(ValueError, match="already bypassed"):
                with bypass_blocks(flux, [0]):
                    pass
            raise RuntimeError("inside")
    assert "forward" not in block.__dict__ and not is_bypassed(block)


def test_an_unknown_layer_or_block_class_is_refused_with_the_way_out(flux):
    n = len(flux.transformer_blocks) + len(flux.single_transformer_blocks)
    with pytest.raises(ValueError, match=rf"layers 0-{n - 1} \(see `attnprobe layers"):
        with bypass_blocks(flux, [n]):
            pass
    with pytest.raises(ValueError, match="cannot bypass a Linear: attnprobe bypasses Flux"):
        bypass_output(torch.nn.Linear(2, 2))


def test_a_unet_layer_bypass_is_the_whole_transformer_2d_model_and_returns_its_input():
    """On the SD topology a layer is a Transformer2DModel; with its proj_out zeroed it is the
    identity (output = 0 + residual), so the UNet's output is unchanged by bypassing it."""
    import copy

    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from probe.models import load_pipeline

    unet = copy.deepcopy(load_pipeline("tiny").unet)
    block = block_modules(unet, [0])[0]
    assert isinstance(block, Transformer2DModel)
    _zero(block.proj_out)
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    sample = torch.randn(1, unet.config.in_channels, size, size, generator=g)
    text = torch.randn(1, 7, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        full = unet(sample, 10, text).sample
        with bypass_blocks(unet, [0]):
            bypassed = unet(sample, 10, text).sample
            with bypass_blocks(unet, [1]):
                other = unet(sample, 10, text).sample
    assert torch.equal(bypassed, full)
    assert not torch.allclose(other, full, atol=1e-5)


def test_sd3_joint_blocks_bypass_both_streams_including_the_last():
    from probe.models import load_pipeline

    transformer = load_pipeline("tiny-sd3").transformer
    last = len(transformer.transformer_blocks) - 1
    block = block_modules(transformer, [last])[last]
    text, hidden = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    with bypass_blocks(transformer, [last]):
        out_text, out_hidden = block(hidden_states=hidden, encoder_hidden_states=text, temb=None)
    assert out_text is text and out_hidden is hidden


def test_the_vital_rule_on_hand_numbers():
    vitality = {0: 0.40, 1: 0.02, 2: 0.15, 3: 0.15, 4: 0.10}
    # threshold: strictly above 0.1 -> 0 (0.40), 2 and 3 (0.15); 4 (0.10) is not above
    assert vital_layers(vitality, threshold=0.1) == [0, 2, 3]
    # top-2: 0 (0.40), then 2 and 3 tie at 0.15: the lower index wins
    assert vital_layers(vitality, top_k=2) == [0, 2]
    with pytest.raises(ValueError, match="either a threshold or top_k"):
        vital_layers(vitality)
    with pytest.raises(ValueError, match="either a threshold or top_k"):
        vital_layers(vitality, threshold=0.1, top_k=2)
    with pytest.raises(ValueError, match="keeps no layer"):
        vital_layers(vitality, top_k=0)


@pytest.mark.slow
def test_attnprobe_vital_writes_vitality_per_block_and_reports_missing_weights(tmp_path):
    """``attnprobe vital`` on tiny-flux (2 steps, 1 prompt, 2 seeds, pixel score): vital.json
    has every layer's mean and spread, the rule's layers, and the DINOv2 model reported as
    missing (never a number); the bar figure is written."""
    import json

    from probe.cli.main import main

    out = tmp_path / "vital"
    args = ["vital", "--model", "tiny-flux", "--prompts", "1", "--seeds", "0-1", "--steps", "2",
            "--top-k", "2", "--out", str(out), "--no-progress", "--perceptual", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    data = json.loads((out / "vital.json").read_text())
    layers = [row for row in data["layers"] if row["layer"] is not None]
    assert data["score"] == "pixel" and len(layers) == len(data["layer_table"])
    assert all(row["vitality"] >= 0 and row["vitality_std"] >= 0 for row in layers)
    assert len(data["vital"]["layers"]) == 2 and data["vital"]["rule"] == "top-2"
    assert data["settings"]["perceptual"].startswith("missing")
    assert all(s["perceptual"] is None for s in data["samples"])
    assert (out / "vital.png").stat().st_size > 0


def test_the_perceptual_score_reads_a_local_dinov2_folder(tmp_path):
    """A tiny random DINOv2 saved to a folder: the same image is similarity 1, another less;
    a folder without a model is reported as missing, with how to save one."""
    import numpy as np
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from probe.vital.scores import PerceptualModel, load_perceptual

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                      ).save_pretrained(tmp_path / "dino")  # fmt: skip
    dino = PerceptualModel(tmp_path / "dino")
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    assert dino.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert dino.similarity(a, b) < 0.999
    model, note = load_perceptual(tmp_path / "empty")
    assert model is None and note.startswith("missing:") and "save_pretrained" in note

"""The toy Flux's training (``attnprobe toy train --arch flux``): the smoke path end to end, the
rectified-flow loss on a fixed batch, resuming, and the text the transformer trains on."""

from __future__ import annotations

import json

import pytest
import torch

from probe.toy.weight_folders import TOY_V2_DIR

pytestmark = pytest.mark.skipif(
    not (TOY_V2_DIR / "model_index.json").is_file(),
    reason="toy-v2 weights (the toy Flux's CLIP and VAE) not shipped in this checkout",
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from probe.cli.main import main

    out = tmp_path_factory.mktemp("toy_flux_train")
    args = ["toy", "train", "--arch", "flux", "--smoke", "--out", str(out), "--threads", "1"]
    assert main(args) == 0
    return out


def test_smoke_run_exports_a_flux_folder_that_loads_and_generates(smoke_run):
    from diffusers import FluxPipeline

    from probe.families import family_of
    from probe.models import generation_defaults, load_pipeline

    folder = smoke_run / "model"
    pipe = load_pipeline(str(folder))
    assert type(pipe) is FluxPipeline and family_of(pipe).name == "flux"
    flux = pipe.transformer
    assert (len(flux.transformer_blocks), len(flux.single_transformer_blocks)) == (4, 8)
    assert not flux.config.guidance_embeds  # true CFG, not distilled
    assert pipe.vae.config.shift_factor == 0.0 and pipe.tokenizer_2.model_max_length == 16
    saved = json.loads((folder / "attnprobe.json").read_text())
    assert saved["world"] == "v2" and saved["max_sequence_length"] == 16
    assert generation_defaults(pipe)["height"] == 64
    image = pipe(
        "a red dog", height=64, width=64, num_inference_steps=2, true_cfg_scale=4.0,
        negative_prompt="", max_sequence_length=16, output_type="np",
    ).images  # fmt: skip
    assert image.shape == (1, 64, 64, 3)
    lines = [json.loads(x) for x in (smoke_run / "work" / "loss.jsonl").read_text().splitlines()]
    assert {"t5", "transformer", "export"} <= {x["stage"] for x in lines}


def test_training_text_is_what_the_pipeline_encodes(smoke_run):
    from probe.models import load_pipeline
    from probe.toy.training.flux_stages import FluxText

    pipe = load_pipeline(str(smoke_run / "model"))
    text = FluxText(pipe.tokenizer, pipe.text_encoder, pipe.tokenizer_2, pipe.text_encoder_2)
    for prompt in ("a red dog standing in the park", ""):
        states, pooled = text.encode(prompt)
        ours, our_pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=16)
        assert torch.allclose(states, ours[0], atol=1e-5)
        assert torch.allclose(pooled, our_pooled[0], atol=1e-5)


def test_rectified_flow_loss_falls_on_a_fixed_batch():
    """Overfitting one batch: the loss must fall well below its start (velocity 0 at init)."""
    from probe.toy.training.flux_config import FluxTrainConfig, toy_flux_transformer
    from probe.toy.training.flux_stages import flow_loss

    torch.manual_seed(0)
    transformer = toy_flux_transformer(FluxTrainConfig())
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    t, states = torch.rand(4, generator=g), torch.randn(4, 16, 64, generator=g)
    pooled = torch.randn(4, 64, generator=g)
    opt = torch.optim.AdamW(transformer.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = flow_loss(transformer, x0, noise, t, states, pooled)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(((noise - x0) ** 2).mean().item(), rel=1e-5)
    assert min(losses[-5:]) < 0.5 * losses[0]


def test_interrupted_transformer_stage_resumes_its_step_count(tmp_path, monkeypatch):
    from probe.toy.training import flux_stages
    from probe.toy.training.flux_train import FluxTrainConfig, train_flux

    cfg = FluxTrainConfig.smoke(tmp_path, max_transformer_steps=4, max_text_steps=1, threads=1)
    calls = {"n": 0}
    real_step = flux_stages._FluxTrainer.train_step

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(flux_stages._FluxTrainer, "train_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_flux(cfg)
    state = torch.load(tmp_path / "work" / "transformer.pt", weights_only=False)
    assert state["step"] == 2 and not state["done"]
    train_flux(cfg)
    state = torch.load(tmp_path / "work" / "transformer.pt", weights_only=False)
    assert state["step"] == 4 and state["done"]
    assert torch.load(tmp_path / "work" / "t5.pt", weights_only=False)["step"] == 1


def test_flux_arch_refuses_the_unet_toys_stage_options(tmp_path):
    from probe.cli.main import main

    with pytest.raises(SystemExit, match="--vae-minutes: --arch flux has no such stage"):
        main(["toy", "train", "--arch", "flux", "--out", str(tmp_path), "--vae-minutes", "3"])
    with pytest.raises(SystemExit, match="only with --arch flux"):
        main(["toy", "train", "--out", str(tmp_path), "--transformer-minutes", "3"])

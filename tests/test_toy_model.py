"""The toy model: the training script's smoke path end to end, and the shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probe.models import TOY_DIR

needs_toy = pytest.mark.skipif(
    not (TOY_DIR / "model_index.json").is_file(), reason="toy weights not shipped in this checkout"
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from probe.cli.main import main

    out = tmp_path_factory.mktemp("toy_train")
    assert main(["toy", "train", "--smoke", "--out", str(out), "--threads", "1"]) == 0
    return out


def test_smoke_training_exports_a_loadable_pipeline(smoke_run):
    from diffusers import StableDiffusionPipeline

    from probe.models import load_pipeline

    folder = smoke_run / "model"
    pipe = load_pipeline(str(folder))
    assert pipe.unet.config.sample_size == 16  # 64 px through a factor-4 VAE
    assert len(pipe.unet.attn_processors) == 32  # 16 transformer blocks, self + cross
    scaling = pipe.vae.config.scaling_factor
    assert scaling != pytest.approx(0.18215)  # measured from the trained VAE, not SD's
    assert json.loads((folder / "attnprobe.json").read_text())["height"] == 64
    image = pipe("a red car", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    assert StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)


def test_smoke_training_logs_every_stage_and_resumes_as_done(smoke_run):
    from probe.toy.training.train import TrainConfig, train

    lines = [json.loads(x) for x in (smoke_run / "work" / "loss.jsonl").read_text().splitlines()]
    assert {x["stage"] for x in lines} >= {"export"}
    for name in ("vae.pt", "unet.pt", "latents.safetensors"):
        assert (smoke_run / "work" / name).is_file()
    state = torch.load(smoke_run / "work" / "unet.pt", weights_only=False)
    assert state["done"] and state["step"] == 3
    # a rerun finds every stage done and only re-exports
    train(TrainConfig.smoke(smoke_run))
    assert torch.load(smoke_run / "work" / "unet.pt", weights_only=False)["step"] == 3


def test_model_card_from_the_exported_model_or_from_facts(smoke_run, tmp_path):
    from PIL import Image

    from probe.toy.evaluation.model_card import main

    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "evaluation.md").write_text("| template | images |\n|---|---:|\n| all | 2 |\n")
    Image.new("RGB", (8, 8)).save(evaluation / "grid.png")
    # the exported model keeps its training record, so the card needs nothing else
    assert (smoke_run / "model" / "training" / "loss.jsonl").is_file()
    docs = tmp_path / "docs"
    assert (
        main(["--run", str(smoke_run / "model"), "--eval", str(evaluation), "--out", str(docs)])
        == 0
    )
    card = (docs / "toy_model_card.md").read_text()
    assert "images/toy_loss.png" in card and (docs / "images" / "toy_loss.png").is_file()
    assert "| batch | 4 |" in card and "| all | 2 |" in card
    # no log: the facts fill the table and the card says the curve is missing
    final = {"vae_minutes": 20.0, "vae_steps": 3575, "psnr": 27.3, "unet_minutes": 70.0}
    final |= {"unet_steps": 5050, "loss": 0.0269, "scaling": 0.966}
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"settings": {"batch": 48}, "final": final}))
    docs2 = tmp_path / "docs2"
    assert main(["--eval", str(evaluation), "--out", str(docs2), "--facts", str(facts)]) == 0
    card = (docs2 / "toy_model_card.md").read_text()
    assert "No loss curve" in card and "toy_loss.png" not in card
    assert "5050" in card and "0.0269" in card and "| batch | 48 |" in card


def test_interrupted_unet_stage_resumes_where_it_stopped(tmp_path, monkeypatch):
    from probe.toy.training import train as train_mod

    cfg = train_mod.TrainConfig.smoke(tmp_path)
    cfg.max_unet_steps = 4
    calls = {"n": 0}
    real_step = train_mod._UNetTrainer.train_step

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(train_mod._UNetTrainer, "train_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg)
    state = torch.load(tmp_path / "work" / "unet.pt", weights_only=False)
    assert state["step"] == 2 and not state["done"]
    train_mod.train(cfg)
    state = torch.load(tmp_path / "work" / "unet.pt", weights_only=False)
    assert state["step"] == 4 and state["done"]


@needs_toy
def test_toy_is_the_default_model():
    from probe.cli.args import default_model

    assert default_model() == "toy"


@needs_toy
@pytest.mark.slow
def test_shipped_toy_draws_the_colour_it_is_asked_for():
    """20 prompts, one seed: the judged colour matches the prompt in at least 80%."""
    from probe.models import generation_defaults, load_pipeline
    from probe.prompts.templates import load_template
    from probe.toy.evaluation.evaluate import expected_labels, generate
    from probe.toy.judges.judge import judge_colour

    pipe = load_pipeline("toy")
    prompts = [i.prompt for i in load_template("colour_car")]
    prompts += [i.prompt for i in load_template("colour_animal")][::10]
    assert len(prompts) == 20
    d = generation_defaults(pipe)
    images = generate(pipe, prompts, [2024] * 20, d["guidance_scale"], d["num_inference_steps"], 64)
    right = [
        judge_colour(img) == expected_labels(p)[0] for p, img in zip(prompts, images, strict=True)
    ]
    assert np.mean(right) >= 0.8, list(zip(prompts, right, strict=True))


# --- toy v2: built as Stable Diffusion was ------------------------------------------------------


def test_smoke_training_trains_every_stage_of_v2_and_freezes_the_text_encoder(smoke_run):
    from transformers import CLIPTextModel

    from probe.models import load_pipeline
    from probe.toy.world.world import world_of

    lines = [json.loads(x) for x in (smoke_run / "work" / "loss.jsonl").read_text().splitlines()]
    assert {"judge", "text", "vae", "export"} <= {x["stage"] for x in lines}
    text = [x for x in lines if x["stage"] == "text"][-1]
    assert text["step"] == 3 and {"loss", "logit_scale", "retrieval", "zero_shot_colour"} <= set(text)
    folder = smoke_run / "model"
    pipe = load_pipeline(str(folder))
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert json.loads((folder / "attnprobe.json").read_text())["world"] == "v2"
    assert "white" in pipe.tokenizer.get_vocab() or "white</w>" in pipe.tokenizer.get_vocab()
    world = world_of(pipe)
    assert world.name == "v2" and world.judge_dir == folder / "judge"
    assert json.loads((folder / "judge" / "category.json").read_text())["world"] == "v2"
    # the UNet stage trained on the frozen encoder: the exported one is the contrastive stage's
    contrastive = torch.load(smoke_run / "work" / "text.pt", weights_only=False)["model"]
    exported = pipe.text_encoder.state_dict()
    for name, value in exported.items():
        assert torch.equal(value, contrastive[f"text.{name}"]), name
    unet_state = torch.load(smoke_run / "work" / "unet.pt", weights_only=False)
    assert not any("text" in k for k in unet_state["models"])  # not in the optimised models
    image = pipe("a white car", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


def test_model_card_draws_a_curve_for_every_stage(smoke_run):
    from probe.toy.evaluation.model_card import _training_record, loss_curves

    _, lines = _training_record(smoke_run / "model")
    fig = loss_curves(lines)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["Text encoder (contrastive, then frozen)", "VAE", "UNet"]
    v1_like = [x for x in lines if x["stage"] != "text"]
    assert [ax.get_title() for ax in loss_curves(v1_like).axes] == ["VAE", "UNet + text encoder"]


def test_contrastive_loss_is_clips_when_every_caption_is_its_own():
    import torch.nn.functional as F

    from probe.toy.training.train_text import contrastive_loss

    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) * 3
    clip = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    assert torch.allclose(contrastive_loss(logits, torch.eye(6, dtype=torch.bool)), clip)
    # two images sharing one caption: each of them may pick either copy of the caption
    fits = torch.eye(6, dtype=torch.bool)
    fits[0, 1] = fits[1, 0] = True
    same = torch.zeros(6, 6)
    same[0, 1] = same[1, 0] = 5.0  # each image picks the other copy of its caption
    assert contrastive_loss(same, fits) < contrastive_loss(same, torch.eye(6, dtype=torch.bool))


def test_interrupted_text_stage_resumes_where_it_stopped(tmp_path, monkeypatch):
    from probe.toy.training import train_text

    cfg = train_text.TrainConfig.smoke(tmp_path, max_text_steps=4)
    tok_dir = tmp_path / "tok"
    from probe.models.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer
    from probe.toy.training.train import toy_words

    tokenizer = load_clip_tokenizer(write_clip_tokenizer(toy_words("v2"), tok_dir, closed=True))
    calls = {"n": 0}
    real_step = train_text._TextTrainer.train_step

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(train_text._TextTrainer, "train_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_text.train_text(cfg, tmp_path, tokenizer)
    state = torch.load(tmp_path / "text.pt", weights_only=False)
    assert state["step"] == 2 and not state["done"]
    encoder = train_text.train_text(cfg, tmp_path, tokenizer)
    state = torch.load(tmp_path / "text.pt", weights_only=False)
    assert state["step"] == 4 and state["done"]
    assert not any(p.requires_grad for p in encoder.parameters())


def test_positions_per_layer_at_16_and_32_latents():
    from probe.toy.training.sizes import positions_per_layer

    small = positions_per_layer(16)
    assert small == [256, 256, 64, 64, 16, 16, 4, 16, 16, 16, 64, 64, 64, 256, 256, 256]
    assert positions_per_layer(32) == [4 * n for n in small]


def test_train_config_refuses_sizes_the_unet_cannot_halve():
    from probe.toy.training.train import TrainConfig

    assert TrainConfig(image_size=128).latent_size == 32
    assert TrainConfig(image_size=256, vae_factor=8).latent_size == 32
    with pytest.raises(ValueError, match="image_size 72: use a multiple of 32"):
        TrainConfig(image_size=72)
    with pytest.raises(ValueError, match="vae_factor 2"):
        TrainConfig(vae_factor=2)

"""The toy Flux's model card (``probe.toy.evaluation.flux_card``), built from a small run made
with the real export and record code: a toy-Flux transformer of 1 + 2 blocks on ``tiny-flux``'s
text encoders and a factor-4 VAE, a written loss log and an ``evaluate``-format folder. The card
must report that run's numbers (not toy-flux's defaults) beside FLUX.1-dev's."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory):
    """A run folder (``train_config.json``, ``work/loss.jsonl``, ``model/``) and the transformer."""
    from diffusers import AutoencoderKL

    from probe.models.tiny_dit import build_tiny_flux_pipeline
    from probe.toy.training.flux_config import FluxTrainConfig, toy_flux_transformer
    from probe.toy.training.flux_stages import FluxText
    from probe.toy.training.flux_train import export_flux
    from probe.toy.training.train import keep_record, save_settings
    from probe.toy.training.train_common import log_line

    out = tmp_path_factory.mktemp("flux_card_run")
    cfg = FluxTrainConfig.smoke(
        out, double_blocks=1, single_blocks=2, heads=2, head_dim=8, rope_axes=(2, 2, 4),
        text_dim=32,
    )  # fmt: skip
    work = save_settings(cfg, out)
    log_line(work, "t5", 25, 30.0, loss=2.5, logit_scale=14.0, retrieval=0.5, lr=1e-3)
    log_line(work, "t5", 50, 90.0, loss=1.25, logit_scale=15.0, retrieval=0.75, lr=1e-3,
             zero_shot_colour=0.875, zero_shot_category=0.625)  # fmt: skip
    for step, loss in ((50, 2.0), (100, 1.0), (150, 0.5)):
        log_line(work, "transformer", step, step * 1.2, loss=loss, lr=5e-4)
    tiny = build_tiny_flux_pipeline()
    text = FluxText(tiny.tokenizer, tiny.text_encoder, tiny.tokenizer_2, tiny.text_encoder_2)
    torch.manual_seed(0)
    transformer = toy_flux_transformer(cfg, pooled_dim=tiny.text_encoder.config.hidden_size)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), latent_channels=4, norm_num_groups=8, layers_per_block=1,
    )  # fmt: skip
    folder = export_flux(cfg, out, text, vae, transformer, scaling=0.75)
    log_line(work, "export", 0, 200.0, scaling_factor=0.75)
    keep_record(out, folder)
    return out, transformer


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """An ``attnprobe toy evaluate`` folder of two judged images."""
    from probe.toy.evaluation.evaluate import EvalReport, EvalRow, write_evaluation

    rows = [
        EvalRow("colour_car", "a red car", 1000, "red", "car", True, "red", "car"),
        EvalRow("colour_car", "a blue car", 1000, "blue", "car", True, "red", "car"),
    ]
    settings = {"world": "v2", "templates": ["colour_car"], "seeds": [1000],
                "guidance_scale": 4.0, "num_inference_steps": 20}  # fmt: skip
    rng = np.random.default_rng(0)
    images = {(r.prompt, r.seed): rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for r in rows}
    folder = tmp_path_factory.mktemp("flux_card_eval")
    report = EvalReport(rows, settings)
    write_evaluation(report, images, folder)
    return folder, report


def test_flux_card_reports_the_runs_numbers_beside_flux1(flux_run, evaluation, tmp_path):
    from probe.toy.evaluation.flux_card import main

    run, transformer = flux_run
    eval_folder, report = evaluation
    assert (
        main(["--model", str(run), "--evaluation", str(eval_folder), "--out", str(tmp_path)]) == 0
    )
    card = (tmp_path / "toy_flux_card.md").read_text()
    assert (tmp_path / "images" / "loss_curves.png").stat().st_size > 0
    assert (tmp_path / "images" / "grid.png").read_bytes() == (
        eval_folder / "grid.png"
    ).read_bytes()
    n = sum(p.numel() for p in transformer.parameters())
    assert f"| transformer | FluxTransformer2DModel | {n:,} |" in card
    # what it is, read from the folder's configs
    assert "| double + single-stream blocks | 19 + 38 | 1 + 2 |" in card
    assert "| width | 3072 = 24 heads × 128 | 16 = 2 heads × 8 |" in card
    assert "| RoPE axes (id, row, col) | 16/56/56 | 2/2/4 |" in card
    assert "| transformer parameters | 11.9 B |" in card
    assert "| resolution | 1024 px → 4096 tokens | 64 px → 64 tokens |" in card
    assert "4 channels, factor 4, scaling 0.750 (measured), shift 0.0" in card
    assert "`guidance_embeds` False" in card and "two transformer calls per step" in card
    assert "mu 1.15 at 4096 tokens" in card and "16 colours, 10 animals and the car" in card
    # how it was trained: the log's last lines and the settings
    assert "| 1.5 min | 50 | loss 1.250, in-batch retrieval 75.0%; zero-shot colour 87.5%" in card
    assert "| 3.0 min | 150 | velocity MSE 0.5000 |" in card
    assert 'captions dropped to "" with probability 0.1' in card and "batch 4," in card
    # evaluation and use
    assert report.table() in card and "2 images: 2 prompt(s) × 1 held-out seed(s)" in card
    assert 'load_pipeline("toy-flux")' in card
    assert "true_cfg_scale=4.0" in card and "max_sequence_length=16" in card


def test_flux_loss_curves_draw_the_t5_and_transformer_stages(flux_run):
    from probe.toy.evaluation.flux_card import flux_loss_curves
    from probe.toy.evaluation.model_card import _training_record

    _, lines = _training_record(flux_run[0] / "model")
    fig = flux_loss_curves(lines)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["T5 text encoder (contrastive, then frozen)", "Transformer (rectified flow)"]
    assert fig.axes[1].get_xscale() == "log"
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts]
    assert "in-batch retrieval (training)" in legend
    with pytest.raises(ValueError, match=r"stages \['export'\]"):
        flux_loss_curves([x for x in lines if x["stage"] == "export"])

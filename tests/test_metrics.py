"""Edit metrics: the toy-world scores on renders used as fake edits, image metrics, and the
CLIP / DINO metrics on tiny models built from configs in temporary folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from editing.scoring.images import mean_abs_diff, psnr, ssim, to_array
from editing.scoring.toy_metrics import EditScore, judge_kind, score_edit, summarise
from probe.models import TOY_DIR
from probe.prompts.templates import load_edit_pairs
from probe.toy.world.world import Scene, render_scene


def category_judge_ready() -> bool:
    from probe.toy.judges import judge

    return (judge.WEIGHTS_DIR / "category.safetensors").is_file()


def test_identical_images_score_perfectly():
    image = render_scene(Scene("car", "red")).image
    score = score_edit(image, image, slot="colour", target="red")
    assert score.success and score.source_found and score.edit_found
    assert score.iou == 1.0 and score.shape_distance == 0.0
    assert score.background_psnr == 100.0 and score.background_diff == 0.0


def test_colour_edit_with_the_same_shape_succeeds_and_keeps_structure():
    pair = next(p for p in load_edit_pairs("colour_edits") if (p.source_word, p.target_word) == ("red", "blue"))  # fmt: skip
    red, blue = (render_scene(Scene("car", c, x=0.45)).image for c in ("red", "blue"))
    score = score_edit(red, blue, pair)
    assert (score.slot, score.target, score.judged, score.success) == (
        "colour",
        "blue",
        "blue",
        True,
    )
    assert score.iou > 0.95 and score.shape_distance < 0.05
    assert score.background_psnr > 40


def test_scores_judge_in_the_world_of_the_model(tmp_path):
    import pickle

    from editing.sweep.run import toy_scorer
    from probe.toy.world.world import get_world

    grey, white = (render_scene(Scene("car", c, "street", x=0.45, world="v2")).image
                   for c in ("grey", "white"))  # fmt: skip
    v2 = score_edit(grey, white, slot="colour", target="white", source_label="grey", world="v2")
    assert (v2.judged, v2.success) == ("white", True) and v2.iou > 0.95
    assert abs(v2.source_shift) < 0.05  # 0: at the target colour (grey would raise in v1)
    v1 = score_edit(grey, white, slot="colour", target="white", world="v1")
    assert not v1.success and v1.judged in get_world("v1").palette  # v1 has no white
    assert judge_kind("", "teal", "v2") == "colour"
    with pytest.raises(ValueError, match="cannot judge slot '' \\(target 'teal'\\)"):
        judge_kind("", "teal")
    folder = tmp_path / "toy_v2"  # a trained folder says its world in attnprobe.json
    folder.mkdir()
    (folder / "attnprobe.json").write_text(json.dumps({"world": "v2"}))
    scorer = pickle.loads(pickle.dumps(toy_scorer(type("Pipe", (), {"name_or_path": str(folder)}))))
    assert scorer.keywords["world"].name == "v2"
    assert scorer.keywords["world"].judge_dir == get_world("v2").judge_dir
    assert scorer(grey, white, None, slot="colour", target="white").success


def test_source_shift_places_the_edit_between_the_two_palette_colours():
    from probe.toy.judges.judge import colour_shift

    red, blue = (render_scene(Scene("car", c, x=0.45)).image for c in ("red", "blue"))
    assert abs(colour_shift(blue, "red", "blue")) < 0.02
    assert abs(colour_shift(red, "red", "blue") - 1.0) < 0.02
    halfway = (red.astype(np.float64) + blue) / 2  # a car painted half way from blue to red
    mixed = halfway.round().astype(np.uint8)
    assert abs(colour_shift(mixed, "red", "blue") - 0.5) < 0.03
    assert (
        score_edit(red, blue, slot="colour", target="blue", source_label="red").source_shift < 0.02
    )
    score = score_edit(red, mixed, slot="colour", target="blue", source_label="red")
    assert 0.45 < score.source_shift < 0.55
    with pytest.raises(ValueError, match="'teal' is not a toy-world colour"):
        colour_shift(blue, "teal", "blue")
    with pytest.raises(ValueError, match="both 'blue'"):
        colour_shift(blue, "blue", "blue")


def test_source_shift_is_nan_without_a_colour_source():
    red, blue = (render_scene(Scene("car", c, x=0.45)).image for c in ("red", "blue"))
    assert math.isnan(score_edit(red, blue, slot="colour", target="blue").source_shift)
    summary = summarise([score_edit(red, blue, slot="colour", target="blue")])
    assert math.isnan(summary["source_shift"])


def test_wrong_colour_and_moved_object_score_low():
    source = render_scene(Scene("car", "red", x=0.35, scale=0.5)).image
    moved = render_scene(Scene("car", "red", x=0.68, scale=0.6)).image
    score = score_edit(source, moved, slot="colour", target="green")
    assert not score.success and score.judged == "red"
    assert score.iou < 0.5
    assert score.shape_distance < 0.15  # the same car, only moved and scaled
    assert score.background_psnr == 100.0  # outside both objects nothing changed
    street = render_scene(Scene("car", "red", "street", x=0.35, scale=0.5)).image
    assert score_edit(source, street, slot="colour", target="red").background_psnr < 20


@pytest.mark.skipif(not category_judge_ready(), reason="category judge weights not trained yet")
def test_other_category_scores_low_structure():
    car = render_scene(Scene("car", "red")).image
    giraffe = render_scene(Scene("giraffe", "red")).image
    assert score_edit(car, giraffe, slot="animal", target="giraffe").success
    wrong = score_edit(car, giraffe, slot="animal", target="dog")
    assert not wrong.success and wrong.iou < 0.6 and wrong.shape_distance > 0.2


def test_an_empty_edit_is_not_found_and_not_a_success():
    from probe.toy.world.world import _background

    source = render_scene(Scene("car", "red", "park")).image
    empty = _background("park", 64).astype(np.uint8)  # the park without the car
    score = score_edit(source, empty, slot="colour", target="red")
    assert not score.edit_found and not score.success and score.judged == ""
    assert score.iou == 0.0 and math.isnan(score.shape_distance)


def test_summarise_skips_nans_but_counts_every_edit():
    nan = math.nan
    scores = [
        EditScore("colour", "red", "red", True, True, True, 0.8, 0.1, 40.0, 1.0),
        EditScore("colour", "red", "", False, True, False, 0.0, nan, 30.0, 2.0),
    ]
    s = summarise(scores)
    assert s["n"] == 2 and s["success"] == 0.5 and s["found"] == 0.5
    assert s["iou"] == pytest.approx(0.4) and s["shape_distance"] == pytest.approx(0.1)


def test_image_metrics():
    rng = np.random.default_rng(0)
    a = render_scene(Scene("dog", "blue")).image
    noisy = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, a) == 100.0 and ssim(a, a) == pytest.approx(1.0)
    assert 25 < psnr(a, noisy) < 40 and ssim(a, noisy) < 0.99
    mask = np.zeros(a.shape[:2], bool)
    assert math.isnan(psnr(a, noisy, mask)) and math.isnan(mean_abs_diff(a, noisy, mask))
    assert to_array(a.astype(np.float32) / 255).dtype == np.uint8


def test_bad_inputs_name_the_value():
    a = render_scene(Scene()).image
    with pytest.raises(ValueError, match=r"differ in size: \(64, 64, 3\) vs \(32, 32, 3\)"):
        psnr(a, a[:32, :32])
    with pytest.raises(ValueError, match=r"\(64, 64\) is not \[H, W, 3\]"):
        to_array(a[..., 0])
    with pytest.raises(ValueError, match="cannot judge slot 'weather'"):
        judge_kind("weather", "sunny")
    assert judge_kind("thing", "cyan") == "colour" and judge_kind("animal") == "category"


# --- real-checkpoint metrics, on tiny models saved from configs ------------------------------


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    from probe.models.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer
    from probe.models.tiny import tiny_words

    root = tmp_path_factory.mktemp("metric_models")
    tok = load_clip_tokenizer(write_clip_tokenizer(tiny_words(), root / "tokenizer"))
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4}  # fmt: skip
    text = {**small, "vocab_size": len(tok), "max_position_embeddings": 77,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.eos_token_id}  # fmt: skip
    vision = {**small, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    clip.save_pretrained(root / "clip")
    pixels = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=pixels, tokenizer=tok).save_pretrained(root / "clip")
    for name, model in [("vit", ViTModel(ViTConfig(**vision), add_pooling_layer=False)),
                        ("dinov2", Dinov2Model(Dinov2Config(**vision)))]:  # fmt: skip
        model.save_pretrained(root / name)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / name)
    return root


def test_clip_score_and_directional_similarity(tiny_folders):
    from editing.scoring.clip_dino import ClipMetrics

    clip = ClipMetrics(tiny_folders / "clip")
    red, blue = (render_scene(Scene("car", c)).image for c in ("red", "blue"))
    scores = clip.score([red, blue], ["a red car", "a blue car"])
    assert len(scores) == 2 and all(0.0 <= s <= 100.0 for s in scores)
    cos = (clip.image_embeddings([red]) * clip.text_embeddings(["a red car"])).sum()
    assert scores[0] == pytest.approx(100 * max(float(cos), 0.0), abs=1e-4)
    forward = clip.directional_similarity([red], [blue], ["a red car"], ["a blue car"])[0]
    back = clip.directional_similarity([blue], [red], ["a red car"], ["a blue car"])[0]
    assert -1.0 <= forward <= 1.0 and back == pytest.approx(-forward, abs=1e-5)
    with pytest.raises(ValueError, match="same length"):
        clip.score([red], ["a red car", "a blue car"])
    with pytest.raises(ValueError, match="list of prompts"):
        clip.text_embeddings("a red car")


@pytest.mark.parametrize("name", ["vit", "dinov2"])
def test_dino_structure_distance(tiny_folders, name):
    from editing.scoring.clip_dino import DinoStructure

    dino = DinoStructure(tiny_folders / name)
    a = render_scene(Scene("car", "red", x=0.35)).image
    b = render_scene(Scene("giraffe", "red", x=0.65)).image
    sim = dino.key_self_similarity(a)
    assert sim.shape == (17, 17)  # CLS + 4x4 patches
    assert dino.distance(a, a) == pytest.approx(0.0, abs=1e-10)
    assert dino.distance(a, b) > 1e-6
    assert dino.cls_distance(a, a) == pytest.approx(0.0, abs=1e-5)


def test_clip_edit_scorer_scores_an_edit_without_masks(tiny_folders):
    from editing.scoring.clip_dino import ClipMetrics, DinoStructure
    from editing.scoring.clip_scorer import ClipEditScorer

    pair = next(p for p in load_edit_pairs("colour_edits") if (p.source_word, p.target_word) == ("red", "blue"))  # fmt: skip
    scorer = ClipEditScorer(ClipMetrics(tiny_folders / "clip"), DinoStructure(tiny_folders / "vit"))
    red, blue = (render_scene(Scene("car", c)).image for c in ("red", "blue"))
    score = scorer(red, blue, pair)
    assert score.judged in ("source", "target") and score.success == (score.judged == "target")
    assert 0.0 < score.source_shift < 1.0 and (score.source_shift > 0.5) == (not score.success)
    assert math.isnan(score.iou) and score.shape_distance > 0 and score.background_psnr < 100
    there = scorer.source_probability(blue, pair.source, pair.target)
    back = scorer.source_probability(blue, pair.target, pair.source)
    assert there == pytest.approx(score.source_shift) and there + back == pytest.approx(1.0)
    same = scorer(red, red, pair)
    assert same.shape_distance == pytest.approx(0.0, abs=1e-10) and same.background_psnr == 100.0
    with pytest.raises(ValueError, match="both 'a red car'"):
        scorer.source_probability(red, "a red car", "a red car")


def test_cli_sweep_scores_with_clip_and_refuses_to_mix_scorers(tiny_folders, tmp_path, capsys):
    from editing.sweep.table import read_rows
    from probe.cli.main import main

    out = tmp_path / "sw"
    args = ["sweep", "--model", "tiny", "--out", str(out), "--ranges", "none", "fpe",
            "--kinds", "self", "--max-pairs", "2", "--num-steps", "2"]  # fmt: skip
    clip = ["--clip", str(tiny_folders / "clip"), "--dino", str(tiny_folders / "dinov2")]
    assert main([*args, *clip]) == 0
    rows = read_rows(out / "sweep.csv")
    assert len(rows) == 4 and {r["judged"] for r in rows} <= {"source", "target"}
    assert all(0.0 <= r["source_shift"] <= 1.0 and r["shape_distance"] >= 0.0 for r in rows)
    assert json.loads((out / "sweep.json").read_text())["scorer"] == "clip"
    assert (out / "tradeoff.png").stat().st_size > 0  # drawn against the DINO distance
    capsys.readouterr()
    assert main(args) == 2  # the toy judges into a CLIP sweep's folder
    assert "other settings" in capsys.readouterr().err and len(read_rows(out / "sweep.csv")) == 4
    assert main([*args[:4], str(tmp_path / "x"), *args[5:], "--dino", "d"]) == 2
    assert "--dino needs --clip" in capsys.readouterr().err


def test_real_metrics_refuse_missing_folders_and_non_vit_models(tmp_path):
    from torch import nn

    from editing.scoring.clip_dino import ClipMetrics, DinoStructure, _last_key_projection

    with pytest.raises(FileNotFoundError, match="not a CLIP folder"):
        ClipMetrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        DinoStructure(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="Sequential has no attention key"):
        _last_key_projection(nn.Sequential(nn.Linear(2, 2)))


# --- the real-image path on toy renders (trained toy model; slow) -----------------------------

needs_toy = pytest.mark.skipif(
    not (TOY_DIR / "model_index.json").is_file(),
    reason=f"the trained toy model is not in {TOY_DIR} (train it with `attnprobe toy train`)",
)


@pytest.fixture(scope="module")
def toy_renders():
    from probe.models import generation_defaults, load_pipeline
    from probe.toy.world.world import scene_for_prompt

    pipe = load_pipeline("toy")
    size = generation_defaults(pipe)["height"]
    colours = ["red", "green", "blue", "yellow", "purple", "cyan"]
    renders = [render_scene(scene_for_prompt(f"a {c} car", 500 + i), size) for i, c in enumerate(colours)]  # fmt: skip
    return pipe, renders


@pytest.mark.slow
@needs_toy
def test_toy_render_inversion_reconstructs(toy_renders):
    from editing.inversion import ddim_invert, reconstruct

    pipe, renders = toy_renders
    for render in renders[:3]:
        inversion = ddim_invert(pipe, render.image)
        assert psnr(render.image, reconstruct(pipe, inversion, guidance_scale=1.0)) >= 25


@pytest.mark.slow
@needs_toy
def test_toy_fpe_edits_of_renders_reach_the_target_colour(toy_renders):
    from editing.editor import edit
    from editing.inversion import ddim_invert

    pipe, renders = toy_renders
    wins = []
    for render in renders:
        source = f"a {render.scene.colour} car"
        target = "orange" if render.scene.colour != "orange" else "pink"
        result = edit(pipe, source, [f"a {target} car"], method="fpe", inversion=ddim_invert(pipe, render.image))  # fmt: skip
        wins.append(score_edit(render.image, result.targets[0], slot="colour", target=target).success)  # fmt: skip
    assert sum(wins) / len(wins) >= 0.7

"""The toy world: renderer, templates, judges and the ``toy render`` command."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from probe.cli.main import main
from probe.prompts.templates import TemplateError, list_templates, load_template, template_words
from probe.toy.judges.judge import (
    NoObjectError,
    find_object,
    judge,
    judge_category,
    judge_category_probs,
    judge_colour,
    mask_iou,
    shape_distance,
)
from probe.toy.training.train_judge import degrade
from probe.toy.world.world import (
    BACKGROUNDS,
    CATEGORIES,
    PALETTE,
    Scene,
    check_vocabulary,
    random_scene,
    render_scene,
)

HELD_OUT_SEED = 2026  # the judge trains on scenes from default_rng(0) and default_rng(1)


# --- renderer -------------------------------------------------------------------------------


def test_render_is_deterministic_for_a_scene():
    scene = Scene("giraffe", "orange", "street", x=0.4, y=0.55, scale=0.7, flip=True, seed=3)
    a, b = render_scene(scene), render_scene(scene)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    moved = render_scene(Scene("giraffe", "orange", "street", x=0.6, y=0.55, scale=0.7, flip=True))
    assert not np.array_equal(a.mask, moved.mask)
    assert render_scene(scene, size=96).image.shape == (96, 96, 3)


@pytest.mark.parametrize("background", list(BACKGROUNDS))
@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_is_drawn_and_its_mask_matches_the_pixels(category, background):
    render = render_scene(Scene(category, "blue", background, x=0.5, y=0.55, scale=0.7))
    top, bottom, horizon = BACKGROUNDS[background]
    bg = np.empty((64, 64, 3), np.float32)
    bg[: round(horizon * 64)], bg[round(horizon * 64) :] = top, bottom
    img = render.image.astype(np.float32)
    # alpha > 0.5 <=> nearer the object colour than the background, except at near-ties
    # (alpha 127/255 or 128/255), which uint8 rounding cannot tell apart
    d_object = np.linalg.norm(img - PALETTE["blue"], axis=-1)
    d_background = np.linalg.norm(img - bg, axis=-1)
    clear = np.abs(d_object - d_background) > 2
    assert np.array_equal((d_object < d_background)[clear], render.mask[clear])
    assert (~clear).mean() < 0.04
    assert 150 < render.mask.sum() < 0.6 * 64 * 64
    far = ~ndimage.binary_dilation(render.mask, iterations=2)
    assert np.array_equal(img[far], bg[far])
    assert (np.abs(img[render.mask] - PALETTE["blue"]).sum(-1) < 1).mean() > 0.5  # the rest: edges


def test_categories_have_distinct_silhouettes():
    masks = {c: render_scene(Scene(c, "red", x=0.5, scale=0.7)).mask for c in CATEGORIES}
    for i, a in enumerate(CATEGORIES):
        for b in CATEGORIES[i + 1 :]:
            assert shape_distance(masks[a], masks[b]) > 0.15, (a, b)


@pytest.mark.parametrize("colour", list(PALETTE))
def test_every_colour_is_drawn_exactly(colour):
    render = render_scene(Scene("sheep", colour, "park"))
    pure = render.image[render.mask]
    assert (np.abs(pure.astype(int) - PALETTE[colour]).sum(-1) == 0).mean() > 0.7


def test_scene_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        Scene("car", "teal")
    with pytest.raises(ValueError, match="unknown category 'zebra'"):
        Scene("zebra")


# --- templates ------------------------------------------------------------------------------


def test_built_in_templates_load_and_match_the_world():
    check_vocabulary()
    names = list_templates()
    assert {"colour_car", "animal_park", "colour_animal", "colour_edits", "animal_edits"} <= set(
        names
    )
    assert len(load_template("colour_animal")) == len(PALETTE) * (len(CATEGORIES) - 1)


BAD_TEMPLATES = {
    "unknown field": (
        'name: bad\nprompt: "a {colour} car"\ncolours: [red]\nslots:\n  colour: [red]\n',
        3,
        "unknown field 'colours'",
    ),
    "empty list": (
        'name: bad\nprompt: "a {colour} car"\nslots:\n  colour: []\n',
        4,
        "non-empty list",
    ),
    "label word missing": (
        'name: bad\nprompt: "a red car"\nslots:\n  colour: [red, blue]\n',
        2,
        "missing from the prompt",
    ),
    "unknown list": (
        'name: bad\nprompt: "a {colour} car"\nslots:\n\n  colour: $hues\n',
        5,
        "refers to $hues",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TEMPLATES))
def test_template_errors_name_the_file_and_line(tmp_path, case):
    text, line, message = BAD_TEMPLATES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TemplateError) as info:
        load_template(path)
    assert f"{path}:{line}:" in str(info.value)
    assert message in str(info.value)


def test_every_template_word_is_one_token(tiny_pipe):
    tokenizer = tiny_pipe.tokenizer
    words = template_words()
    assert {"red", "car", "giraffe", "park", "standing"} <= set(words)
    for word in words:
        assert len(tokenizer.tokenize(word)) == 1, word
    assert len(tokenizer.tokenize("xylophone")) > 1  # the check can fail


# --- judges ---------------------------------------------------------------------------------


def test_judges_on_1000_held_out_noisy_renders():
    """Acceptance: blur sigma 1 px, per-channel shift up to ±15, gaussian noise sigma 8."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(HELD_OUT_SEED)
    start, cpu = time.time(), time.process_time()
    colour_ok = category_ok = 0
    ious = []
    for _ in range(1000):
        _, scene = random_scene(rng)
        render = render_scene(scene)
        image = degrade(render.image, rng, noise=8.0, blur=1.0, shift=15.0)
        mask = find_object(image)
        ious.append(mask_iou(mask, render.mask))
        if mask.any():
            colour_ok += judge_colour(image, mask) == scene.colour
            category_ok += judge_category(image, mask) == scene.category
    print(f"\ncolour {colour_ok / 1000:.3f}, category {category_ok / 1000:.3f}, "
          f"mean IoU {np.mean(ious):.3f} (min {np.min(ious):.3f}), "
          f"{time.time() - start:.1f}s wall, {time.process_time() - cpu:.1f}s CPU")  # fmt: skip
    assert colour_ok >= 980
    assert category_ok >= 950
    assert np.mean(ious) >= 0.9


def test_world_v2_judges_on_500_held_out_noisy_renders():
    """The shipped v2 judge (probe/toy/judges/weights_v2) on v2's 16 colours and backgrounds."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    colour_ok = category_ok = 0
    ious = []
    for _ in range(500):
        _, scene = random_scene(rng, "v2")
        render = render_scene(scene)
        image = degrade(render.image, rng, noise=8.0, blur=1.0, shift=15.0)
        mask = find_object(image, "v2")
        ious.append(mask_iou(mask, render.mask))
        if mask.any():
            colour_ok += judge_colour(image, mask, "v2") == scene.colour
            category_ok += judge_category(image, mask, "v2") == scene.category
    print(f"\nv2: colour {colour_ok / 500:.3f}, category {category_ok / 500:.3f}, "
          f"mean IoU {np.mean(ious):.3f}")  # fmt: skip
    assert colour_ok >= 490 and category_ok >= 475 and np.mean(ious) >= 0.9


def test_judge_reads_a_clean_render_in_any_form():
    render = render_scene(Scene("horse", "purple", "street", x=0.45, scale=0.75))
    j = judge(render.image)
    assert (j.found, j.colour, j.category) == (True, "purple", "horse")
    assert j.confidence > 0.5 and j.colour_distance < 5 and mask_iou(j.mask, render.mask) > 0.95
    assert "mask" not in repr(j)
    assert judge(Image.fromarray(render.image)).category == "horse"
    assert judge(render.image.astype(np.float32) / 255).colour == "purple"
    big = render_scene(Scene("rabbit", "cyan", "park", scale=0.7), size=128)
    assert (judge(big.image).category, judge(big.image).colour) == ("rabbit", "cyan")
    probs = judge_category_probs(render.image, render.mask)
    assert set(probs) == set(CATEGORIES) and abs(sum(probs.values()) - 1) < 1e-5


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_no_object_is_reported_not_crashed(background):
    empty = render_scene(Scene("car", "red", background, x=3.0)).image  # drawn off-canvas
    noisy = degrade(empty, np.random.default_rng(0))
    not_toy = np.zeros((64, 48, 3), np.uint8)  # no toy background at all
    for image in (empty, noisy, not_toy):
        assert not find_object(image).any()
        j = judge(image)
        assert (j.found, j.colour, j.category, j.area) == (False, None, None, 0)
        with pytest.raises(NoObjectError, match="no object"):
            judge_colour(image)
        with pytest.raises(NoObjectError):
            judge_category(image)


def test_mask_metrics():
    a = render_scene(Scene("dog", "red", x=0.5, scale=0.7)).mask
    moved = render_scene(Scene("dog", "red", x=0.35, scale=0.5)).mask
    cat = render_scene(Scene("cat", "red", x=0.5, scale=0.7)).mask
    empty = np.zeros_like(a)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, empty) == 0.0 and mask_iou(empty, empty) == 1.0
    assert mask_iou(a, moved) < 0.6
    assert shape_distance(a, moved) < 0.25 < 0.3 < shape_distance(a, cat)
    assert shape_distance(a, empty) == 1.0 and shape_distance(empty, empty) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        mask_iou(a, a[:10])


# --- command line ---------------------------------------------------------------------------


def test_toy_render_command_writes_images_and_labels(tmp_path, capsys):
    out = tmp_path / "renders"
    args = ["toy", "render", "--template", "colour_car", "--n", "12", "--seed", "0"]
    assert main([*args, "--out", str(out)]) == 0
    assert str(out / "labels.jsonl") in capsys.readouterr().out
    lines = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and len(list(out.glob("*.png"))) == 12
    assert [x["labels"]["colour"] for x in lines[:10]] == list(PALETTE)
    for line in lines:
        image = np.asarray(Image.open(out / line["file"]))
        assert line["prompt"] == f"a {line['labels']['colour']} car"
        assert np.array_equal(image, render_scene(Scene(**line["scene"])).image)
        assert judge_colour(image) == line["scene"]["colour"] == line["labels"]["colour"]
    again = tmp_path / "again"
    assert main([*args, "--out", str(again)]) == 0
    assert (again / "labels.jsonl").read_text() == (out / "labels.jsonl").read_text()


def test_toy_render_command_errors(tmp_path, capsys):
    assert main(["toy", "render", "--template", "no_such", "--out", str(tmp_path)]) == 2
    assert "no template named 'no_such'" in capsys.readouterr().err
    assert (
        main(["toy", "render", "--template", "colour_car", "--n", "0", "--out", str(tmp_path)]) == 2
    )
    assert "--n 0" in capsys.readouterr().err


# --- world v2 -------------------------------------------------------------------------------


def test_world_v2_has_sixteen_colours_far_apart_and_far_from_its_backgrounds():
    from probe.toy.world.world import BACKGROUNDS_V2, get_world

    v1, v2 = get_world("v1"), get_world("v2")
    assert dict(v1.palette) == PALETTE and dict(v1.backgrounds) == BACKGROUNDS  # v1 unchanged
    assert len(v2.palette) >= 16 and {"white", "grey"} <= set(v2.palette)
    assert v2.categories == CATEGORIES and len(CATEGORIES) == 11  # the car and ten animals
    rgb = np.asarray(list(v2.palette.values()), float)
    pairwise = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 1e9 * np.eye(len(rgb))
    assert pairwise.min() > 85
    for top, bottom, _ in BACKGROUNDS_V2.values():
        for colour in (top, bottom):
            assert np.linalg.norm(rgb - np.asarray(colour, float), axis=-1).min() > 85, colour
    # v1's backgrounds would hide v2's grey (the reason v2 moved them)
    assert np.linalg.norm(np.subtract(BACKGROUNDS["street"][1], v2.palette["grey"])) < 40


def test_scenes_know_their_world():
    from probe.toy.world.world import get_world, scene_for_prompt

    with pytest.raises(ValueError, match="unknown colour 'white' in world v1.*world='v2'"):
        Scene("car", "white")
    white = render_scene(Scene("car", "white", "street", world="v2"))
    assert (np.abs(white.image[white.mask].astype(int) - 250).sum(-1) == 0).mean() > 0.7
    scene = scene_for_prompt("a grey dog standing in the park", seed=3, world="v2")
    assert (scene.colour, scene.category, scene.background, scene.world) == (
        "grey", "dog", "park", "v2")  # fmt: skip
    assert Scene(**scene.to_dict()) == scene
    with pytest.raises(ValueError, match="unknown toy world 'v9'; the worlds are v1, v2"):
        get_world("v9")
    _, drawn = random_scene(np.random.default_rng(0), "v2")
    assert drawn.world == "v2" and drawn.colour in get_world("v2").palette


def test_v2_templates_and_edit_sets_take_the_v2_lists():
    from probe.prompts.templates import load_edit_pairs, shared_lists

    check_vocabulary("v2")
    colours = shared_lists("v2")["colours"]
    assert len(colours) == 16 and colours[:10] == list(PALETTE)
    assert [i.prompt for i in load_template("colour_car", "v2")][-1] == "a magenta car"
    pairs = load_edit_pairs("colour_edits", "v2")
    assert len(pairs) == 16 * 15  # every ordered pair
    assert ("a white car", "a grey car") in {(p.source, p.target) for p in pairs}
    assert len(load_edit_pairs("colour_edits")) == 10 * 9  # the default lists are still v1's
    assert len(load_template("colour_animal", "v2")) == 16 * 10
    assert "lists.v2" not in list_templates()
    with pytest.raises(FileNotFoundError, match="no word lists for world 'v3'.*'v2'"):
        load_template("colour_car", "v3")


def test_captions_fit_the_scenes_they_are_true_of():
    from probe.toy.world.world import caption, caption_fits

    dog = Scene("dog", "red", "park", world="v2")
    assert caption_fits("a dog standing in the park", dog)
    assert caption_fits("a red dog", dog) and caption_fits("", dog)
    assert not caption_fits("a blue dog", dog) and not caption_fits("a red cat", dog)
    assert not caption_fits("a red dog in the street", dog)
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, scene = random_scene(rng, "v2")
        assert caption_fits(caption(scene, rng), scene)


@pytest.mark.parametrize("background", ["park", "street"])
def test_v2_colour_judge_reads_every_colour_on_noisy_renders(background):
    """White and grey included: 3 layouts per colour, blur 1 px, shift ±15, noise 8."""
    from probe.toy.world.world import get_world

    rng = np.random.default_rng(HELD_OUT_SEED)
    ok, ious = 0, []
    colours = list(get_world("v2").palette)
    for colour in colours:
        for _ in range(3):
            _, s = random_scene(rng, "v2")
            scene = Scene(s.category, colour, background, s.x, s.y, s.scale, s.flip, world="v2")
            render = render_scene(scene)
            image = degrade(render.image, rng, noise=8.0, blur=1.0, shift=15.0)
            mask = find_object(image, world="v2")
            ious.append(mask_iou(mask, render.mask))
            ok += mask.any() and judge_colour(image, mask, world="v2") == colour
    assert ok >= 0.95 * 3 * len(colours)
    assert np.mean(ious) >= 0.88 and np.min(ious) > 0.5


def test_a_model_folder_judges_with_its_own_judge_of_its_own_world(tmp_path):
    import shutil

    from probe.toy.judges.category import WEIGHTS_DIR
    from probe.toy.world.world import world_of

    (tmp_path / "attnprobe.json").write_text(json.dumps({"world": "v1"}))
    assert world_of(tmp_path).judge_dir == WEIGHTS_DIR  # no judge of its own: the shipped one
    shutil.copytree(WEIGHTS_DIR, tmp_path / "judge")
    world = world_of(tmp_path)
    assert (world.name, world.judge_dir) == ("v1", tmp_path / "judge")
    image = render_scene(Scene("giraffe", "red")).image
    assert judge_category(image, world=world) == "giraffe"
    config = json.loads((tmp_path / "judge" / "category.json").read_text())
    (tmp_path / "judge" / "category.json").write_text(json.dumps(config | {"world": "v2"}))
    with pytest.raises(ValueError, match="trained on world v2, not v1"):
        judge_category(image, world=world_of(tmp_path))
    assert world_of(load_template.__module__).name == "v1"  # not a folder: the default world


def test_a_model_of_world_v2_is_probed_and_edited_on_the_v2_lists(tmp_path, capsys):
    """reproduce, record and sweep read the templates with the lists of the model's world."""
    import shutil
    from dataclasses import replace

    from editing.experiment.reproduction import Reproduction
    from editing.experiment.settings import ReproduceConfig
    from probe.models import TOY_DIR
    from probe.models.vocabulary import UnknownWordError
    from probe.prompts.templates import shared_lists

    folder = tmp_path / "toy_v2"
    shutil.copytree(TOY_DIR, folder)
    said = json.loads((folder / "attnprobe.json").read_text())
    (folder / "attnprobe.json").write_text(json.dumps({**said, "world": "v2"}))
    config = replace(ReproduceConfig.preset("toy", quick=True), model=str(folder))
    run = Reproduction(tmp_path / "run", config, progress=False, workers=1)
    assert run.lists() == "v2"
    colours, _ = run.edit_pairs()
    words = {w for pair in colours for w in (pair.source_word, pair.target_word)}
    assert words <= set(shared_lists("v2")["colours"])
    # the v1 toy's tokenizer under a v2 label: v2's new colours are refused before any work
    with pytest.raises(UnknownWordError, match="white|grey|lime|teal|navy|magenta"):
        run.check_words()
    assert not (tmp_path / "run" / "data").exists()
    code = main(["record", "--template", "colour_car", "--model", str(folder), "--seeds", "0",
                 "--out", str(tmp_path / "rec")])  # fmt: skip
    assert code != 0 and "6 of 16 prompts" in capsys.readouterr().err  # v2's colour_car
    shipped = Reproduction(tmp_path / "run1", ReproduceConfig.preset("toy", quick=True))
    assert shipped.lists() is None  # the shipped toy: the default (v1) lists

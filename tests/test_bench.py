"""PIE-Bench: the metrics pinned to hand-computed numbers, the reader, the toy benchmark and a
resumable run on toy-v2 (issue 29)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from editing.bench.pie_bench import read_pie_bench
from editing.bench.pie_metrics import (
    decode_mask,
    encode_mask,
    masked,
    mse,
    nan_mean,
    psnr,
    region_metrics,
    ssim,
    strip_brackets,
)
from editing.bench.pie_models import METRIC_COLUMNS, PieScorer, SqueezeLpips, StructureDistance
from editing.scoring.images import MAX_PSNR


def test_mask_decoding_sets_the_runs_and_the_border():
    # indices 6, 7 of a 4 x 5 image are (1, 1), (1, 2); the border is set whatever the runs
    expected = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert decode_mask([6, 2], (4, 5)).astype(int).tolist() == expected
    # a run past the end is cut there; no runs: the border only
    assert decode_mask([18, 10], (4, 5)).sum() == 14
    assert decode_mask([], (3, 3)).astype(int).tolist() == [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    with pytest.raises(ValueError, match="pairs"):
        decode_mask([1, 2, 3], (4, 5))
    with pytest.raises(ValueError, match="outside"):
        decode_mask([20, 1], (4, 5))


def test_mask_encoding_is_the_inverse_up_to_the_border():
    mask = np.array([[0, 1, 1], [0, 0, 1]])
    assert encode_mask(mask) == [1, 2, 5, 1]
    big = np.zeros((6, 7), bool)
    big[2:4, 1:5] = True
    bordered = big.copy()
    bordered[[0, -1], :] = bordered[:, [0, -1]] = True
    assert (decode_mask(encode_mask(big), big.shape) == bordered).all()


def test_masking_multiplies_the_unit_image_by_the_mask():
    image = np.full((2, 2, 3), 255, np.uint8)
    image[0, 0] = 51
    out = masked(image, np.array([[1, 0], [0, 1]]))
    assert out[..., 0].ravel().tolist() == pytest.approx([0.2, 0.0, 0.0, 1.0])


def test_psnr_and_mse_on_two_by_two_images():
    source = np.full((2, 2, 3), 255, np.uint8)
    edited = source.copy()
    edited[0, 0] = 0  # the edit region
    edited[1, 1] = 127  # a background pixel changed by 128/255
    edit_region = np.array([[1.0, 0.0], [0.0, 0.0]])
    a, b = masked(source, 1 - edit_region), masked(edited, 1 - edit_region)
    # every one of the 12 elements counts, the masked-out ones as zeros
    expected_mse = 3 * (128 / 255) ** 2 / 12
    assert mse(a, b) == pytest.approx(expected_mse)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / expected_mse))
    inside = region_metrics(source, edited, edit_region, "edit")
    assert inside["mse_edit_part"] == pytest.approx(3 / 12)
    assert inside["psnr_edit_part"] == pytest.approx(10 * math.log10(4))
    assert psnr(a, a) == MAX_PSNR and mse(a, a) == 0
    assert math.isnan(inside["ssim_edit_part"])  # too small for the 11-tap window


def test_ssim_of_constant_images_and_of_one_image():
    x, y = np.ones((12, 12, 3)), np.full((12, 12, 3), 0.5)
    c1 = 0.01**2  # no variance: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    assert ssim(x, y) == pytest.approx((1 + c1) / (1.25 + c1), abs=1e-6)
    noise = np.random.default_rng(0).random((16, 16, 3))
    assert ssim(noise, noise) == pytest.approx(1.0)
    assert ssim(noise, np.clip(noise + 0.2, 0, 1)) < 0.99


def test_empty_regions_give_nan_and_nans_are_dropped_from_means():
    image = np.zeros((3, 3, 3), np.uint8)
    everywhere = decode_mask([4, 1], (3, 3))  # centre + border: all of a 3 x 3 image
    assert all(math.isnan(v) for v in region_metrics(image, image, everywhere).values())
    nowhere = np.zeros((3, 3))
    assert all(math.isnan(v) for v in region_metrics(image, image, nowhere, "edit").values())
    assert nan_mean([1.0, math.nan, 3.0, None]) == (2.0, 2)
    mean, count = nan_mean([math.nan, None])
    assert math.isnan(mean) and count == 0


def test_a_scorer_without_folders_reports_model_metrics_missing():
    scorer = PieScorer()
    row = scorer.score(np.zeros((8, 8, 3)), np.ones((8, 8, 3)), np.zeros((8, 8)), ("a", "b"))
    model_columns = set(METRIC_COLUMNS) - {"psnr_unedit_part", "mse_unedit_part",
                                           "ssim_unedit_part"}  # fmt: skip
    assert set(scorer.missing) == model_columns
    assert all(row[c] is None for c in model_columns)
    assert row["mse_unedit_part"] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        PieScorer(dino="/nonexistent/dino")
    with pytest.raises(FileNotFoundError, match=r"squeezenet1_1\.pth"):
        PieScorer(lpips="/nonexistent/lpips")


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A tiny random ViT (patch 8), a tiny CLIP and random LPIPS SqueezeNet files."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        ViTConfig,
        ViTModel,
    )

    from editing.bench.pie_models import squeezenet_features
    from probe.models.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer
    from probe.models.tiny import tiny_words

    root = tmp_path_factory.mktemp("pie_models")
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4}  # fmt: skip
    vision = {**small, "image_size": 32, "patch_size": 8}
    ViTModel(ViTConfig(**vision), add_pooling_layer=False).save_pretrained(root / "dino")
    tok = load_clip_tokenizer(write_clip_tokenizer(tiny_words(), root / "tokenizer"))
    text = {**small, "vocab_size": len(tok), "max_position_embeddings": 77,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.eos_token_id}  # fmt: skip
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(root / "clip")
    pixels = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=pixels, tokenizer=tok).save_pretrained(root / "clip")
    (root / "lpips").mkdir()
    features = squeezenet_features().state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, root / "lpips/squeezenet1_1.pth")
    widths = (64, 128, 256, 384, 384, 512, 512)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(widths)}
    torch.save(heads, root / "lpips/squeeze.pth")
    return root


def _images():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[16:48, 16:48] = 255 - b[16:48, 16:48]
    return a, b


def test_structure_distance_on_a_tiny_vit(model_folders):
    a, b = _images()
    dino = StructureDistance(model_folders / "dino", side=32)
    sim = dino.self_similarity(a)
    assert sim.shape == (17, 17)  # CLS + 4 x 4 patches of the 32 px input
    assert torch.allclose(sim.diagonal(), torch.ones(17), atol=1e-5)
    assert dino.distance(a, a) == 0.0 and dino.distance(a, b) > 0
    unit = StructureDistance(model_folders / "dino", scale="unit", side=32)
    assert unit.pixels(a).abs().max() < dino.pixels(a).abs().max() / 50
    with pytest.raises(ValueError, match="reference"):
        StructureDistance(model_folders / "dino", scale="0-1")


def test_lpips_and_clip_columns_on_tiny_models(model_folders):
    a, b = _images()
    lpips = SqueezeLpips(model_folders / "lpips")
    x = masked(a, np.ones((64, 64)))
    assert lpips.distance(x, x) == 0.0 and lpips.distance(x, masked(b, np.ones((64, 64)))) > 0
    scorer = PieScorer(dino=model_folders / "dino", clip=model_folders / "clip",
                       lpips=model_folders / "lpips")  # fmt: skip
    scorer.dino = StructureDistance(model_folders / "dino", side=32)
    mask = np.zeros((64, 64))
    mask[16:48, 16:48] = 1
    row = scorer.score(a, b, mask, ("a red car", "a blue car"))
    assert scorer.missing == {} and set(row) == set(METRIC_COLUMNS)
    assert all(0 <= row[c] <= 100 for c in METRIC_COLUMNS if c.startswith("clip"))
    assert row["psnr_unedit_part"] == MAX_PSNR and row["lpips_unedit_part"] == 0.0
    empty = scorer.score(a, b, np.zeros((64, 64)), ("a red car", "a blue car"))
    assert math.isnan(empty["clip_similarity_target_image_edit_part"])


def test_toy_pie_bench_reads_as_pie_bench(tmp_path):
    from editing.bench.toy_pie import write_toy_pie_bench
    from probe.toy.world.world import Scene, render_scene

    write_toy_pie_bench(tmp_path, per_type=2, world="v2")
    items = read_pie_bench(tmp_path)
    assert [i.editing_type_id for i in items] == ["6", "6", "1", "1", "8", "8"]
    assert [i.id for i in read_pie_bench(tmp_path, types=["8"])] == ["800000000000", "800000000001"]
    for item in items:
        image, mask = item.load(tmp_path)
        scene = Scene(**item.extra["toy"]["scene"])
        render = render_scene(scene, 64)
        assert (np.asarray(image) == render.image).all() and mask.shape == (64, 64)
        assert mask[0].all() and mask[:, -1].all()  # the reference's border rule
        inner = mask[1:-1, 1:-1].astype(bool)
        obj = render.mask[1:-1, 1:-1]
        if item.editing_type_id == "8":
            assert (inner == ~obj).all()
        else:
            assert (inner >= obj).all() and inner.any()
        slot = item.extra["toy"]["slot"]
        assert item.original_prompt.count("[") == 1 and "[" not in item.source_prompt
        assert item.target_prompt == item.source_prompt.replace(
            item.extra["toy"]["source"], item.extra["toy"]["target"]
        ), slot
    entry = json.loads((tmp_path / "mapping_file.json").read_text())
    del entry["600000000000"]["mask"]
    (tmp_path / "mapping_file.json").write_text(json.dumps(entry))
    with pytest.raises(ValueError, match="600000000000 lacks mask"):
        read_pie_bench(tmp_path)
    assert strip_brackets("a [blue] car") == "a blue car"


def test_toy_judges_read_a_perfect_edit(tmp_path):
    from dataclasses import replace

    from editing.bench.toy_pie import judge_toy_edit, write_toy_pie_bench
    from probe.toy.world.world import Scene, render_scene

    write_toy_pie_bench(tmp_path, per_type=1, world="v2")
    for item in read_pie_bench(tmp_path):
        toy = item.extra["toy"]
        scene = Scene(**toy["scene"])
        perfect = render_scene(replace(scene, **{toy["slot"]: toy["target"]}), 64).image
        image, _ = item.load(tmp_path)
        cols = judge_toy_edit(image, perfect, toy)
        assert cols["toy_success"] == 1.0 and cols["toy_kept"] == 1.0, (toy, cols)
        assert judge_toy_edit(image, image, toy)["toy_success"] == 0.0


@pytest.mark.slow
def test_bench_run_on_toy_v2_resumes_and_tables(tmp_path):
    from editing.bench.run import bench_jobs, read_rows, run_bench
    from editing.bench.tables import write_tables
    from editing.bench.toy_pie import write_toy_pie_bench
    from probe.models import load_pipeline

    assert bench_jobs(["fpe", "flowedit", "fpe"], ["ddim"]) == [("fpe", "ddim"),
                                                              ("flowedit", "none")]  # fmt: skip
    with pytest.raises(ValueError, match="inversion"):
        bench_jobs(["fpe"], ["ddpm"])
    data, out = tmp_path / "data", tmp_path / "run"
    write_toy_pie_bench(data, per_type=1, world="v2")
    pipe = load_pipeline("toy-v2")
    run = dict(inversions=["ddim"], num_steps=4, limit=1)
    rows_path = run_bench(pipe, data, out, methods=["fpe"], **run)
    first = rows_path.read_text()
    with rows_path.open("a") as f:
        f.write('{"id": "torn')  # a run killed mid-line
    run_bench(pipe, data, out, methods=["fpe", "none"], **run)  # fpe's row is not redone
    rows = read_rows(out)
    assert rows_path.read_text().startswith(first)
    assert [(r["method"], r["id"]) for r in rows] == [("fpe", "600000000000"),
                                                      ("none", "600000000000")]  # fmt: skip
    for row in rows:
        assert (out / row["image"]).is_file() and row["structure_distance"] is None
        assert 0 < row["psnr_unedit_part"] < MAX_PSNR and row["toy_success"] in (0.0, 1.0)
    _, md = write_tables(out)
    text = md.read_text()
    assert "### 6: change color" in text and "### all edit types" in text and "missing" in text
    summary = json.loads((out / "tables.json").read_text())
    assert {s["editing_type_id"] for s in summary} == {"6", "all"}


def test_bench_command_writes_a_toy_benchmark_and_tables(tmp_path, capsys):
    from editing.cli.bench import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "toy", str(tmp_path / "d"), "--per-type", "1"])
    assert args.func(args) == 0
    assert len(read_pie_bench(tmp_path / "d")) == 3
    (tmp_path / "r").mkdir()
    row = {"id": "6", "method": "fpe", "inversion": "ddim", "editing_type_id": "6",
           "psnr_unedit_part": math.nan, "mse_unedit_part": 0.5, "structure_distance": None,
           "seconds": 1.0}  # fmt: skip
    (tmp_path / "r/rows.jsonl").write_text(json.dumps(row) + "\n")
    args = parser.parse_args(["bench", "table", str(tmp_path / "r")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| fpe | ddim | 1 | missing | nan |" in out and "5000.00" in out


@pytest.mark.slow
def test_bench_run_on_tiny_flux_every_flow_inversion_and_flowedit(tmp_path, flux):
    from editing.bench.run import FLOW_INVERSIONS, flowedit_n_max, read_rows, run_bench
    from editing.bench.toy_pie import write_toy_pie_bench

    assert flowedit_n_max(flux, 7) == 6 and flowedit_n_max(flux, None) is None
    data, out = tmp_path / "data", tmp_path / "run"
    write_toy_pie_bench(data, per_type=1, world="v2", size=128)  # tiny-flux works at 128 px
    run_bench(flux, data, out, ["fpe", "flowedit"], FLOW_INVERSIONS, num_steps=3, limit=1)
    rows = read_rows(out)
    assert [(r["method"], r["inversion"]) for r in rows] == [
        *(("fpe", i) for i in FLOW_INVERSIONS), ("flowedit", "none")]  # fmt: skip
    for row in rows:
        assert (out / row["image"]).is_file() and 0 < row["psnr_unedit_part"] <= MAX_PSNR


@pytest.mark.slow
def test_two_torchrun_processes_write_the_rows_of_one(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from editing.bench.run import read_rows
    from editing.bench.toy_pie import write_toy_pie_bench

    data = tmp_path / "data"
    write_toy_pie_bench(data, per_type=1, world="v2")
    bin_dir = Path(sys.executable).parent
    cli = shutil.which("attnprobe", path=str(bin_dir)) or "attnprobe"
    run = [cli, "bench", "run", str(data), "--model", "toy-v2", "--device", "cpu",
           "--method", "fpe", "none", "--num-steps", "3", "--out"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run([*run, str(tmp_path / "one")], check=True, env=env)
    torchrun = shutil.which("torchrun", path=str(bin_dir))
    two = str(tmp_path / "two")
    if torchrun:
        launch = [torchrun, "--standalone", "--nproc_per_node", "2", "--no-python"]
        subprocess.run([*launch, *run, two], check=True, env=env)
    else:  # two --shard processes, as torchrun's ranks would be
        procs = [subprocess.Popen([*run, two, "--shard", f"{i}/2"], env=env) for i in (0, 1)]
        assert [p.wait() for p in procs] == [0, 0]
    assert sorted(p.name for p in (tmp_path / "two").glob("rows*")) == [
        "rows.0-of-2.jsonl", "rows.1-of-2.jsonl"]  # fmt: skip

    def key(row):
        return (row["method"], row["inversion"], row["id"])

    def strip(rows):  # the time of an edit differs between runs
        return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows), key=key)

    one, sharded = read_rows(tmp_path / "one"), read_rows(two)
    assert len(one) == 6 and strip(sharded) == strip(one)
    # the shards met (through gloo under torchrun, no marker files) and shard 0 wrote the table
    assert (tmp_path / "two" / ".shards").is_dir() != bool(torchrun)
    assert "| fpe | ddim | 3 |" in (tmp_path / "two" / "tables.md").read_text()


def test_read_rows_merges_shard_files_once_per_job(tmp_path):
    from editing.bench.run import done_keys, read_rows

    def row(method, item):
        return json.dumps({"id": item, "method": method, "inversion": "ddim"}) + "\n"

    (tmp_path / "rows.jsonl").write_text(row("fpe", "a"))
    (tmp_path / "rows.0-of-2.jsonl").write_text(row("fpe", "b") + row("fpe", "a"))
    (tmp_path / "rows.1-of-2.jsonl").write_text(row("none", "a") + '{"id": "to')  # torn
    assert [(r["method"], r["id"]) for r in read_rows(tmp_path)] == [
        ("fpe", "a"), ("fpe", "b"), ("none", "a")]  # fmt: skip
    assert done_keys(tmp_path) == {("fpe", "ddim", "a"), ("fpe", "ddim", "b"),
                                   ("none", "ddim", "a")}  # fmt: skip


def test_direct_inversion_forces_the_source_row_of_every_method(tiny_pipe, tmp_path, monkeypatch):
    import editing.editor
    from editing.bench.run import edit_item
    from editing.bench.toy_pie import write_toy_pie_bench

    write_toy_pie_bench(tmp_path, per_type=1, world="v1")
    item = read_pie_bench(tmp_path, ["6"])[0]
    image, _ = item.load(tmp_path)
    calls = []
    real = editing.editor.edit
    monkeypatch.setattr(editing.editor, "edit", lambda *a, **k: calls.append(k) or real(*a, **k))
    images = {}
    for method in ("p2p", "masactrl"):
        for inversion in ("ddim", "direct"):
            images[method, inversion] = edit_item(tiny_pipe, item, image, method, inversion,
                                                  num_steps=6)  # MasaCtrl acts from step 4
    branches = [(c.get("source_branch"), c["inversion"].prompt) for c in calls]
    source = item.source_prompt
    # p2p inverts with the source prompt, MasaCtrl with "" (PnP-Inversion's prompts[0])
    assert branches == [(None, source), ("forced", source), (None, ""), ("forced", "")]
    for method in ("p2p", "masactrl"):  # a free source row and a forced one edit differently
        assert images[method, "ddim"].tobytes() != images[method, "direct"].tobytes()

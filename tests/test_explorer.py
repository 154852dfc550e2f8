"""The explorer page's builder (no browser): quantisation, packing, the size budget, what it
leaves out, the page's self-containment, ``maps.explore()`` and ``attnprobe view``.

The page in a real browser: tests/test_explorer_browser.py.
"""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pytest
import torch

from probe.cli.main import main
from probe.recording.maps import AttentionMaps
from probe.recording.recorder import record_attention
from probe.viz.explorer import ExplorerPage, explorer_data, explorer_page, lut_colours
from probe.viz.explorer.payload import (
    dequantise,
    pack,
    quantise,
    quantise_signed,
    unpack,
)


def record_tiny(pipe, self_reduce: str = "full", steps: int = 4) -> tuple[AttentionMaps, object]:
    with record_attention(pipe, self_reduce=self_reduce) as maps:
        image = pipe(
            "a red car", num_inference_steps=steps, generator=torch.Generator().manual_seed(0)
        ).images[0]
    return maps, image


@pytest.fixture(scope="module")
def tiny_run(tiny_pipe):
    return record_tiny(tiny_pipe)


def page_data(page: ExplorerPage) -> dict:
    raw = re.search(
        r'<script type="application/json" id="attnprobe-data">(.*?)</script>', page.html
    )
    assert raw is not None
    return json.loads(raw[1].replace("<\\/", "</"))


# -- quantisation and packing -----------------------------------------------------------------
def test_quantise_round_trip_is_within_half_a_level():
    x = np.random.default_rng(0).random((5, 64)).astype(np.float32) ** 3
    q, scale = quantise(x, axis=1)
    assert q.dtype == np.uint8 and scale.shape == (5,)
    assert (q.max(axis=1) == 255).all()  # each row's maximum is level 255
    back = dequantise(q, scale[:, None])
    assert np.abs(back - x).max() <= scale.max() / 510 + 1e-7


def test_quantise_keeps_a_zero_map_zero_and_refuses_negative_values():
    q, scale = quantise(np.zeros((3, 3)))
    assert (q == 0).all() and float(scale) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        quantise(np.array([0.5, -0.1]))


def test_signed_quantise_round_trip():
    x = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
    q, scale = quantise_signed(x)
    assert np.abs(dequantise(q, scale, signed=True) - x).max() <= scale / 254 + 1e-6


def test_pack_unpack_round_trip_across_wrapping_deltas():
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, size=(7, 9), dtype=np.uint8) for _ in range(5)]
    frames.append(np.full((7, 9), 255, np.uint8))  # deltas wrap mod 256 both ways
    frames.append(np.zeros((7, 9), np.uint8))
    back = unpack(pack(frames), 63)
    assert all((a.ravel() == b).all() for a, b in zip(frames, back, strict=True))
    with pytest.raises(ValueError, match="frames of 10"):
        unpack(pack(frames), 10)


# -- the data of a real recording -------------------------------------------------------------
def test_data_holds_every_layer_and_step_as_the_maps_say(tiny_run):
    maps, _ = tiny_run
    data = explorer_data(maps)
    assert data["left_out"] == []
    assert [s["index"] for s in data["steps"]] == maps.steps
    assert data["tokens"] == ["<start>", "a", "red", "car", "<end>"]
    assert sorted(map(int, data["cross"])) == maps.recorded_layers("cross")
    assert sorted(map(int, data["self"])) == maps.recorded_layers("self")
    layer, n_tok = 3, len(data["tokens"])
    h, w = maps.resolution(layer)
    entry = data["cross"][str(layer)]
    frames = unpack(entry["blob"], n_tok * h * w)
    for si, step in enumerate(maps.steps):  # token 3 ('car') at every step
        want = maps[layer, step, "cross"][0].float().mean(0)[:, 3].numpy()
        got = dequantise(frames[si].reshape(n_tok, h * w)[3], entry["scales"][si][3])
        assert np.abs(got - want).max() <= want.max() / 510 + 1e-4  # fp16 storage + half a level
    self_entry = data["self"][str(layer)]
    q = h * w
    got = dequantise(unpack(self_entry["blob"], q * q)[1].reshape(q, q), self_entry["scales"][1])
    want = maps[layer, maps.steps[1], "self"][0].float().mean(0).numpy()
    assert np.abs(got - want).max() <= want.max() / 510 + 1e-4


def test_a_short_budget_leaves_out_the_finest_self_layers(tiny_run):
    maps, image = tiny_run
    full = explorer_page(maps, image)
    assert full.left_out == []
    budget = full.nbytes * 2 // 3
    page = explorer_page(maps, image, max_bytes=budget)
    assert page.nbytes <= budget
    data = page_data(page)
    kept = sorted(map(int, data["samples"][0]["self"]))
    dropped = sorted(set(maps.recorded_layers("self")) - set(kept))
    assert kept and dropped, "two thirds of the budget hold some self layers, not all"
    area = {i: np.prod(maps.resolution(i)) for i in maps.recorded_layers("self")}
    assert max(area[i] for i in kept) <= min(area[i] for i in dropped)  # coarsest kept first
    note = next(line for line in page.left_out if line.startswith("self-attention of layers"))
    assert str(dropped) in note and "--max-mb" in note
    assert page.left_out == data["left_out"]  # the page shows the same sentences


def test_steps_are_thinned_when_the_cross_maps_alone_do_not_fit(tiny_run):
    maps, _ = tiny_run
    cross_only = AttentionMaps(
        maps.layers, maps.latent_hw, maps.tokens, maps.timesteps, maps.settings,
        {k: v for k, v in maps.data.items() if k.startswith("cross")},
    )  # fmt: skip
    whole = explorer_data(cross_only)
    size = sum(len(e["blob"]) for e in whole["cross"].values())
    data = explorer_data(cross_only, max_bytes=64_000 + size)  # half of what it needs
    kept = [s["index"] for s in data["steps"]]
    assert len(kept) < len(maps.steps) and kept[-1] == maps.steps[-1]
    assert data["left_out"][0].startswith(f"steps: {len(kept)} of the {len(maps.steps)}")


def test_svd_recording_keeps_components(tiny_pipe):
    maps, image = record_tiny(tiny_pipe, self_reduce="svd:3", steps=2)
    data = page_data(explorer_page(maps, image))
    assert data["self_mode"] == "svd" and data["svd_k"] == 3
    layer = maps.recorded_layers("self")[0]
    entry = data["samples"][0]["self"][str(layer)]
    q = int(np.prod(maps.resolution(layer)))
    frame = unpack(entry["blob"], 2 * q * 3)[0]
    u = dequantise(frame[: q * 3].reshape(q, 3), entry["scales"][0][0], signed=True)
    vt = dequantise(frame[q * 3 :].reshape(3, q), entry["scales"][0][1], signed=True)
    ref_u, ref_s, ref_v = (t[0, 0].float().numpy() for t in maps.svd(layer, maps.steps[0]))
    assert np.allclose(entry["s"][0], ref_s, rtol=1e-3)
    assert np.abs(u - ref_u).max() <= np.abs(ref_u).max() / 254 + 1e-3
    assert np.abs(vt - ref_v.T).max() <= np.abs(ref_v).max() / 254 + 1e-3


def test_a_sample_that_was_not_recorded_is_refused(tiny_run):
    with pytest.raises(ValueError, match="sample 4 was not recorded: this recording has 0-0"):
        explorer_data(tiny_run[0], sample=4)


# -- the page ---------------------------------------------------------------------------------
def test_page_is_self_contained(tiny_run):
    page = explorer_page(*tiny_run)
    text = page.html
    assert "<script src" not in text and "<link" not in text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text)  # no CDN, no fetch
    assert 'src="data:image/png;base64,' in text
    assert "DecompressionStream" in text  # the JavaScript is inline
    data = page_data(page)
    lut = np.frombuffer(base64.b64decode(data["lut"]), np.uint8).reshape(256, 3)
    assert (lut == lut_colours()).all() and len({tuple(c) for c in lut}) == 256  # invertible


def test_explore_shows_the_same_page_inline_in_jupyter(tiny_run, tmp_path):
    maps, image = tiny_run
    page = maps.explore(image)
    assert isinstance(page, ExplorerPage) and "ExplorerPage(" in repr(page)
    frame = page._repr_html_()
    assert frame.startswith("<iframe srcdoc=")
    srcdoc = re.search(r'srcdoc="([^"]*)"', frame)
    assert srcdoc is not None and html.unescape(srcdoc[1]) == page.html
    assert (
        page.save(tmp_path / "p.html").read_text(encoding="utf-8")
        == explorer_page(maps, image).html
    )


def test_cli_view_writes_the_page_of_a_record_folder(tiny_run, tmp_path, capsys):
    maps, image = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    maps.save(run / "maps.safetensors")
    image.save(run / "image.png")
    assert main(["view", str(run), "--out", str(tmp_path / "page.html")]) == 0
    assert "explorer: " in capsys.readouterr().out
    assert 'id="picture"' in (tmp_path / "page.html").read_text(encoding="utf-8")
    assert main(["view", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.html")]) == 2
    assert "is not a recording: pass a folder of `attnprobe record" in capsys.readouterr().err


def test_report_links_a_figure_to_its_explorer_page(tmp_path):
    from matplotlib.figure import Figure

    from editing.experiment.figures import EXPLORER, FigureWriter
    from editing.experiment.report import manifest_figures

    figs = FigureWriter(tmp_path / "figures")
    figs.add(Figure(figsize=(1, 1)), "a.png", "attention", "With maps", "", EXPLORER)
    figs.add(Figure(figsize=(1, 1)), "b.png", "attention", "Without", "")
    figs.close()
    body = manifest_figures(tmp_path, "attention")
    with_maps, without = body.split("</figure>")[:2]
    assert f'<a href="figures/{EXPLORER}"><img alt="With maps"' in with_maps
    assert "Explore these maps" in with_maps and "<a href" not in without


# -- the dataset's probe grid and the sweep's edit grid ---------------------------------------


def probe_results_for(maps, layers=None) -> object:
    """Synthetic probe results over ``maps``' layers and steps (one cell missing, for nan)."""
    from probe.probing.results import ProbeResults, ProbeRow

    layers = layers or maps.recorded_layers("cross")
    rows = []
    for li, layer in enumerate(layers):
        for si, step in enumerate(maps.steps):
            if (li, si) == (0, 1):
                continue
            acc = 0.5 + 0.1 * li + 0.01 * si
            rows.append(ProbeRow(layer, step, float(step), "cross", "linear", acc, 0.0, 0.5,
                                 float("nan"), acc - 0.5, 0.5, 4, 16))  # fmt: skip
    return ProbeResults(rows, "colour")


def test_probe_grid_is_the_results_grid(tiny_run):
    from probe.viz.explorer.grids import probe_grid

    maps, _ = tiny_run
    results = probe_results_for(maps)
    grid = probe_grid(results)
    layers, steps, acc = results.grid("cross")
    cross = grid["kinds"]["cross"]
    assert grid["label"] == "colour" and list(grid["kinds"]) == ["cross"]
    assert cross["layers"] == layers and cross["steps"] == steps
    assert cross["acc"][0][1] is None  # the missing cell: no nan in JSON
    expected = [[None if np.isnan(v) else v for v in row] for row in acc.tolist()]
    assert cross["acc"] == expected and cross["chance"] == 0.5


def test_cli_view_of_a_probed_dataset_adds_its_probe_grid(tiny_pipe, two_colours, tmp_path, capsys):
    from probe.recording.dataset import record_dataset
    from probe.recording.store import AttentionDataset
    from probe.viz.explorer.grids import probe_grid

    ds = tmp_path / "ds"
    record_dataset(tiny_pipe, two_colours, range(2), ds, model="tiny", layers="0,13",
                   num_steps=2, batch_size=8, progress=False)  # fmt: skip
    out = tmp_path / "page.html"
    assert main(["view", str(ds), "--out", str(out)]) == 0
    assert page_data(ExplorerPage(out.read_text(encoding="utf-8")))["probe"] is None
    maps = AttentionDataset(ds).load(0)
    results = probe_results_for(maps)
    results.to_csv(ds / "probe" / "results.csv")
    assert main(["view", str(ds), "--out", str(out)]) == 0
    data = page_data(ExplorerPage(out.read_text(encoding="utf-8")))
    assert data["probe"] == probe_grid(results)
    # every cell names a layer and a step the page's sliders hold
    cross = data["probe"]["kinds"]["cross"]
    assert set(cross["layers"]) <= {entry["index"] for entry in data["layers"]}
    assert set(cross["steps"]) <= {entry["index"] for entry in data["steps"]}
    # probed: one sample of each class of the label, each showing its own label word first
    captions = [s["caption"] for s in data["samples"]]
    assert captions == ["sample 0 · colour=red · a red car (seed 0)",
                        "sample 2 · colour=blue · a blue car (seed 0)"]  # fmt: skip
    assert [s["tokens"][s["token"]] for s in data["samples"]] == ["red", "blue"]
    assert main(["view", str(ds), "--sample", "1", "--out", str(out)]) == 0
    one = page_data(ExplorerPage(out.read_text(encoding="utf-8")))
    assert [s["caption"] for s in one["samples"]] == ["sample 1 · colour=red · a red car (seed 1)"]
    assert main(["view", str(ds), "--sample", "1", "--sample", "4", "--out", str(out)]) == 2
    assert "--sample 4: " in capsys.readouterr().err


def test_samples_share_the_budget_and_the_steps(tiny_pipe):
    from probe.viz.explorer import SampleView, samples_page

    with record_attention(tiny_pipe, self_reduce="full") as maps:
        tiny_pipe(["a red car", "a blue bird"], num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    one = explorer_page(maps, sample=1)
    budget = one.nbytes * 3 // 2  # less than two whole samples
    page = samples_page([SampleView(maps, sample=0), SampleView(maps, sample=1)], max_bytes=budget)
    data = page_data(page)
    assert page.nbytes <= budget
    assert [s["tokens"][2] for s in data["samples"]] == ["red", "blue"]
    assert [s["index"] for s in data["steps"]] == maps.steps  # one set of steps for both
    for sample in data["samples"]:  # each sample's maps are its own
        assert sample["cross"].keys() == page_data(one)["samples"][0]["cross"].keys()
    assert data["samples"][1]["cross"] == page_data(one)["samples"][0]["cross"]
    assert any("the 2 samples share the page's budget" in line for line in page.left_out)
    with pytest.raises(ValueError, match="no samples to show"):
        samples_page([])


def write_sweep(folder, images: bool) -> None:
    from PIL import Image

    from editing.sweep.table import FIELDS, append_rows

    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text('{"model": "toy", "num_steps": 4}')
    rows = []
    for rng, layers in (("none", ""), ("all", "0-15")):
        for seed in (0, 1):
            for target, word in (("a blue car", "blue"), ("a red car", "red")):
                success = rng == "all" and (seed == 0 or word == "blue")
                rows.append({k: "" for k in FIELDS} | {
                    "kind": "self", "range": rng, "layers": layers, "step_fraction": 0.8,
                    "seed": seed, "source": "a green car", "target": target,
                    "target_word": word, "judged": True, "success": success,
                    "iou": 0.9 - 0.1 * seed, "shape_distance": 1.0, "background_psnr": 30.0,
                })  # fmt: skip
    append_rows(folder / "sweep.csv", rows)
    if images:
        (folder / "images" / "source").mkdir(parents=True)
        (folder / "images" / "self_all_0.8").mkdir(parents=True)
        Image.new("RGB", (8, 8), "green").save(folder / "images/source/s0_a_green_car.png")
        Image.new("RGB", (8, 8), "blue").save(
            folder / "images/self_all_0.8/s0_a_green_car_to_blue.png"
        )


def test_sweep_grid_means_over_seeds_and_carries_saved_images(tmp_path):
    from probe.viz.explorer.grids import sweep_grid

    write_sweep(tmp_path / "sweep", images=True)
    grid = sweep_grid(tmp_path / "sweep")
    assert grid["ranges"] == ["self · none · 0.8", "self · all · 0.8"]
    assert grid["pairs"] == ["a green car → a blue car", "a green car → a red car"]
    assert grid["settings"]["model"] == "toy"
    blue, red = grid["cells"]["1,0"], grid["cells"]["1,1"]
    assert blue["success"] == 1.0 and red["success"] == 0.5 and grid["cells"]["0,0"]["success"] == 0
    assert blue["iou"] == pytest.approx(0.85) and blue["seeds"] == 2 and blue["layers"] == "0-15"
    assert [what for what, _ in blue["images"]] == ["source", "edit"]
    assert blue["images"][1][1].startswith("data:image/png;base64,")
    assert "images" not in grid["cells"]["0,0"]  # the sweep saved none for "none"
    assert sweep_grid(tmp_path / "sweep", max_image_bytes=10)["left_out"]


def test_cli_view_of_a_sweep_writes_its_edit_grid(tmp_path, capsys):
    from probe.viz.explorer.grids import sweep_grid

    write_sweep(tmp_path / "sweep", images=False)
    out = tmp_path / "sweep.html"
    assert main(["view", str(tmp_path / "sweep"), "--out", str(out)]) == 0
    assert "explorer: " in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    data = page_data(ExplorerPage(text))
    assert data == json.loads(json.dumps(sweep_grid(tmp_path / "sweep")))
    assert all("images" not in cell for cell in data["cells"].values())
    assert "<script src" not in text and 'id="edit-grid"' in text

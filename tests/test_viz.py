"""Figures: each test checks what a figure shows (peaks, shapes, values), not just that it draws.

Synthetic attention maps are built around a toy-world render's object, so where a heat map
should peak is known exactly. No model is needed except in the toy behaviour test at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from probe.attention.layer_info import LayerInfo
from probe.models import TOY_DIR
from probe.probing.probes import ProbeResults, ProbeRow
from probe.recording.maps import AttentionMaps, tensor_name
from probe.recording.reduce import svd_self
from probe.toy.world.world import Scene, render_scene
from probe.viz import (
    heatmap,
    heatmaps_by_layer,
    heatmaps_by_step,
    image_grid,
    plot_accuracy_by_layer,
    plot_accuracy_by_step,
    plot_accuracy_heatmap,
    self_attention_components,
    svd_components,
    token_heatmap,
    word_heatmaps,
)

TOKENS = ["<|startoftext|>", "a</w>", "red</w>", "car</w>", "<|endoftext|>"]
LATENT = (8, 8)


@pytest.fixture(scope="module")
def render():
    """A red car on the left of a 64x64 image (the object is off-centre on purpose)."""
    return render_scene(Scene("car", "red", "park", x=0.3, y=0.6, scale=0.5))


def layer(index: int, level: int) -> LayerInfo:
    res = (LATENT[0] >> level, LATENT[1] >> level)
    return LayerInfo(index, f"up_blocks.{index}", "up", level, 1, 8, 8, res)


def mask_at(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The object mask averaged down to ``hw`` (its coverage of each cell)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(t, hw)[0, 0].numpy()


def synthetic_maps(mask: np.ndarray, steps=(0, 1, 2)) -> AttentionMaps:
    """Cross maps where 'car' attends to the object and the other tokens spread evenly;
    self maps where object queries attend to object keys and the rest to the rest."""
    layers = [layer(0, 0), layer(1, 1)]
    maps = AttentionMaps(layers=layers, latent_hw=LATENT, tokens=[TOKENS])
    maps.timesteps = {s: 900.0 - 300 * s for s in steps}
    for info in layers:
        hw = info.resolution
        cover = torch.from_numpy(mask_at(mask, hw).reshape(-1))
        q = cover.numel()
        cross = torch.full((q, len(TOKENS)), 1.0 / len(TOKENS))
        cross[:, 3] = cover / cover.sum()
        inside = (cover > 0.5).float()
        block = torch.outer(inside, inside) + torch.outer(1 - inside, 1 - inside)
        selfmap = block / block.sum(dim=1, keepdim=True)
        for s in steps:
            maps.data[tensor_name("cross", info.index, s)] = cross[None, None]
            maps.data[tensor_name("self", info.index, s)] = selfmap[None, None]
    return maps


def peak(ax) -> tuple[int, int]:
    heat = np.asarray(ax.images[1].get_array())
    return np.unravel_index(np.argmax(heat), heat.shape)


def on_object(mask: np.ndarray, ax) -> bool:
    """The heat map's peak lies on the object (its silhouette grown by 2 px: a latent cell is
    8 px, so a peak may fall in a window or between the wheels), and the map is hotter on the
    object than off it."""
    from scipy.ndimage import binary_dilation

    heat = np.asarray(ax.images[1].get_array())
    near = binary_dilation(mask, iterations=2)
    return bool(near[peak(ax)]) and heat[mask].mean() > 2 * heat[~near].mean()


def test_heatmap_peak_lies_on_the_object(render):
    heat = mask_at(render.mask, (8, 8))
    heat = heat + 0.05 * np.random.default_rng(0).random(heat.shape)
    fig = heatmap(render.image, heat, "car")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert np.asarray(ax.images[1].get_array()).shape == render.image.shape[:2]
    assert on_object(render.mask, ax)
    assert ax.get_title() == "car"


def test_heatmap_draws_on_a_given_axes(render):
    fig = Figure()
    ax = fig.add_subplot()
    assert heatmap(render.image, np.eye(4), ax=ax) is fig
    assert len(fig.axes) == 1 and len(ax.images) == 2


def test_heatmap_rejects_a_bad_map(render):
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        heatmap(render.image, np.zeros((2, 3, 4)))


def test_token_heatmap_of_the_object_word_peaks_on_it(render):
    maps = synthetic_maps(render.mask)
    fig = token_heatmap(maps, Image.fromarray(render.image), "car")
    assert on_object(render.mask, fig.axes[0])


def test_word_heatmaps_one_panel_per_word(render):
    maps = synthetic_maps(render.mask)
    fig = word_heatmaps(maps, render.image, ["red", "car"])
    assert [ax.get_title() for ax in fig.axes] == ["image", "red", "car"]
    assert on_object(render.mask, fig.axes[2])
    red = np.asarray(fig.axes[1].images[1].get_array())
    assert red.max() - red.min() < 1e-4  # 'red' attends evenly in these maps


def test_heatmaps_by_layer_titles_and_peaks(render):
    maps = synthetic_maps(render.mask)
    fig = heatmaps_by_layer(maps, render.image, "car")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["L00 8x8", "L01 4x4"]
    for ax in visible:
        assert on_object(render.mask, ax)


def test_heatmaps_by_step_spreads_the_steps(render):
    maps = synthetic_maps(render.mask, steps=range(10))
    fig = heatmaps_by_step(maps, render.image, "car", max_panels=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0].startswith("step 0 (t=900)") and titles[-1].startswith("step 9")
    assert len(titles) == 4
    assert all(on_object(render.mask, ax) for ax in fig.axes if ax.get_visible())


def test_svd_components_have_the_grid_shape_and_find_the_object(render):
    maps = synthetic_maps(render.mask)
    comps, s = svd_components(maps[0, 0, "self"][0], (8, 8), k=3)
    assert comps.shape == (3, 8, 8) and s.shape == (3,)
    inside = mask_at(render.mask, (8, 8)) > 0.5
    first = comps[0].numpy()
    # the top component is constant on the object and constant off it: it draws the silhouette
    assert np.ptp(first[inside]) < 1e-4 and np.ptp(first[~inside]) < 1e-4
    assert abs(first[inside].mean() - first[~inside].mean()) > 0.05


def test_svd_components_reject_a_map_of_another_grid():
    with pytest.raises(ValueError, match="4x4 grid"):
        svd_components(torch.eye(64), (4, 4))


def test_self_attention_components_figure(render):
    maps = synthetic_maps(render.mask)
    fig = self_attention_components(maps, 1, 2, k=4, image=render.image)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes[0].get_title() == "image"
    assert [np.asarray(ax.images[0].get_array()).shape for ax in axes[1:]] == [(4, 4)] * 4
    assert "layer 1 (4x4), step 2" in fig.get_suptitle()


def test_self_attention_components_from_a_stored_svd(render):
    maps = synthetic_maps(render.mask)
    name = tensor_name("self", 0, 0)
    u, s, v = svd_self(maps.data.pop(name).float(), 5)
    maps.data.update({f"{name}/u": u, f"{name}/s": s, f"{name}/v": v})
    fig = self_attention_components(maps, 0, 0, k=3)
    shapes = [np.asarray(ax.images[0].get_array()).shape for ax in fig.axes if ax.get_visible()]
    assert shapes == [(8, 8)] * 3


def probe_results() -> ProbeResults:
    rows = []
    for kind, base in (("cross", 0.9), ("self", 0.3)):
        for layer_id in range(3):
            for step in range(4):
                acc = base - 0.1 * layer_id + 0.01 * step
                rows.append(ProbeRow(layer_id, step, 900.0 - step, kind, "linear", acc, 0.01,
                                     0.1, float("nan"), acc - 0.1, 0.1, 40, 64))  # fmt: skip
    return ProbeResults(rows, "colour")


def test_accuracy_heatmap_shows_the_values():
    results = probe_results()
    fig = plot_accuracy_heatmap(results, "cross")
    shown = np.asarray(fig.axes[0].images[0].get_array())
    _, _, expected = results.grid("cross")
    np.testing.assert_allclose(shown, expected)
    assert shown[0, 3] == pytest.approx(0.93)


def test_accuracy_by_step_curves_are_means_over_layers():
    fig = plot_accuracy_by_step(probe_results(), layers=[0, 1])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["cross: accuracy"].get_ydata(), [0.85, 0.86, 0.87, 0.88])
    np.testing.assert_allclose(lines["self: accuracy"].get_ydata(), [0.25, 0.26, 0.27, 0.28])
    np.testing.assert_allclose(lines["chance"].get_ydata(), [0.1, 0.1])
    with pytest.raises(KeyError, match="layers"):
        plot_accuracy_by_step(probe_results(), layers=[7])


def test_accuracy_by_layer_curve():
    fig = plot_accuracy_by_layer(probe_results())
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["cross: probe accuracy"].get_ydata(), [0.915, 0.815, 0.715])


def test_image_grid_keeps_the_images_and_labels(render):
    red = np.zeros((8, 8, 3), np.uint8) + np.array([255, 0, 0], np.uint8)
    blue = np.zeros((8, 8, 3), np.uint8) + np.array([0, 0, 255], np.uint8)
    fig = image_grid([red, blue, blue, red], ["a", "b", "", ""], ncols=2, row_labels=["x", "y"])
    axes = fig.axes
    np.testing.assert_array_equal(axes[1].images[0].get_array(), blue)
    assert axes[2].get_ylabel() == "y" and axes[1].get_title() == "b"
    with pytest.raises(ValueError, match="3 titles for 4 images"):
        image_grid([red] * 4, ["a", "b", "c"])


def test_image_grid_leaves_missing_cells_empty_and_wraps_long_titles():
    red = np.zeros((8, 8, 3), np.uint8) + np.array([255, 0, 0], np.uint8)
    long = "a photo of a red car parked in the park at noon"
    fig = image_grid([red, None], [long, "gone"], size=1.0)
    assert len(fig.axes[0].images) == 1 and not fig.axes[1].images
    assert fig.axes[0].get_title().replace("\n", " ") == long and "\n" in fig.axes[0].get_title()
    assert fig.axes[1].get_title() == "gone"


def test_toy_sample_grid_is_categories_by_colours():
    from probe.toy.evaluation.evaluate import EvalReport, EvalRow, sample_grid

    prompts = [("red", "car"), ("blue", "car"), ("red", "dog")]
    rows = [EvalRow("t", f"a {c} {k}", 7, c, k, True, c, k) for c, k in prompts]
    images = {(r.prompt, 7): np.full((8, 8, 3), i * 40, np.uint8) for i, r in enumerate(rows)}
    report = EvalReport(rows, {"seeds": [7], "guidance_scale": 4.0})
    axes = sample_grid(report, images).axes
    assert [ax.get_title() for ax in axes] == ["red", "blue", "", ""]
    assert [axes[0].get_ylabel(), axes[2].get_ylabel()] == ["car", "dog"]
    assert not axes[3].images and axes[2].images[0].get_array()[0, 0, 0] == 80  # no blue dog


def test_edit_grid_rows_are_methods_and_columns_prompts():
    from editing.editor import EditResult
    from editing.experiment.edit_figures import edit_grid

    def solid(rgb):
        return Image.new("RGB", (8, 8), rgb)

    settings = {"source": "a red car", "targets": ["a blue car"]}
    plain = EditResult(solid((255, 0, 0)), [solid((0, 0, 255))], settings)
    fpe = EditResult(solid((255, 0, 0)), [solid((0, 255, 0))], settings)
    fig = edit_grid({"none": plain, "fpe": fpe})
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["a red car", "a blue car", "", ""]
    assert [axes[0].get_ylabel(), axes[2].get_ylabel()] == ["none", "fpe"]
    np.testing.assert_array_equal(axes[3].images[0].get_array()[0, 0], [0, 255, 0])
    two = EditResult(solid((0, 0, 0)), [solid((0, 0, 0))] * 2, settings)
    with pytest.raises(ValueError, match="different numbers of targets"):
        edit_grid([plain, two])


def test_sweep_tradeoff_places_each_range():
    from editing.experiment.edit_figures import sweep_tradeoff

    summary = [
        {"kind": "self", "range": name, "group": "preset", "layers": "", "step_fraction": 0.8,
         "n": 4.0, "success": succ, "iou": iou}
        for name, succ, iou in (("none", 1.0, 0.2), ("fpe", 0.9, 0.8), ("all", 0.1, 0.95))
    ]  # fmt: skip
    fig = sweep_tradeoff(summary)
    points = np.vstack([c.get_offsets() for c in fig.axes[0].collections])
    np.testing.assert_allclose(points, [[1.0, 0.2], [0.9, 0.8], [0.1, 0.95]])
    assert {t.get_text() for t in fig.axes[0].texts} == {"none", "fpe", "all"}


@pytest.mark.slow
@pytest.mark.skipif(
    not (TOY_DIR / "model_index.json").is_file(), reason="toy weights not in probe/toy/models/toy_v1"
)
def test_toy_car_heatmap_peaks_on_the_drawn_car():
    from probe.models import load_pipeline
    from probe.recording.recorder import record_attention
    from probe.toy.judges.judge import find_object

    pipe = load_pipeline("toy")
    with record_attention(pipe, kinds=("cross",)) as maps:
        image = pipe("a red car", generator=torch.Generator().manual_seed(0)).images[0]
    mask = np.asarray(find_object(image), dtype=bool)
    assert mask.any()
    fig = token_heatmap(maps, image, "car", layers=maps.recorded_layers("cross"))
    heat = np.asarray(fig.axes[0].images[1].get_array())
    assert heat[mask].mean() > heat[~mask].mean()

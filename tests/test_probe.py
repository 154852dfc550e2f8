"""Features, probes with controls, layer selection and the probe/select commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from probe.attention.layers import resolve_layers
from probe.probing.features import FeatureOptions, FeatureSet, build_features, synthetic_features
from probe.probing.probes import ProbeConfig, ProbeResults, ProbeRow, cross_validate, run_probes
from probe.probing.selection import LayerSelection, select_layers
from probe.recording.dataset import record_dataset
from probe.recording.random_control import random_init_like
from probe.recording.store import AttentionDataset
from probe.viz.probe_figures import plot_accuracy_by_layer, plot_accuracy_heatmap

SMALL = {"layers": "0,3,6,13", "num_steps": 2, "batch_size": 8, "progress": False}


@pytest.fixture(scope="module")
def small_dataset(tiny_pipe, two_colours, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    record_dataset(tiny_pipe, two_colours, range(4), out, model="tiny", **SMALL)
    return AttentionDataset(out)


def test_probe_on_separable_data_near_one_and_shuffled_near_chance():
    X, y = synthetic_features(30, 10, 64, separation=8.0)
    assert cross_validate(X, y, ProbeConfig()).mean() >= 0.95
    assert cross_validate(X, y, ProbeConfig("mlp", hidden=32, max_iter=300)).mean() >= 0.95
    feats = FeatureSet("colour", [str(i) for i in range(10)], y, {(0, 0, "cross"): X})
    row = run_probes(feats, progress=False).rows[0]
    assert row.acc_mean >= 0.95 and abs(row.shuffled_acc - 0.1) <= 0.1
    assert row.selectivity == pytest.approx(row.acc_mean - row.shuffled_acc)
    assert math.isnan(row.random_model_acc)
    noise = np.random.default_rng(1).normal(size=X.shape).astype(np.float32)
    assert abs(cross_validate(noise, y, ProbeConfig()).mean() - 0.1) <= 0.1


def test_seed_groups_prevent_matching_samples_by_their_noise():
    rng = np.random.default_rng(0)
    seeds, y = np.repeat(np.arange(32), 10), np.tile(np.arange(10), 32)
    X = (rng.normal(size=(32, 16))[seeds] + 0.01 * rng.normal(size=(320, 16))).astype(np.float32)
    mixed = cross_validate(X, y, ProbeConfig()).mean()  # the seed's other prompts are in train
    held_out = cross_validate(X, y, ProbeConfig(), groups=seeds).mean()
    assert mixed < 0.05 and abs(held_out - 0.1) <= 0.05


def test_too_few_samples_per_class_is_explained():
    with pytest.raises(ValueError, match="more --seeds"):
        cross_validate(np.zeros((3, 2)), np.array([0, 0, 1]), ProbeConfig())


def test_features_shapes_and_options(small_dataset):
    feats = build_features(small_dataset, "colour", progress=False)
    assert feats.classes == ["red", "blue"] and feats.y.tolist() == [0] * 4 + [1] * 4
    assert len(feats.X) == 4 * 2 * 2
    assert feats[13, 1, "cross"][0].shape == (8, 64)  # 8x8 map of the word 'red'/'blue'
    assert feats[3, 0, "cross"][0].shape == (8, 16)  # 4x4
    assert feats[13, 0, "self"][0].shape == (8, 64 * 8)  # whole map → top-8 SVD components
    assert feats[6, 0, "self"][0].shape == (8, 1)
    resized = build_features(small_dataset, "colour", kinds=["cross"], progress=False,
                             options=FeatureOptions(size=(8, 8)))  # fmt: skip
    assert {x.shape for x in resized.X.values()} == {(8, 64)}
    pooled = build_features(small_dataset, "colour", layers=[13], kinds=["self"], progress=False,
                            options=FeatureOptions(self_features="pool:2"))  # fmt: skip
    assert pooled[13, 0, "self"][0].shape == (8, 16)
    maps = small_dataset.load(4)
    word_map = maps.cross(13, 1)[0, ..., maps.word_positions("blue")].mean(-1).reshape(-1)
    assert np.allclose(feats[13, 1, "cross"][0][4], word_map.numpy())
    with pytest.raises(KeyError, match="--label"):
        build_features(small_dataset, "animal", progress=False)


def test_svd_recorded_dataset_features(tiny_pipe, two_colours, tmp_path):
    record_dataset(tiny_pipe, two_colours, range(2), tmp_path / "svd", model="tiny",
                   self_reduce="svd:4", kinds=["self"], **SMALL)  # fmt: skip
    feats = build_features(AttentionDataset(tmp_path / "svd"), "colour", progress=False)
    assert feats[13, 0, "self"][0].shape == (4, 64 * 4)


def test_random_init_like_same_architecture_new_weights(tiny_pipe):
    a, b = random_init_like(tiny_pipe, seed=3), random_init_like(tiny_pipe, seed=3)
    w0 = tiny_pipe.unet.conv_in.weight
    assert a.unet.conv_in.weight.shape == w0.shape and not torch.equal(a.unet.conv_in.weight, w0)
    assert torch.equal(a.unet.conv_in.weight, b.unet.conv_in.weight)
    assert a.tokenizer is tiny_pipe.tokenizer and a.vae is tiny_pipe.vae
    with pytest.raises(ValueError, match="does not exist"):
        random_init_like(tiny_pipe, parts=["transformer"])


def test_probe_results_csv_round_trip_and_plots(small_dataset, tmp_path):
    feats = build_features(small_dataset, "colour", progress=False)
    results = run_probes(feats, ProbeConfig(folds=2), control=feats, progress=False)
    assert len(results) == 16 and all(0 <= r.random_model_acc <= 1 for r in results.rows)
    back = ProbeResults.from_csv(results.to_csv(tmp_path / "r.csv"))
    assert back.rows == results.rows and back.label == "colour"
    layers, steps, grid = results.grid("self")
    assert layers == [0, 3, 6, 13] and steps == [0, 1] and grid.shape == (4, 2)
    fig = plot_accuracy_heatmap(results, "cross")
    assert isinstance(fig, Figure)
    ax = Figure().add_subplot()
    assert plot_accuracy_by_layer(results, ax=ax) is ax.figure


def _results(self_sel: list[float]) -> ProbeResults:
    rows = []
    for layer, sel in enumerate(self_sel):
        for step in range(5):
            for kind, s in (("self", sel), ("cross", 0.8)):
                acc = 0.1 + s
                rows.append(ProbeRow(layer, step, 999.0 - step, kind, "linear", acc, 0.01, 0.1,
                                     math.nan, s, 0.1, 320, 64))  # fmt: skip
    return ProbeResults(rows, "colour")


def test_select_rules_and_round_trip_through_resolve_layers(tiny_pipe, tmp_path):
    leak = [0.5, 0.4, 0.05, 0.0, 0.02, 0.0, 0.03, 0.0, 0.01, 0.2, 0.0, 0.0, 0.3, 0.6, 0.6, 0.7]
    sel = select_layers(_results(leak), model="tiny")
    assert sel.layers == list(range(2, 9)) and sel.rule == "low-leak"
    assert sel.evidence["per_layer"]["3"]["self_selectivity"] == 0.0
    path = sel.save(tmp_path / "layers.json")
    assert json.loads(path.read_text())["layers"] == list(range(2, 9))
    assert resolve_layers(tiny_pipe.unet, str(path)) == sel.layers
    assert LayerSelection.load(path).layers == sel.layers
    structure = select_layers(_results(leak), rule="structure", threshold=0.2)
    assert structure.layers == [12, 13, 14, 15]
    assert select_layers(_results(leak), within=range(9, 16)).layers == [10, 11]
    with pytest.raises(ValueError, match="--threshold"):
        select_layers(_results([0.9] * 16))


def test_layer_scores_count_steps_by_the_one_step_fraction_rule():
    from probe.probing.selection import layer_scores

    rows = [ProbeRow(0, step, 999.0 - step, "self", "linear", 0.5, 0.01, 0.1, math.nan,
                     float(step), 0.1, 320, 64) for step in range(5)]  # fmt: skip
    results = ProbeResults(rows, "colour")
    # int(0.5 * 5) = 2 steps (0, 1), floored as fraction_steps and the official code floor it
    assert layer_scores(results, "self", "selectivity", 0.5) == {0: 0.5}
    assert layer_scores(results, "self", "selectivity", 0.8) == {0: 1.5}  # 4 steps, not 5
    with pytest.raises(ValueError, match="covers no step of the 5 probed"):
        layer_scores(results, "self", "selectivity", 0.1)


def test_record_probe_select_commands(two_colours, tmp_path, capsys):
    from probe.cli.main import main

    data = tmp_path / "ds"
    args = ["record", "--model", "tiny", "--template", str(two_colours.path), "--seeds", "0-3",
            "--num-steps", "2", "--layers", "3,13", "--out", str(data)]  # fmt: skip
    assert main(args) == 0
    assert "8 samples recorded" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 samples recorded, 8 already there" in capsys.readouterr().out
    assert main(["probe", "--data", str(data), "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "8 cells probed" in out
    for name in ("results.csv", "heatmap_cross.png", "heatmap_self.png", "accuracy_by_layer.png"):
        assert (data / "probe" / name).is_file()
    head = (data / "probe" / "results.csv").read_text().splitlines()[0]
    assert "layer,step,timestep,kind,probe,acc_mean,acc_std,shuffled_acc,random_model_acc" in head
    code = main(["select", "--probe", str(data / "probe"), "--out", str(tmp_path / "l.json"),
                 "--threshold", "1.0", "--within", "res<max"])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "l.json").read_text())["layers"] == [3]
    assert main(["probe", "--data", str(tmp_path / "nothing")]) == 2
    assert "no index.jsonl" in capsys.readouterr().err

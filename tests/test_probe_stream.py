"""Streaming probes: a dataset probed a group of layers at a time gives the in-memory results."""

from __future__ import annotations

import math

import pytest

from probe.cli.main import main
from probe.probing.features import build_features
from probe.probing.probes import ProbeConfig, ProbeResults, run_probes
from probe.probing.stream import plan_features, probe_dataset
from probe.recording.dataset import record_dataset
from probe.recording.maps import AttentionMaps, tensor_layer
from probe.recording.store import AttentionDataset, CorruptSampleError

SMALL = {"layers": "0,3,6,13", "num_steps": 2, "batch_size": 8, "progress": False}
CONFIG = ProbeConfig(folds=2, max_iter=50)


@pytest.fixture(scope="module")
def dataset(tiny_pipe, two_colours, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "ds"
    record_dataset(tiny_pipe, two_colours, range(4), out, model="tiny", **SMALL)
    return AttentionDataset(out)


def _rows(results: ProbeResults) -> list[tuple]:
    return [(r.layer, r.step, r.kind, r.acc_mean, r.acc_std, r.shuffled_acc) for r in results.rows]


def test_partial_load_reads_only_the_layers_asked(dataset):
    whole = dataset.load(0)
    part = dataset.load(0, layers=[3])
    assert part.data and {tensor_layer(k) for k in part.data} == {3}
    for name, tensor in part.data.items():
        assert tensor.equal(whole.data[name])
    assert part.layers == whole.layers and part.tokens == whole.tokens
    assert tensor_layer("self/L13/S001/u") == 13 and tensor_layer("other") is None


def test_streamed_results_equal_the_in_memory_ones(dataset):
    plan = plan_features(dataset, "colour")
    feats = build_features(dataset, "colour", progress=False)
    assert plan.total == sum(x.nbytes for x in feats.X.values())
    whole = run_probes(feats, CONFIG, progress=False)
    budget = max(plan.layer_bytes.values())  # one layer per group at most
    assert len(plan.groups(budget)) >= 3
    streamed = probe_dataset(dataset, "colour", CONFIG, memory=budget, progress=False)
    assert _rows(streamed) == _rows(whole)
    assert streamed.layer_table == whole.layer_table


def test_streamed_with_control_equals_in_memory(dataset):
    feats = build_features(dataset, "colour", progress=False)
    whole = run_probes(feats, CONFIG, feats, progress=False)
    budget = 2 * max(plan_features(dataset, "colour").layer_bytes.values())
    streamed = probe_dataset(dataset, "colour", CONFIG, dataset, memory=budget, progress=False)
    assert [r.random_model_acc for r in streamed.rows] == [r.random_model_acc for r in whole.rows]
    assert not any(math.isnan(r.random_model_acc) for r in streamed.rows)


def test_a_layer_larger_than_the_budget_is_refused_with_the_way_out(dataset):
    with pytest.raises(MemoryError, match="layer 0 take .* --memory"):
        probe_dataset(dataset, "colour", CONFIG, memory=1000, progress=False)


def test_streaming_verifies_every_file_first(dataset, tmp_path):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset.root, copy)
    data = AttentionDataset(copy)
    path = copy / data.entries[2]["file"]
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # inside the tensor data: only the checksum sees it
    path.write_bytes(bytes(raw))
    AttentionMaps.load(path, layers=[13])  # the partial read alone does not notice
    budget = max(plan_features(data, "colour").layer_bytes.values())
    with pytest.raises(CorruptSampleError, match="do not verify .* rerun the same"):
        probe_dataset(data, "colour", CONFIG, memory=budget, progress=False)


def test_cli_memory_option_streams_and_writes_the_same_csv(dataset, tmp_path, capsys):
    common = ["probe", "--data", str(dataset.root), "--folds", "2"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    memory = str(max(plan_features(dataset, "colour").layer_bytes.values()))
    assert main([*common, "--out", str(tmp_path / "b"), "--memory", memory]) == 0
    assert "a group of layers at a time" in capsys.readouterr().out
    a = (tmp_path / "a" / "results.csv").read_text()
    assert a == (tmp_path / "b" / "results.csv").read_text()


def test_cell_blocks_keep_the_batched_fit_within_its_memory():
    import numpy as np

    from probe.probing.features import FeatureSet
    from probe.probing.probes import BLOCK_BYTES, CELL_BLOCK, cell_blocks

    def blocks(n: int, d: int, cells: int = 160) -> list[list]:
        X = {(i, 0, "cross"): np.zeros((n, d), np.float32) for i in range(cells)}
        feats = FeatureSet("colour", ["a", "b"], np.zeros(n, int), X)
        return cell_blocks(list(X), feats, ProbeConfig(folds=3), control=True)

    demo = blocks(80, 2048)  # the demo's grid: whole blocks
    assert [len(b) for b in demo] == [CELL_BLOCK, CELL_BLOCK, 160 - 2 * CELL_BLOCK]
    big = blocks(10_000, 2048)  # 10,000 samples: a cell's folds take ~1.5 GiB of rows
    assert all(len(b) == 1 for b in big) and len(big) == 160
    mid = blocks(2000, 256)
    per_cell = 2000 * 2 * 3 * 256 * 16
    assert max(len(b) for b in mid) == int(BLOCK_BYTES // per_cell)
    assert sorted(k for b in mid for k in b) == sorted(k for b in demo for k in b)


def test_cell_blocks_group_cells_of_one_width():
    import numpy as np

    from probe.probing.features import FeatureSet
    from probe.probing.probes import cell_blocks

    dims = [256, 2048, 256, 2048, 64, 512, 64, 512, 16, 128]
    X = {(i, 0, "cross"): np.zeros((10_000, d), np.float32) for i, d in enumerate(dims)}
    feats = FeatureSet("colour", ["a", "b"], np.zeros(10_000, int), X)
    blocks = cell_blocks(list(X), feats, ProbeConfig(folds=2), control=False)
    widths = [[X[k].shape[1] for k in b] for b in blocks]
    assert [w for b in widths for w in b] == sorted(dims)  # narrowest first
    for b in widths:  # padded to the widest: every block within the budget
        assert len(b) * 10_000 * 2 * max(b) * 16 <= 2**30 or len(b) == 1

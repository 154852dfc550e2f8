"""attnprobe segment-score (probe.scoring.heatmap_scores): the map extraction on hand cases, the
report's table, and the command end to end on toy-flux (cross and concept maps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probe.attention.layer_info import LayerInfo
from probe.recording.maps import AttentionMaps
from probe.scoring.heatmap_scores import SegmentReport, heatmaps_of
from probe.scoring.segmentation import segment_scores


def _layer(index: int, level: int) -> LayerInfo:
    side = 4 >> level
    return LayerInfo(index=index, name=f"transformer_blocks.{index}", place="joint", level=level,
                     heads=1, channels=8, cross_dim=8, resolution=(side, side))  # fmt: skip


def _hand_maps() -> AttentionMaps:
    """Two layers (2x2 and 4x4), two steps, tokens [a, red, car, </s>]."""
    maps = AttentionMaps(layers=[_layer(0, 1), _layer(1, 0)], latent_hw=(4, 4))
    maps.tokens = [["▁a", "▁red", "▁car", "</s>"]]
    for step in (0, 1):
        small = torch.zeros(1, 1, 4, 4)
        small[0, 0, :, 2] = torch.tensor([1.0, 0, 0, 0]) * (step + 1)  # "car": top left
        big = torch.zeros(1, 1, 16, 4)
        big[0, 0, :, 2] = torch.arange(16.0)
        maps.data[f"cross/L00/S{step:03d}"] = small
        maps.data[f"cross/L01/S{step:03d}"] = big
    concepts = torch.zeros(1, 2, 4)
    concepts[0, 0] = torch.tensor([0.9, 0.1, 0.1, 0.1])
    concepts[0, 1] = 1 - concepts[0, 0]
    maps.data["concept/L00/S000"] = concepts
    maps.settings["concepts"] = ["car", "park"]
    return maps


def test_heatmaps_of_reads_each_kind_by_hand():
    maps = _hand_maps()
    got = heatmaps_of(maps, "car", concepts=maps)
    assert set(got) == {"cross/all", "cross/L00", "cross/L01", "concept/all", "concept/L00"}
    # one layer: the mean over the steps, at its own resolution
    torch.testing.assert_close(got["cross/L00"], torch.tensor([[1.5, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(got["cross/L01"], torch.arange(16.0).reshape(4, 4))
    # all layers: each upsampled bilinearly to 4x4, then the mean (DAAM's way)
    assert got["cross/all"].shape == (4, 4)
    assert got["cross/all"][3, 3] == pytest.approx((0 + 15) / 2)
    torch.testing.assert_close(got["concept/L00"], torch.tensor([[0.9, 0.1], [0.1, 0.1]]))
    torch.testing.assert_close(got["concept/all"], got["concept/L00"])


def test_report_table_and_best_layer():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    good = segment_scores(np.array([[1.0, 0.0], [0.0, 0.0]]), mask)
    bad = segment_scores(np.array([[0.0, 1.0], [1.0, 1.0]]), mask)
    report = SegmentReport(scores={"cross/all": [good], "cross/L00": [bad], "cross/L03": [good]})
    assert report.best_layer("cross") == "cross/L03"
    rows = dict(report.rows())
    assert rows["cross/all"]["miou"] == 1.0
    assert "cross/L03 (best layer)" in rows
    assert "| cross/all | 1 | 1.000 | 1.000 | 1.000 |" in report.markdown()


@pytest.mark.slow
def test_segment_score_command_on_toy_flux(tmp_path):
    from probe.cli.main import main

    out = tmp_path / "seg"
    assert main(["segment-score", "--model", "toy-flux", "--prompts", "2", "--steps", "4",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    data = json.loads((out / "segment.json").read_text())
    kinds = set(data["summary"])
    assert {"cross/all", "concept/all", "cross/L00", "cross/L11", "concept/L03"} <= kinds
    assert "concept/L04" not in kinds  # single-stream blocks carry no concepts
    assert data["settings"]["num_inference_steps"] == 4
    assert len(data["images"]) == 2
    assert "| concept/all |" in (out / "segment.md").read_text()

"""Layers from a measured leak: the one-layer sweep's verdicts, the selection and its CLI."""

from __future__ import annotations

import json
import math

import pytest

from editing.sweep.leaks import layer_leaks, select_from_sweep
from editing.sweep.table import FIELDS
from probe.attention.layers import resolve_layers
from probe.cli.main import main
from probe.models import layer_table


def rows_of(shifts: dict[str, float], success: dict[str, float] | None = None) -> list[dict]:
    """Ten edits per range: the given mean shift, and the given share of successes."""
    out = []
    for name, shift in shifts.items():
        ok = round(10 * (success or {}).get(name, 1.0))
        for k in range(10):
            out.append({"kind": "self", "range": name, "group": "custom", "layers": name,
                        "step_fraction": 1.0, "success": k < ok, "source_shift": shift,
                        "iou": 0.7})  # fmt: skip
    return out


def test_a_layer_leaks_by_shift_or_by_failures():
    rows = rows_of({"none": -0.01, "0": -0.005, "1": 0.03, "2": -0.01}, {"2": 0.8})
    leaks = layer_leaks(rows)
    assert [leaks[i]["leaks"] for i in (0, 1, 2)] == [False, True, True]
    assert leaks[1]["shift_excess"] == pytest.approx(0.04) and leaks[2]["success_drop"] == 0.2
    assert not layer_leaks(rows, shift_tolerance=0.05, success_tolerance=0.3)[1]["leaks"]
    no_shift = rows_of({"none": math.nan, "0": math.nan})  # e.g. category edits: success only
    assert layer_leaks(no_shift)[0] == {"shift_excess": None, "success_drop": 0.0, "leaks": False}


def test_selection_leaves_the_leaking_layers_out_of_the_base():
    rows = rows_of({"none": 0.0, **{str(i): 0.0 for i in range(16)}, "11": 0.04, "12": 0.03})
    rows += [dict(r, range="fpe", layers="2,3,4,5,6,7,8,9,10,11,12") for r in rows_of({"x": 0})]
    sel = select_from_sweep(rows, base="fpe", model="toy")
    assert sel.layers == list(range(2, 11)) and sel.rule == "measured-leak"
    assert sel.evidence["left_out"] == [11, 12] and sel.evidence["per_layer"]["11"]["leaks"]
    assert select_from_sweep(rows, base="10-13").layers == [10, 13]
    assert select_from_sweep(rows, base=[0, 11]).layers == [0]
    assert select_from_sweep(rows, base="paper", table=layer_table("tiny")).layers == [
        4, 5, 6, 7, 8, 9, 10, 13, 14]  # fmt: skip
    with pytest.raises(ValueError, match="base 'paper' is neither a range of this sweep"):
        select_from_sweep(rows, base="paper")
    with pytest.raises(ValueError, match="every layer of the base range \\[11, 12\\] leaks"):
        select_from_sweep(rows, base="11-12")
    with pytest.raises(ValueError, match="layers \\[16\\] of the base range were not swept"):
        select_from_sweep(rows, base="15-16")
    with pytest.raises(ValueError, match="'none' range and one layer per range"):
        select_from_sweep(rows_of({"fpe": 0.0}))


def test_layer_table_reads_the_config_without_weights(tmp_path):
    from pathlib import Path

    assert resolve_layers(layer_table("toy"), "fpe") == list(range(2, 13))
    sd15 = tmp_path / "sd15"  # the SD 1.5 UNet config only: no weights on disk at all
    (sd15 / "unet").mkdir(parents=True)
    config = Path(__file__).parent / "replicas" / "sd15" / "unet" / "config.json"
    (sd15 / "unet" / "config.json").write_text(config.read_text())
    (sd15 / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    table = layer_table(sd15)
    assert [t.resolution[0] for t in table] == [64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64]  # fmt: skip
    assert resolve_layers(table, "fpe") == list(range(2, 13))
    assert len(layer_table("tiny")) == 16
    with pytest.raises(FileNotFoundError):
        layer_table("/no/such/model")


def test_cli_select_from_sweep(tmp_path, capsys):
    import csv

    folder = tmp_path / "sw"
    folder.mkdir()
    rows = rows_of({"none": 0.0, **{str(i): 0.0 for i in range(16)}, "3": 0.05})
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "seed": 0, "source": "a red car", "target": f"t{len(r)}",
                             "slot": "colour", "target_word": "blue", "judged": "blue",
                             "source_found": True, "edit_found": True, "shape_distance": 0.1,
                             "background_psnr": 30.0, "background_diff": 1.0})  # fmt: skip
    (folder / "sweep.json").write_text(json.dumps({"model": "toy"}))
    out = tmp_path / "layers.json"
    assert main(["select-from-sweep", "--sweep", str(folder), "--out", str(out)]) == 0
    assert "without the leaking layers [3]" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["layers"] == [2, *range(4, 13)] and saved["model"] == "toy"
    assert main(["select-from-sweep", "--sweep", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "run `attnprobe sweep --kinds self" in capsys.readouterr().err

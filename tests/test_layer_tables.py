"""One layer table per run: built at the latent size generated, carried by every artefact.

The tiny model's own size is 64 px (8x8 latents), where every layer is at most 8x8. At 128 px
(16x16 latents) layers 0, 1 and 13-15 are 16x16, so ``res<=8`` picks 2-12 only if the rule is
resolved at the size actually generated.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from editing import edit
from editing.experiment.reproduction import ReproduceConfig, Reproduction
from editing.methods.replace import SelfAttentionReplace
from editing.sweep.run import LAYER_TABLE, sweep
from editing.sweep.table import FIELDS
from probe.attention.hooks import AttentionHooks
from probe.attention.layer_files import (
    layers_from_json,
    layers_to_json,
    load_layer_table,
    save_layer_table,
)
from probe.attention.layer_info import LayerInfo, table_at
from probe.attention.layers import resolve_layers
from probe.cli.main import main
from probe.models import layer_table, run_layer_table
from probe.probing.features import build_features
from probe.probing.probes import ProbeConfig, ProbeResults, ProbeRow, run_probes
from probe.probing.selection import LayerSelection, select_layers
from probe.prompts.templates import load_edit_pairs
from probe.recording.dataset import record_dataset
from probe.recording.maps import AttentionMaps
from probe.recording.recorder import BudgetError, record_attention
from probe.recording.store import AttentionDataset
from tests.conftest import generate

RES8_AT_128PX = list(range(2, 13))
ALL = list(range(16))


class Spy(SelfAttentionReplace):
    """FPE that notes (layer, the layer's resolution in its table, the call's query map)."""

    def __init__(self, layers: str) -> None:
        super().__init__(layers, 1.0)
        self.seen: set[tuple[int, tuple[int, int], tuple[int, int]]] = set()

    def edit_qkv(self, call, q, k, v):
        self.seen.add((call.layer.index, call.layer.resolution, call.query_hw))
        return super().edit_qkv(call, q, k, v)


@pytest.fixture(scope="module")
def big_dataset(tiny_pipe, two_colours, tmp_path_factory):
    """Layers 12 (8x8) and 13 (16x16) recorded at 128 px."""
    out = tmp_path_factory.mktemp("data") / "ds128"
    record_dataset(tiny_pipe, two_colours, range(4), out, model="tiny", layers="12,13",
                   num_steps=2, height=128, width=128, progress=False)  # fmt: skip
    return AttentionDataset(out)


def test_a_table_at_another_size_and_its_json(tmp_path):
    table = layer_table("tiny")
    wide = table_at(table, (16, 8))
    assert [layer.resolution for layer in wide][:3] == [(16, 8), (16, 8), (8, 4)]
    assert [layer.name for layer in wide] == [layer.name for layer in table]
    assert layers_from_json(json.loads(json.dumps(layers_to_json(wide)))) == wide
    assert load_layer_table(save_layer_table(tmp_path / "t.json", wide)) == wide
    with pytest.raises(ValueError, match="lacks"):
        LayerInfo.from_json({"index": 0})
    with pytest.raises(ValueError, match="not a layer table"):
        load_layer_table(tmp_path / "missing.json")


def test_tables_without_a_run_at_a_pixel_size(tiny_pipe, capsys):
    assert resolve_layers(layer_table("tiny"), "res<=8") == ALL
    assert resolve_layers(layer_table("tiny", 128, 128), "res<=8") == RES8_AT_128PX
    assert run_layer_table(tiny_pipe, 128, 128) == layer_table("tiny", 128, 128)
    assert run_layer_table(tiny_pipe) == layer_table("tiny")
    assert main(["layers", "--model", "tiny", "--height", "128", "--spec", "res<=8"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [int(r.split()[0]) for r in rows] == RES8_AT_128PX
    assert "16x16" not in "".join(rows) and rows[0].split()[3] == "8x8"


def test_recorder_resolves_rules_at_the_generated_size(tiny_pipe):
    with record_attention(tiny_pipe, layers="res<=8", kinds=("cross",)) as maps:
        generate(tiny_pipe, steps=2, height=128, width=128)
    assert maps.recorded_layers("cross") == RES8_AT_128PX
    assert maps.latent_hw == (16, 16) and maps.layers[0].resolution == (16, 16)
    assert all(maps.layers[i].resolution == maps.resolution(i) for i in ALL)
    with record_attention(tiny_pipe, layers="res<=8", kinds=("cross",)) as maps:
        generate(tiny_pipe, steps=2)  # the model's own 64 px: every layer is at most 8x8
    assert maps.recorded_layers("cross") == ALL


def test_the_memory_plan_before_the_first_step_counts_the_generated_size(tiny_pipe):
    with pytest.raises(BudgetError, match="for 11 layers x 2 steps"):
        with record_attention(tiny_pipe, layers="res<=8", self_reduce="full", budget_bytes=1000):
            generate(tiny_pipe, steps=2, height=128, width=128)


def test_dataset_resolves_its_layers_at_its_size(big_dataset, tiny_pipe, two_colours, tmp_path):
    record_dataset(tiny_pipe, two_colours, range(1), tmp_path / "ds", model="tiny",
                   layers="res<=8", kinds=["cross"], num_steps=2, height=128, width=128,
                   progress=False)  # fmt: skip
    data = AttentionDataset(tmp_path / "ds")
    assert data.meta["layers"] == RES8_AT_128PX and data.meta["latent_hw"] == [16, 16]
    maps = data.load(0)
    assert maps.recorded_layers() == RES8_AT_128PX and maps.layers[0].resolution == (16, 16)
    assert big_dataset.load(0).layers[13].resolution == (16, 16)


def test_an_editor_resolves_rules_at_the_edit_size(tiny_pipe):
    spy = Spy("res<=8")
    result = edit(tiny_pipe, "a red car", ["a blue car"], controllers=[spy], num_steps=2,
                  height=128, width=128)  # fmt: skip
    assert result.targets[0].size == (128, 128) and result.settings["height"] == 128
    assert sorted(spy.layers or ()) == RES8_AT_128PX
    assert sorted({index for index, _, _ in spy.seen}) == RES8_AT_128PX
    assert all(res == hw for _, res, hw in spy.seen)  # the processors hold the run's table
    spy.seen.clear()
    edit(tiny_pipe, "a red car", ["a blue car"], controllers=[spy], num_steps=2)  # 64 px
    assert sorted(spy.layers or ()) == ALL and {i for i, _, _ in spy.seen} == set(ALL)


def test_hooks_take_the_table_of_the_first_unet_call(tiny_pipe):
    assert AttentionHooks(tiny_pipe, latent_hw=(16, 8)).layers[0].resolution == (16, 8)
    spy = Spy("res<=8")
    hooks = AttentionHooks(tiny_pipe, [spy])
    assert hooks.layers[0].resolution == (8, 8)  # the UNet's sample_size until it runs
    with hooks:
        generate(tiny_pipe, steps=2, height=128, width=64)
    assert hooks.layers[0].resolution == (16, 8) and hooks.latent_hw == (16, 8)
    assert sorted(spy.layers or ()) == RES8_AT_128PX
    assert all(res == hw for _, res, hw in spy.seen)


def test_maps_of_an_older_file_get_the_table_of_their_size(tmp_path):
    old = AttentionMaps(layers=layer_table("tiny"), latent_hw=(16, 16))  # table at sample_size
    back = AttentionMaps.load(old.save(tmp_path / "m.safetensors"))
    assert back.layers == layer_table("tiny", 128, 128)


def test_probe_results_and_selections_carry_the_table(big_dataset, tmp_path):
    feats = build_features(big_dataset, "colour", progress=False)
    results = run_probes(feats, ProbeConfig(folds=2), progress=False)
    table = big_dataset.load(0).layers
    assert results.layer_table == table and table[13].resolution == (16, 16)
    csv_path = results.to_csv(tmp_path / "p" / "results.csv")
    assert load_layer_table(tmp_path / "p" / "results.layers.json") == table
    back = ProbeResults.from_csv(csv_path)
    assert back.layer_table == table and len(back.rows) == len(results.rows) == 8
    assert select_layers(back, threshold=1.0).layers == [12, 13]
    sel = select_layers(back, threshold=1.0, within="res<=8")  # 13 is 16x16 at 128 px
    assert sel.layers == [12] and sel.layer_table == table
    assert sel.evidence["within"] == RES8_AT_128PX and sel.evidence["within_spec"] == "res<=8"
    saved = sel.save(tmp_path / "layers.json")
    assert json.loads(saved.read_text())["layer_table"][13]["resolution"] == [16, 16]
    assert LayerSelection.load(saved).layer_table == table
    bare = ProbeResults(back.rows, back.label)  # no table: indices still work, specs do not
    assert select_layers(bare, threshold=1.0, within=[12]).layers == [12]
    with pytest.raises(ValueError, match="rerun `attnprobe probe`"):
        select_layers(bare, threshold=1.0, within="res<=8")


def test_select_within_reads_the_probe_folder_not_probe_meta(big_dataset, tmp_path, capsys):
    probe_dir, out = tmp_path / "probe", tmp_path / "l.json"
    assert main(["probe", "--data", str(big_dataset.root), "--folds", "2",
                 "--out", str(probe_dir)]) == 0  # fmt: skip
    assert "layers" not in json.loads((probe_dir / "probe_meta.json").read_text())
    select = ["select", "--probe", str(probe_dir), "--out", str(out), "--threshold", "1.0",
              "--within", "res<=8"]  # fmt: skip
    assert main(select) == 0
    assert json.loads(out.read_text())["layers"] == [12]
    # a folder probed before tables were saved: its probe_meta.json held the table
    table = (probe_dir / "results.layers.json").read_text()
    (probe_dir / "results.layers.json").unlink()
    meta = json.loads((probe_dir / "probe_meta.json").read_text())
    meta["layers"] = json.loads(table)["layer_table"]
    (probe_dir / "probe_meta.json").write_text(json.dumps(meta))
    assert main(select) == 0 and json.loads(out.read_text())["layers"] == [12]
    del meta["layers"]
    (probe_dir / "probe_meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(select) == 2
    assert "rerun `attnprobe probe`" in capsys.readouterr().err


def _flat_rows(n: int = 16) -> list[ProbeRow]:
    return [ProbeRow(layer, step, 999.0 - step, kind, "linear", 0.5, 0.01, 0.5, math.nan, 0.0,
                     0.5, 8, 4)
            for layer in range(n) for step in range(2) for kind in ("self", "cross")]  # fmt: skip


def test_reproduce_selects_on_the_table_of_its_probes_without_a_model(tmp_path):
    table = layer_table("tiny", 128, 128)
    ProbeResults(_flat_rows(), "colour", table).to_csv(tmp_path / "probe/colour_car/results.csv")
    config = ReproduceConfig(model="/no/such/model", within="res<=8")
    run = Reproduction(tmp_path, config, progress=False)
    run.select()
    selection = LayerSelection.load(tmp_path / "selection.json")
    assert run._pipe is None  # the model was never loaded
    assert selection.layers == RES8_AT_128PX and selection.layer_table == table


def test_a_sweep_keeps_its_table_and_select_from_sweep_uses_it(tiny_pipe, tmp_path, capsys):
    pairs = load_edit_pairs("colour_edits").pairs[:1]
    sweep(tiny_pipe, pairs, ["none"], kinds=["self"], out=tmp_path / "run", num_steps=2,
          progress=False)  # fmt: skip
    assert load_layer_table(tmp_path / "run" / LAYER_TABLE) == run_layer_table(tiny_pipe)
    folder = tmp_path / "sw"  # a one-layer sweep at 128 px, written by hand
    folder.mkdir()
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, restval="")
        writer.writeheader()
        for name in ["none", *map(str, ALL)]:
            writer.writerow({"kind": "self", "range": name, "group": "custom", "layers": name,
                             "step_fraction": 1.0, "success": True, "source_shift": 0.0,
                             "iou": 0.7, "seed": 0, "source": "a red car", "target": "a blue car",
                             "source_found": True, "edit_found": True, "shape_distance": 0.1,
                             "background_psnr": 30.0, "background_diff": 1.0})  # fmt: skip
    (folder / "sweep.json").write_text(json.dumps({"model": "tiny"}))
    save_layer_table(folder / LAYER_TABLE, layer_table("tiny", 128, 128))
    out = tmp_path / "layers.json"
    args = ["select-from-sweep", "--sweep", str(folder), "--out", str(out), "--base", "res<=8"]
    assert main(args) == 0
    saved = json.loads(out.read_text())
    assert saved["layers"] == RES8_AT_128PX and len(saved["layer_table"]) == 16
    (folder / LAYER_TABLE).unlink()  # an older sweep: the model's own table (64 px)
    assert main(args) == 0 and json.loads(out.read_text())["layers"] == ALL

"""SDXL (issue 14, item 5): record a template dataset, probe it and select layers; the sweep and
``attnprobe reproduce --quick --clip DIR`` end to end, on ``tiny-xl`` (28 layers) and the SDXL
base replica folder (70 layers, recorded at 64 px).

A preset SDXL gives no meaning (``paper``, SD 1.5's "layers 4-14") is left out of a sweep's
group keywords (``presets``, ``default``) and of a reproduce run, with a note in the report; named
on its own in ``attnprobe sweep --ranges`` it is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from editing.experiment.reproduction import SKIPPED, STAGES, ReproduceConfig, Reproduction
from editing.sweep.ranges import drop_refused
from editing.sweep.table import read_rows
from probe.attention.layer_files import load_layer_table
from probe.attention.layers import resolve_layers
from probe.cli.main import main
from probe.models import layer_table, load_pipeline
from probe.probing.probes import ProbeResults
from probe.probing.selection import LayerSelection, select_layers
from tests.test_metrics import tiny_folders  # noqa: F401  (a tiny CLIP folder for --clip)

XL_FPE = list(range(4, 22))  # tiny-xl's fpe: its 2x2 layers (tests/test_sdxl.py)
XL_MASACTRL = list(range(16, 28))  # up_blocks.0.attentions.1 on


@pytest.fixture(scope="module")
def colours3(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "three_colours.yaml"
    path.write_text('name: three_colours\nprompt: "a {colour} car"\nslots:\n'
                    "  colour: [red, blue, green]\n")  # fmt: skip
    return path


def test_random_control_on_sdxl_reinitialises_both_text_encoders():
    """The random-model control of an SDXL model: its UNet and both text encoders drawn anew
    (the second encoder's pooled embedding conditions every row), the rest as it was."""
    import torch

    from probe.recording.random_control import random_init_like

    xl = load_pipeline("tiny-xl")
    control = random_init_like(xl, seed=1)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        old, new = getattr(xl, part).state_dict(), getattr(control, part).state_dict()
        assert old.keys() == new.keys() and any(not torch.equal(old[k], new[k]) for k in old)
    assert control.vae is xl.vae and control.tokenizer_2 is xl.tokenizer_2
    assert control.config.force_zeros_for_empty_prompt and control.watermark is None


def _check_results(results: ProbeResults, n_layers: int, chance: float) -> None:
    """Every layer x step x kind probed, accuracies in [0, 1], shuffled labels near chance."""
    assert {r.layer for r in results.rows} == set(range(n_layers))
    assert {r.kind for r in results.rows} == {"cross", "self"}
    assert len(results.rows) == n_layers * 2 * len({r.step for r in results.rows})
    for r in results.rows:
        assert 0.0 <= r.acc_mean <= 1.0 and 0.0 <= r.shuffled_acc <= 1.0
        assert r.chance == pytest.approx(chance)
    shuffled = float(np.mean([r.shuffled_acc for r in results.rows]))
    labels = float(np.mean([r.acc_mean for r in results.rows]))
    assert abs(shuffled - chance) <= 0.15  # the control stays at chance on average
    assert shuffled <= labels + 0.05  # ... and not above the true labels


@pytest.mark.slow  # ~25-40 s
def test_record_probe_select_commands_on_tiny_xl(colours3, tmp_path, capsys):
    data, control = tmp_path / "ds", tmp_path / "ds_random"
    record = ["record", "--model", "tiny-xl", "--template", str(colours3), "--seeds", "0-3",
              "--num-steps", "2", "--self-reduce", "svd:8"]  # fmt: skip
    assert main([*record, "--out", str(data)]) == 0
    assert "12 samples recorded" in capsys.readouterr().out
    assert main([*record, "--out", str(control), "--random-init", "1"]) == 0
    probe_dir = tmp_path / "probe"
    assert main(["probe", "--data", str(data), "--control-data", str(control), "--folds", "2",
                 "--out", str(probe_dir)]) == 0  # fmt: skip
    assert "112 cells probed on 12 samples (colour)" in capsys.readouterr().out
    results = ProbeResults.from_csv(probe_dir / "results.csv")
    _check_results(results, 28, 1 / 3)
    assert all(0.0 <= r.random_model_acc <= 1.0 for r in results.rows)  # the control was read
    table = layer_table("tiny-xl")
    assert [(x.name, x.resolution) for x in results.layer_table] == [
        (x.name, x.resolution) for x in table
    ]
    out = tmp_path / "layers.json"
    assert main(["select", "--probe", str(probe_dir), "--out", str(out), "--threshold", "1.0",
                 "--within", "fpe"]) == 0  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["layers"] == XL_FPE == resolve_layers(table, str(out))  # selectivity <= 1 always
    assert select_layers(results, threshold=1.0, within="masactrl").layers == XL_MASACTRL
    with pytest.raises(ValueError, match="no published meaning on this SDXL UNet"):
        select_layers(results, within="paper")


@pytest.mark.slow
def test_record_probe_select_on_the_sdxl_replica(replica, colours3, tmp_path):
    """The replica's 70 layers, recorded at 64 px (8x8 latents): there every query map has at
    most 4x4 positions, so the official absolute fpe rule (<= 1024) takes all 70."""
    from probe.probing.features import build_features
    from probe.probing.probes import ProbeConfig, run_probes
    from probe.prompts.templates import load_template
    from probe.recording.dataset import record_dataset
    from probe.recording.store import AttentionDataset

    folder = replica("sdxl-base")
    pipe = load_pipeline(folder)
    record_dataset(pipe, load_template(colours3), range(3), tmp_path / "ds", model=str(folder),
                   num_steps=2, height=64, width=64, self_reduce="svd:8", progress=False)  # fmt: skip
    data = AttentionDataset(tmp_path / "ds")
    assert len(data) == 9 and data.meta["height"] == 64
    features = build_features(data, "colour", steps=[0], progress=False)
    results = run_probes(features, ProbeConfig(folds=2, max_iter=50), progress=False)
    _check_results(results, 70, 1 / 3)
    assert len(results.layer_table) == 70
    assert results.layer_table[44].name == "up_blocks.0.attentions.1.transformer_blocks.0"
    one_step = {"threshold": 1.0, "step_fraction": 1.0}  # step 0 was probed
    assert select_layers(results, within="fpe", **one_step).layers == list(range(70))
    assert select_layers(results, within="masactrl", **one_step).layers == list(range(44, 70))


@pytest.mark.slow  # ~25-40 s
def test_sweep_on_tiny_xl_leaves_paper_out_of_presets_and_refuses_it_named(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", "tiny-xl", "--max-pairs", "1", "--num-steps", "2",
            "--kinds", "self", "cross"]  # fmt: skip
    assert main([*args, "--out", str(out), "--ranges", "presets", "masactrl"]) == 0
    rows = read_rows(out / "sweep.csv")
    assert {r["range"] for r in rows} == {"none", "fpe", "all", "masactrl"}  # no paper
    assert len(rows) == 4 * 2 and {r["kind"] for r in rows} == {"self", "cross"}
    layers = {r["range"]: r["layers"] for r in rows}
    assert layers["fpe"] == ",".join(map(str, XL_FPE))
    assert layers["masactrl"] == ",".join(map(str, XL_MASACTRL))
    assert layers["all"] == ",".join(map(str, range(28))) and layers["none"] == "none"
    saved = load_layer_table(out / "layer_table.json")
    assert [x.name for x in saved] == [x.name for x in layer_table("tiny-xl")]
    scheduler = json.loads((out / "sweep.json").read_text())["sampling"]["scheduler"]
    assert scheduler["built_from"] == "EulerDiscreteScheduler"  # edits sample DDIM from it
    assert "DDIMScheduler" in json.dumps(scheduler)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "paper"), "--ranges", "paper"]) == 2
    assert "use 'fpe'" in capsys.readouterr().err


def test_drop_refused_names_what_sdxl_leaves_out():
    xl, sd = layer_table("tiny-xl"), layer_table("tiny")
    kept, left = drop_refused(["none", "presets", "paper", "fpe"], xl)
    assert kept == ["none", "presets", "fpe"] and list(left) == ["paper"]
    assert "SDXL" in left["paper"] and "'fpe'" in left["paper"]
    assert drop_refused(["windows"], xl) == (["windows"], {})  # no preset named
    assert drop_refused(["default"], xl)[1].keys() == {"paper"}  # one inside the group
    assert drop_refused(["none", "paper", "presets"], sd) == (["none", "paper", "presets"], {})


@pytest.mark.slow  # ~25-40 s
def test_reproduce_on_tiny_xl_skips_paper_with_a_note(tmp_path):
    """The full preset names ``paper`` (animal sweep) and ``presets`` (colour sweep): on SDXL
    both leave it out, say so in skipped_ranges.json and in the report's sweep section."""
    from editing.experiment.report import write_report_html

    full = Reproduction(tmp_path / "full", ReproduceConfig.preset("tiny-xl"), progress=False)
    full.out.mkdir()
    kept = full.sweep_ranges(animals=True)
    assert kept["animal_ranges"] == ["none", "fpe", "all"]
    assert kept["self_ranges"] == ["presets", "windows"]  # the sweep drops paper inside
    skipped = json.loads((full.out / SKIPPED).read_text())
    assert skipped["paper"]["sweeps"] == ["self_ranges", "animal_ranges"]
    config = replace(ReproduceConfig.preset("tiny-xl", quick=True), num_steps=2, sources=1,
                     self_ranges=("presets",), animal_pairs=1, animal_ranges=("none", "paper"))  # fmt: skip
    LayerSelection(XL_FPE, rule="test", model="tiny-xl").save(tmp_path / "selection.json")
    Reproduction(tmp_path, config, progress=False).sweep()
    colour = {r["range"] for r in read_rows(tmp_path / "sweep" / "sweep.csv")}
    assert colour == {"none", "fpe", "all", "selection"}
    animal = {(r["kind"], r["range"]) for r in read_rows(tmp_path / "sweep_animal" / "sweep.csv")}
    assert animal == {("self", "none"), ("cross", "all")}
    page = write_report_html(tmp_path, config, {}).read_text()
    assert "Range <code>paper</code> left out of self_ranges, animal_ranges" in page


def test_reproduce_refuses_dino_without_clip():
    with pytest.raises(ValueError, match="--dino needs --clip"):
        replace(ReproduceConfig.preset("tiny-xl"), dino="somewhere")


@pytest.mark.slow
def test_quick_reproduce_on_tiny_xl_with_clip(tiny_folders, tmp_path):  # noqa: F811
    """``attnprobe reproduce --model tiny-xl --quick --clip DIR``: every stage on SDXL's
    topology, the sweep scored by CLIP (a tiny random CLIP here) instead of the toy judges."""
    out, clip = tmp_path / "run", str(tiny_folders / "clip")
    assert main(["reproduce", "--out", str(out), "--model", "tiny-xl", "--quick", "--clip", clip,
                 "--no-progress"]) == 0  # fmt: skip
    assert list(json.loads((out / "stages.json").read_text())) == list(STAGES)
    results = ProbeResults.from_csv(out / "probe" / "colour_car" / "results.csv")
    _check_results(results, 28, results.rows[0].chance)
    selection = json.loads((out / "selection.json").read_text())
    assert selection["layers"] and set(selection["layers"]) <= set(XL_FPE)  # within fpe
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert sweep["scorer"] == "clip" and sweep["model"] == "tiny-xl"
    rows = read_rows(out / "sweep" / "sweep.csv")
    assert {r["judged"] for r in rows} <= {"source", "target"}
    assert all(math.isnan(r["iou"]) and 0.0 <= r["source_shift"] <= 1.0 for r in rows)
    assert json.loads((out / SKIPPED).read_text()) == {}  # the quick ranges name no paper
    page = (out / "report.html").read_text()
    assert "Edits scored by CLIP from" in page and "tiny-xl" in page
    assert json.loads((out / "reproduce.json").read_text())["clip"] == clip

"""``attnprobe reproduce``: pair picking, settings guard, claim verdicts, and the quick run on
``tiny`` end to end (report sections, embedded images, resuming)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from dataclasses import replace

import pytest
from PIL import Image

from editing.experiment.claims import HELD, INCONCLUSIVE, NOT_HELD, check_claims
from editing.experiment.reproduction import SETTINGS, STAGES, ReproduceConfig, pick_pairs
from probe.probing.probes import ProbeResults, ProbeRow
from probe.prompts.templates import load_edit_pairs
from probe.recording.folders import SettingsMismatchError, check_folder_settings

SECTIONS = (
    "Summary: the paper&#x27;s claims here",
    "Attention maps",
    "Probes",
    "Selected layers",
    "Layer-range sweep",
    "Vital blocks: Stable Flow&#x27;s ablation",
    "Edits",
    "Run",
)


def test_pick_pairs_spreads_sources_and_targets():
    pairs = pick_pairs(load_edit_pairs("colour_edits").pairs, 3, 2)
    sources = {p.source for p in pairs}
    assert len(pairs) == 6 and len(sources) == 3
    assert all(sum(p.source == s for p in pairs) == 2 for s in sources)
    assert all(p.source != p.target for p in pairs)
    with pytest.raises(ValueError, match="sources=0"):
        pick_pairs(load_edit_pairs("colour_edits").pairs, 0, 1)


def test_a_folder_keeps_its_settings(tmp_path):
    def check(config: ReproduceConfig) -> None:
        check_folder_settings(tmp_path, SETTINGS, config.to_json(), "a reproduce run")

    check(ReproduceConfig.preset("tiny", quick=True))
    check(ReproduceConfig.preset("tiny", quick=True))  # same: fine
    with pytest.raises(SettingsMismatchError, match="quick: True → False.*another --out"):
        check(ReproduceConfig.preset("tiny"))


def results(cross: float, self_: float, shuffled: float = 0.1) -> ProbeResults:
    row = ProbeRow
    rows = [
        row(
            layer,
            step,
            900.0,
            kind,
            "linear",
            acc,
            0.0,
            shuffled,
            math.nan,
            acc - shuffled,
            0.1,
            40,
            16,
        )
        for kind, acc in (("cross", cross), ("self", self_))
        for layer in range(4)
        for step in range(3)
    ]
    return ProbeResults(rows, "colour")


def summary_row(kind: str, name: str, success: float, iou: float, found: float = 1.0):
    return {"kind": kind, "range": name, "group": "preset", "layers": "", "step_fraction": 0.8,
            "n": 8.0, "success": success, "iou": iou, "found": found}  # fmt: skip


def paper_like_summary(found: float = 1.0) -> list[dict]:
    return [
        summary_row("self", "none", 0.95, 0.3, found),
        summary_row("self", "fpe", 0.9, 0.8, found),
        summary_row("self", "all", 0.2, 0.95, found),
        summary_row("cross", "all", 0.1, 0.9, found),
    ]


def test_claims_hold_on_paper_like_numbers():
    claims = check_claims({"colour": results(0.9, 0.3)}, paper_like_summary())
    assert [c.verdict for c in claims] == [HELD] * 5
    assert "0.90" in claims[0].text and "success 0.90, structure IoU 0.80" in claims[3].text


def test_claims_fail_on_contrary_numbers():
    summary = [
        summary_row("self", "none", 0.9, 0.9),
        summary_row("self", "fpe", 0.5, 0.5),
        summary_row("self", "all", 0.9, 0.5),
        summary_row("cross", "all", 0.9, 0.9),
    ]
    claims = check_claims({"colour": results(0.15, 0.9, shuffled=0.1)}, summary)
    verdicts = [c.verdict for c in claims]
    assert verdicts == [NOT_HELD, INCONCLUSIVE, NOT_HELD, NOT_HELD, NOT_HELD]
    assert "nothing to compare against" in claims[1].text  # cross itself carries no colour
    assert check_claims({"colour": results(0.8, 0.9)}, summary)[1].verdict == NOT_HELD


def test_cross_claim_reports_the_source_shift_when_the_sweep_has_it():
    summary = paper_like_summary()
    assert "moved toward the source" not in check_claims({}, summary)[4].text
    for row, shift in zip(summary, (0.0, 0.02, 0.01, 0.31), strict=True):
        row["source_shift"] = shift
    assert "FPE 0.020, cross 0.310" in check_claims({}, summary)[4].text


def test_claims_3_to_5_are_checked_per_edit_set_when_animal_edits_were_swept():
    colour = paper_like_summary()
    animal = [
        summary_row("self", "none", 1.0, 0.25),
        summary_row("self", "fpe", 0.9, 0.35),
        summary_row("self", "all", 0.7, 0.4),
        summary_row("cross", "all", 0.95, 0.3),
    ]
    claims = check_claims({"colour": results(0.9, 0.3)}, colour, None, animal)
    assert [c.key for c in claims[2:]] == [
        *("self_structure_colour", "middle_range_colour", "cross_optional_colour"),
        *("self_structure_animal", "middle_range_animal", "cross_optional_animal"),
    ]
    assert claims[5].title.endswith("(animal edits)") and claims[2].title.endswith("(colour edits)")
    assert [c.verdict for c in claims[5:]] == [HELD, HELD, NOT_HELD]
    assert "success 0.70, structure IoU 0.40" in claims[5].text


def test_reproduce_sweeps_animal_edits_and_reports_them(tmp_path):
    from dataclasses import replace

    from editing.experiment.report import write_report_html
    from editing.experiment.reproduction import Reproduction
    from editing.sweep.table import read_rows
    from probe.probing.selection import LayerSelection

    config = replace(ReproduceConfig.preset("tiny", quick=True), num_steps=2, sources=1,
                     animal_pairs=2, animal_ranges=("none", "fpe"))  # fmt: skip
    LayerSelection([2, 3], rule="test", model="tiny").save(tmp_path / "selection.json")
    Reproduction(tmp_path, config, progress=False).sweep()
    rows = read_rows(tmp_path / "sweep_animal" / "sweep.csv")
    assert len(rows) == 2 * 3 and {r["slot"] for r in rows} == {"animal"}
    assert {(r["kind"], r["range"]) for r in rows} == {
        ("self", "none"), ("self", "fpe"), ("cross", "all")}  # fmt: skip
    page = write_report_html(tmp_path, config, {}).read_text()
    assert ">Animal edits</h3>" in page and "(animal edits)" in page
    assert "Structure vs edit success: animal edits" in page


def test_edit_claims_are_inconclusive_when_the_judges_see_nothing():
    claims = check_claims({}, paper_like_summary(found=0.1))
    assert [c.verdict for c in claims] == [INCONCLUSIVE] * 5
    assert "10%" in claims[2].text


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from probe.cli.main import main

    out = tmp_path_factory.mktemp("reproduce") / "run"
    code = main(["reproduce", "--out", str(out), "--model", "tiny", "--quick", "--no-progress"])
    assert code == 0
    return out


def test_quick_reproduce_writes_every_stage(quick_run):
    done = json.loads((quick_run / "stages.json").read_text())
    assert list(done) == list(STAGES)
    assert (quick_run / "probe" / "colour_car" / "results.csv").is_file()
    selection = json.loads((quick_run / "selection.json").read_text())
    assert selection["layers"] and all(0 <= i < 16 for i in selection["layers"])
    names = {e["file"] for e in json.loads((quick_run / "figures" / "figures.json").read_text())}
    assert {"token_heatmaps.png", "heatmaps_by_layer.png", "edit_grid.png"} <= names


def test_quick_report_has_the_sections_and_embedded_images(quick_run):
    page = (quick_run / "report.html").read_text()
    for section in SECTIONS:
        assert f">{section}</h2>" in page, section
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 10
    first = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert first.format == "PNG" and first.width > 100
    assert 'src="http' not in page and "<script" not in page  # self-contained
    assert page.count('class="inc"') + page.count('class="held"') + page.count('class="not"') >= 10
    selection = json.loads((quick_run / "selection.json").read_text())
    assert str(selection["layers"]) in page
    claims = json.loads((quick_run / "claims.json").read_text())  # the verdicts, readable
    assert len(claims) >= 5 and {c["verdict"] for c in claims} <= {
        "held",
        "did not hold",
        "inconclusive",
    }
    from editing.experiment.report import esc

    for claim in claims:
        assert esc(claim["title"]) in page and claim["key"]


def test_quick_reproduce_resumes_without_redoing_stages(quick_run, capsys):
    from probe.cli.main import main

    before = json.loads((quick_run / "stages.json").read_text())
    assert main(["reproduce", "--out", str(quick_run), "--model", "tiny", "--quick"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before") == len(STAGES) - 1
    after = json.loads((quick_run / "stages.json").read_text())
    assert {k: v for k, v in after.items() if k != "report"} == {
        k: v for k, v in before.items() if k != "report"
    }


def test_reproduce_loads_in_the_dtype_asked_and_keeps_it_as_a_setting(quick_run, capsys, tmp_path):
    import torch

    from editing.experiment.reproduction import Reproduction
    from probe.cli.main import main

    run = ["reproduce", "--out", str(quick_run), "--model", "tiny", "--quick"]
    assert main([*run, "--dtype", "bfloat16"]) == 2  # another dtype: another run
    assert "dtype: None → 'bfloat16'" in capsys.readouterr().err
    saved = json.loads((quick_run / SETTINGS).read_text())
    del saved["dtype"]  # a folder from before dtype was a setting resumes as float32
    (quick_run / SETTINGS).write_text(json.dumps(saved))
    assert main(run) == 0
    half = Reproduction(tmp_path, ReproduceConfig.preset("tiny", quick=True), workers=2)
    half.config = replace(half.config, dtype="bfloat16")
    assert half.pipe.unet.dtype == torch.bfloat16
    assert half.pool() is None  # workers load float32: a half-precision run stays here

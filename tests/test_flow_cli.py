"""``attnprobe edit --image`` on flow models with every inversion: each one's settings reach the
edit, its flags go with it only, and the method that needs stored values gets them."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from probe.cli.main import main
from tests.test_flow_inversion import scene


def _edit(tmp_path, *flags: str, model: str = "tiny-flux") -> int:
    Image.fromarray(scene()).save(tmp_path / "car.png")
    return main(["edit", "--model", model, "--source", "a red car", "--target", "a blue car",
                 "--image", str(tmp_path / "car.png"), "--num-steps", "2", *flags,
                 "--out", str(tmp_path / "out")])  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "kind"),
    [(["--inversion", "rf-inversion", "--gamma", "0.4", "--eta", "0.8", "--eta-stop", "0.5"],
      "rf-inversion"),
     (["--inversion", "rf-solver", "--method", "rf-solver", "--inject-steps", "1"], "rf-solver"),
     (["--inversion", "fireflow", "--method", "fpe"], "fireflow")],
)  # fmt: skip
def test_each_flow_inversion_runs_from_the_command_line(flags, kind, tmp_path):
    assert _edit(tmp_path, "--guidance", "1", *flags) == 0
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["inversion"] == kind and settings["num_steps"] == 2
    assert (tmp_path / "out" / "target_0.png").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--inversion", "euler", "--gamma", "0.5"], "--gamma only apply to --inversion rf-inv"),
     (["--inversion", "rf-solver", "--nudge", "1.15"], "--nudge only applies to --inversion e"),
     (["--inversion", "rf-inversion", "--eta", "1.5"], "eta=1.5"),
     (["--inversion", "euler", "--method", "rf-solver"], "stored"),
     (["--method", "flowedit", "--eta", "0.5"], "--eta: --method flowedit inverts nothing"),
     (["--method", "flowedit", "--source-row-guidance", "1"], "--source-row-guidance: --method"),
     (["--inversion", "ddim"], "--inversion ddim does not apply to Flux, a flow model: use")],
)  # fmt: skip
def test_inversion_flags_go_with_their_inversion(flags, message, tmp_path, capsys):
    assert _edit(tmp_path, *flags) == 2
    assert message in capsys.readouterr().err


def test_a_flow_inversion_on_a_unet_is_refused(tmp_path, capsys):
    Image.fromarray(scene(64)).save(tmp_path / "car.png")
    assert main(["edit", "--model", "tiny", "--source", "a red car", "--target", "a blue car",
                 "--image", str(tmp_path / "car.png"), "--inversion", "fireflow",
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "--inversion fireflow inverts a flow model" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "source_guidance"),
                         [([], 1.0), (["--source-row-guidance", "2.5"], 2.5)])  # fmt: skip
def test_stable_flow_guides_its_reference_row_apart(flags, source_guidance, tmp_path):
    flags = ["--method", "stable-flow", "--layers", "0", "--guidance", "3", *flags]
    assert _edit(tmp_path, "--inversion", "euler", *flags) == 0
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert (settings["source_guidance_scale"], settings["guidance_scale"]) == (source_guidance, 3)

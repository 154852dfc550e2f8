"""Bad inputs on the command line end in one line naming the way out; settings files print
every default the run used (steps, guidance, size, scheduler)."""

from __future__ import annotations

import json

from probe.cli.main import main
from probe.models import defaults_origin, generation_defaults, load_pipeline


def test_edit_with_a_file_that_is_not_an_image(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping: milk, eggs\n")
    code = main(["edit", "--model", "tiny", "--source", "a red car", "--target", "a blue car",
                 "--image", str(notes), "--num-steps", "2", "--out", str(tmp_path / "e")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"{notes} is not an image PIL can read" in err


def test_record_refuses_a_budget_the_single_prompt_would_pass(tmp_path, capsys):
    """--self-reduce full at 20 steps needs ~2 MiB on tiny: --budget 1MiB refuses before any
    step is recorded, as record_attention(budget_bytes=) does; a larger budget records."""
    out = tmp_path / "r"
    args = ["record", "--model", "tiny", "--prompt", "a red car", "--self-reduce", "full"]
    code = main([*args, "--budget", "1MiB", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "over budget_bytes=1.0 MiB" in err and "self_reduce='svd:8'" in err
    assert not (out / "maps.safetensors").exists()
    assert main([*args, "--budget", "8MiB", "--num-steps", "2", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["budget_bytes"] == 8 * 2**20


def test_sd_folders_default_to_the_published_settings(tiny_pipe, tmp_path):
    """A diffusers folder without attnprobe.json: 50 steps, guidance 7.5, native size."""
    tiny_pipe.save_pretrained(tmp_path / "sd")
    folder = load_pipeline(tmp_path / "sd")
    assert generation_defaults(folder) == {
        "num_inference_steps": 50, "guidance_scale": 7.5, "height": 64, "width": 64,
    }  # fmt: skip
    assert defaults_origin(folder)["family"] == "sd"
    assert generation_defaults(tiny_pipe)["num_inference_steps"] == 20
    assert defaults_origin(tiny_pipe)["family"] == "tiny"
    (tmp_path / "sd" / "attnprobe.json").write_text(json.dumps({"guidance_scale": 4.0}))
    own = load_pipeline(tmp_path / "sd")
    assert generation_defaults(own)["guidance_scale"] == 4.0
    assert generation_defaults(own)["num_inference_steps"] == 50
    assert defaults_origin(own) == {
        "family": "own",
        "source": str(tmp_path / "sd" / "attnprobe.json"),
    }


def test_settings_files_print_every_default(tmp_path):
    rec, ed = tmp_path / "rec", tmp_path / "ed"
    assert main(["record", "--model", "tiny", "--prompt", "a red car", "--num-steps", "3",
                 "--layers", "0", "--out", str(rec)]) == 0  # fmt: skip
    said = json.loads((rec / "settings.json").read_text())
    assert (said["num_inference_steps"], said["guidance_scale"]) == (3, 7.5)
    assert (said["height"], said["width"], said["steps_recorded"]) == (64, 64, 3)
    assert said["scheduler"]["class"] == "DDIMScheduler" and said["defaults"]["family"] == "tiny"
    assert main(["edit", "--model", "tiny", "--source", "a red car", "--target", "a blue car",
                 "--num-steps", "2", "--out", str(ed)]) == 0  # fmt: skip
    said = json.loads((ed / "settings.json").read_text())
    assert (said["num_steps"], said["guidance_scale"], said["height"]) == (2, 7.5, 64)
    assert said["scheduler"]["class"] == "DDIMScheduler" and said["scheduler"]["eta"] == 0.0
    assert said["scheduler"]["config"]["steps_offset"] == 1
    assert said["defaults"]["family"] == "tiny"


def test_a_bad_layer_spec_on_edit_image_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """--layers is resolved against the table built from the model's config (meta device),
    so a layer the model does not have fails before the weights load or the image is
    inverted: load_pipeline and ddim_invert must never be called."""
    from PIL import Image

    import probe.models.loading as loading

    called = []
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: called.append("load"))
    image = tmp_path / "car.png"
    Image.new("RGB", (64, 64), "red").save(image)
    args = ["edit", "--model", "toy", "--source", "a red car", "--target", "a blue car",
            "--image", str(image), "--out", str(tmp_path / "e")]  # fmt: skip
    assert main([*args, "--layers", "4-40"]) == 2
    err = capsys.readouterr().err
    assert called == [] and "Traceback" not in err and err.strip().count("\n") == 0
    assert "--layers 4-40" in err and "layer 16 does not exist" in err and "0-15" in err
    assert main([*args, "--method", "masactrl", "--mask-layers", "up_blocks.9"]) == 2
    err = capsys.readouterr().err
    assert called == [] and "--mask-layers up_blocks.9" in err and "unknown layer spec" in err

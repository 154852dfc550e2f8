from __future__ import annotations

import json

from probe.cli.main import main
from probe.recording.maps import AttentionMaps


def test_layers_command(capsys):
    assert main(["layers", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "up_blocks.3.attentions.2" in out and out.count("\n") == 18
    assert main(["layers", "--model", "tiny", "--spec", "fpe"]) == 0
    assert "down_blocks.0" not in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["layers", "--model", "tiny", "--spec", "17"]) == 2
    err = capsys.readouterr().err
    assert "layer 17 does not exist: this UNet has layers 0-15" in err
    assert main(["layers", "--model", "/no/such/model"]) == 2
    assert "never downloads weights" in capsys.readouterr().err


def test_device_option_resolves_or_names_the_way_out(tmp_path, capsys, monkeypatch):
    import pytest
    import torch

    from probe.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'gpu0' is not a torch device: use auto, cpu"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None).type == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU; use --device cpu"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")  # each launched process takes its own GPU
    assert resolve_device("auto") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="has 2 GPU\\(s\\), cuda:0-1"):
        resolve_device("cuda:2")
    monkeypatch.undo()
    if not torch.cuda.is_available():
        code = main(["record", "--model", "tiny", "--prompt", "a red car", "--device", "cuda",
                     "--out", str(tmp_path / "r")])  # fmt: skip
        assert code == 2 and "no CUDA GPU" in capsys.readouterr().err
        assert not (tmp_path / "r").exists()


def test_record_command_writes_image_and_maps(tmp_path, capsys):
    out = tmp_path / "rec"
    code = main(["record", "--model", "tiny", "--prompt", "a blue car", "--out", str(out),
                 "--num-steps", "4", "--layers", "fpe"])  # fmt: skip
    assert code == 0
    maps = AttentionMaps.load(out / "maps.safetensors")
    assert maps.recorded_layers() == list(range(2, 13))
    assert maps.steps == [0, 1, 2, 3]
    assert (out / "image.png").stat().st_size > 0
    assert json.loads((out / "settings.json").read_text())["prompt"] == "a blue car"
    assert str(out / "maps.safetensors") in capsys.readouterr().out


def test_demo_command(tmp_path):
    assert main(["demo", "--model", "tiny", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["layers"] == list(range(16)) and summary["steps"] == 20
    assert (tmp_path / "word_heatmaps.png").stat().st_size > 10_000

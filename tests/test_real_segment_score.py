"""attnprobe segment-score --images DIR (editing.scoring.real_heatmaps): a hand-made folder of two
images with masks, scored on tiny (a UNet: DDIM inversion) and tiny-flux (flow inversion, concept
maps); the table written; a missing mask, prompts file or word refused; a mask of another size
resized with a note."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editing.scoring.real_heatmaps import read_folder, score_folder


def _folder(root: Path, size: int, mask_size: int | None = None) -> Path:
    """car.png and cat.png (random pixels) of ``size``, each with a rectangle mask."""
    root.mkdir(parents=True, exist_ok=True)
    m = mask_size or size
    for i, name in enumerate(("car", "cat")):
        pixels = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{name}.png")
        mask = np.zeros((m, m), np.uint8)
        mask[m // 4 : m // 2, m // 4 : 3 * m // 4] = 255  # 1/8 of the image
        Image.fromarray(mask).save(root / f"{name}_mask.png")
    prompts = {"car": {"prompt": "a red car", "word": "car"},
               "cat": {"prompt": "a cat in the park", "word": "cat", "concepts": ["park"]}}  # fmt: skip
    (root / "prompts.json").write_text(json.dumps(prompts))
    return root


def test_the_command_on_a_unet_writes_the_table(tmp_path):
    # images of 48 px: resized to tiny's 64 px for the model, scored at 48 px
    from probe.cli.main import main

    folder, out = _folder(tmp_path / "imgs", 48), tmp_path / "seg"  # tiny works at 64
    assert main(["segment-score", "--model", "tiny", "--images", str(folder), "--steps", "2",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    data = json.loads((out / "segment.json").read_text())
    assert {"cross/all", "cross/L00", "cross/L15"} <= set(data["summary"])
    assert not any(k.startswith("concept") for k in data["summary"])  # a UNet has none
    assert data["summary"]["cross/all"]["images"] == 2
    assert [im["name"] for im in data["images"]] == ["car", "cat"]
    assert data["images"][0]["object_pixels"] == 12 * 24  # scored at the image's own size
    assert data["images"][0]["mask_size"] == [48, 48]
    assert data["settings"]["inversion"] == "ddim_invert"
    assert data["settings"]["notes"][0].startswith("car.png is 48x48: resized to the model's 64x64")
    assert "| cross/all | 2 |" in (out / "segment.md").read_text()


def test_flux_scores_concept_maps_and_resizes_a_mask_with_a_note(tmp_path, flux):
    folder = _folder(tmp_path / "imgs", 128, mask_size=32)
    report = score_folder(flux, folder, num_steps=2, progress=False)
    assert {"cross/all", "concept/all", "concept/L00"} <= set(report.scores)
    assert report.settings["inversion"].startswith("flow_invert")
    assert report.images[1]["concepts"] == ["cat", "park"]
    assert report.images[0]["mask_size"] == [128, 128]  # scored at the image's size
    assert report.images[0]["object_pixels"] == 32 * 64
    notes = report.settings["notes"]
    assert len(notes) == 2 and "car_mask.png is 32x32" in notes[0] and "nearest" in notes[0]
    assert all(s.scored for rows in report.scores.values() for s in rows)


def test_a_folder_without_masks_prompts_or_words_is_refused(tmp_path):
    folder = _folder(tmp_path / "imgs", 8)
    assert [it.name for it in read_folder(folder)] == ["car", "cat"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_folder(tmp_path / "nothing")
    (folder / "cat_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no mask for cat\.png.*cat_mask\.png"):
        read_folder(folder)
    _folder(folder, 8)
    prompts = json.loads((folder / "prompts.json").read_text())
    prompts["car"]["word"] = "bus"
    (folder / "prompts.json").write_text(json.dumps(prompts))
    with pytest.raises(ValueError, match=r"car\.png: the word 'bus' is not in its prompt"):
        read_folder(folder)
    (folder / "prompts.json").write_text(json.dumps({"car": prompts["cat"]}))
    with pytest.raises(ValueError, match=r"no entry for image cat\.png"):
        read_folder(folder)
    (folder / "prompts.json").unlink()
    with pytest.raises(FileNotFoundError, match="no prompts.json"):
        read_folder(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        read_folder(empty)

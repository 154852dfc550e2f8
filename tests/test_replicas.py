"""Replica folders of real checkpoints (``tests/replicas/build.py``): laid out as downloaded, they
load offline with the scheduler they ship, and the commands run on them.

The shipped schedulers, from the folders' own ``scheduler_config.json``: SD 1.5 and SD 2.1-base
PNDM (epsilon), SD 2.1 DDIM (v-prediction), SDXL base Euler (epsilon).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from probe.cli.main import main
from probe.families.unet import unet_layers
from probe.models import layer_table, load_pipeline
from probe.recording.recorder import record_attention
from tests.conftest import empty_unet
from tests.replicas.build import DIT_REPLICAS, HERE, SD_REPLICAS, UNET_NAMES, real_config

SD_FOLDERS = ["sd15", "sd21-base", "sd21", "toy-sd15"]  # the ones load_pipeline loads
SHIPPED_SCHEDULER = {
    "sd15": "PNDMScheduler",
    "sd21-base": "PNDMScheduler",
    "sd21": "DDIMScheduler",
    "sdxl-base": "EulerDiscreteScheduler",
    "toy-sd15": "PNDMScheduler",
}
PADS_WITH_BANG = {"sd21-base", "sd21"}  # OpenCLIP's tokenizer pads with '!' (id 0)


@pytest.fixture(scope="module")
def recorded(loaded):
    """``recorded(name)``: ``(pipe, maps)`` of a 2-step recording of every layer at 64 px."""
    runs: dict = {}

    def get(name: str):
        if name not in runs:
            pipe = loaded(name)
            with record_attention(pipe) as maps:
                pipe("a red car", num_inference_steps=2, height=64, width=64,
                     generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
            runs[name] = (pipe, maps)
        return runs[name]

    return get


# --- the folders as downloaded --------------------------------------------------------------


@pytest.mark.parametrize("name", [*SD_REPLICAS, *DIT_REPLICAS])
def test_every_config_is_the_real_one_with_only_its_size_keys_replaced(replica, name):
    folder, spec = replica(name), json.loads((HERE / name / "tiny.json").read_text())
    for src in sorted((HERE / name).rglob("*.json")):
        rel = src.relative_to(HERE / name).as_posix()
        if rel == "tiny.json":
            continue
        real, written = real_config(name, rel), json.loads((folder / rel).read_text())
        assert list(written) == list(real), rel  # same keys, same order
        sizes = set(spec["sizes"].get(rel, {})) | (
            {"vocab_size"} if "text_encoder" in rel else set()
        )
        assert {k for k in real if written[k] != real[k]} <= sizes, rel
        assert "_comment" not in json.dumps(written)


@pytest.mark.parametrize("name", SD_REPLICAS)
def test_folder_holds_the_files_of_the_real_one(replica, name):
    folder, spec = replica(name), json.loads((HERE / name / "tiny.json").read_text())
    index = json.loads((folder / "model_index.json").read_text())
    components = {k for k, v in index.items() if isinstance(v, list) and v[0] is not None}
    assert {p.name for p in folder.iterdir() if p.is_dir()} == components
    for component, variants in spec["weights"].items():
        stem = "diffusion_pytorch_model" if index[component][0] == "diffusers" else "model"
        names = {f"{stem}.{v}.safetensors" if v else f"{stem}.safetensors" for v in variants}
        assert {p.name for p in (folder / component).glob("*.safetensors")} == names
    for tok in (p for p in folder.iterdir() if p.name.startswith("tokenizer")):
        assert {p.name for p in tok.iterdir()} == {
            "vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"
        }  # fmt: skip
    if name == "sd21":  # listed empty: no folder, and the index says so
        assert index["safety_checker"] == [None, None]
        assert index["requires_safety_checker"] is False


def test_fp16_variant_files_hold_the_same_weights_in_half_precision(replica):
    from diffusers import UNet2DConditionModel

    unet = replica("sd15") / "unet"
    fp32 = load_file(unet / "diffusion_pytorch_model.safetensors")
    fp16 = load_file(unet / "diffusion_pytorch_model.fp16.safetensors")
    assert fp32.keys() == fp16.keys()
    assert all(
        fp16[k].dtype == torch.float16 and torch.equal(fp16[k], v.half()) for k, v in fp32.items()
    )
    model = UNet2DConditionModel.from_pretrained(str(unet), variant="fp16", dtype=torch.float16)
    assert model.dtype == torch.float16


@pytest.mark.parametrize("name", ["sd21-base", "flux-dev"])  # flux-dev: shards and T5
def test_build_is_deterministic(replica, tmp_path, name):
    from tests.replicas.build import build_replica

    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip

    assert digest(build_replica(name, tmp_path)) == digest(replica(name))


# --- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SD_FOLDERS)
def test_replica_loads_offline_with_the_scheduler_it_ships(loaded, name):
    from diffusers import StableDiffusionPipeline

    pipe = loaded(name)
    assert type(pipe) is StableDiffusionPipeline
    shipped = real_config("sd15" if name == "toy-sd15" else name, "scheduler/scheduler_config.json")
    assert type(pipe.scheduler).__name__ == shipped["_class_name"] == SHIPPED_SCHEDULER[name]
    for key, value in shipped.items():
        if not key.startswith("_"):
            assert pipe.scheduler.config[key] == value, key  # skip_prk_steps, steps_offset, ...
    assert pipe.safety_checker is None and pipe.feature_extractor is not None
    # SD 2.x configs record torch_dtype float16: load_pipeline's default stays float32
    assert {m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)} == {torch.float32}


@pytest.mark.parametrize("name", SD_FOLDERS)
def test_replica_tokenizer_pads_as_the_real_one(loaded, name):
    tok = loaded(name).tokenizer
    ids = tok("a red car", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[4] == tok.eos_token_id
    if name in PADS_WITH_BANG:
        assert (tok.pad_token, ids[5:]) == ("!", [0] * 72)
    else:
        assert ids[5:] == [tok.eos_token_id] * 72


def test_old_snapshot_naming_clip_feature_extractor_still_loads(replica, tmp_path):
    """Folders downloaded before the rename list CLIPFeatureExtractor, gone from transformers 5."""
    folder = shutil.copytree(replica("sd21"), tmp_path / "sd21-old")
    index = json.loads((folder / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "CLIPFeatureExtractor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    assert load_pipeline(folder).feature_extractor is not None


def test_sdxl_replica_loads_as_an_sdxl_pipeline(loaded):
    """Issue 14: the SDXL folder loads through load_pipeline, both text encoders included
    (StableDiffusionPipeline would drop text_encoder_2); more in tests/test_sdxl.py."""
    from diffusers import StableDiffusionXLPipeline

    pipe = loaded("sdxl-base")
    assert type(pipe) is StableDiffusionXLPipeline
    assert pipe.text_encoder_2 is not None and pipe.tokenizer_2 is not None
    assert type(pipe.scheduler).__name__ == SHIPPED_SCHEDULER["sdxl-base"]
    assert pipe.config.force_zeros_for_empty_prompt is True


def test_sdxl_replica_is_a_working_sdxl_folder_for_diffusers(replica):
    """For issue 14: diffusers' own SDXL pipeline loads the replica and samples from it."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(replica("sdxl-base")), local_files_only=True, dtype=torch.float32
    )
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    ids = pipe.tokenizer_2("a red car", padding="max_length", max_length=77).input_ids
    assert (pipe.tokenizer_2.pad_token, ids[5:]) == ("!", [0] * 72)  # OpenCLIP pads with 0
    assert pipe.tokenizer("a red car", padding="max_length", max_length=77).input_ids[5] == (
        pipe.tokenizer.eos_token_id
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red car", num_inference_steps=1, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())


def test_toy_dressed_as_sd15_runs_the_toy_weights(replica, loaded):
    toy, dressed = load_pipeline("toy"), loaded("toy-sd15")
    folder = replica("toy-sd15")
    assert json.loads((folder / "model_index.json").read_text()) == real_config(
        "sd15", "model_index.json"
    )
    assert not (folder / "attnprobe.json").exists()  # read as a downloaded folder is
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(dressed, part).state_dict(), getattr(toy, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    prompt = "a red car standing in the park"
    assert dressed.tokenizer(prompt).input_ids == toy.tokenizer(prompt).input_ids


# --- commands and recording -----------------------------------------------------------------


@pytest.mark.parametrize("name", UNET_NAMES)  # the DiTs': tests/test_dit_replicas.py
def test_cli_layers_runs_on_replica(replica, capsys, name):
    assert main(["layers", "--model", str(replica(name))]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert len(rows) == (70 if name == "sdxl-base" else 16)
    native = {"sd15": 64, "sd21-base": 64, "sd21": 96, "sdxl-base": 64, "toy-sd15": 16}[name]
    assert f"{native}x{native}" in rows[0]  # the real sample_size: query maps at the native size


@pytest.mark.parametrize("name", SD_FOLDERS)
def test_two_step_recording_on_replica(recorded, name):
    pipe, maps = recorded(name)
    assert maps.recorded_layers() == list(range(16))
    assert maps.kinds == ["cross", "self"]
    side = 64 // pipe.vae_scale_factor  # 8x8 latents (the toy's VAE: 16x16)
    assert maps.word_map("car").shape == (side, side)
    assert set(maps.timesteps.values()) == {float(t) for t in pipe.scheduler.timesteps}


@pytest.mark.parametrize("name", SD_FOLDERS)
def test_recording_counts_every_loop_iteration(recorded, name):
    """A step is one iteration of the pipeline's loop: PNDM repeats a timestep (2 steps ->
    timesteps 501, 1, 1), and the repeat is a step of its own (issue 13, item 2)."""
    pipe, maps = recorded(name)
    assert len(maps.steps) == len(pipe.scheduler.timesteps)


# --- full-size layer tables on the meta device ----------------------------------------------


@pytest.mark.parametrize(("name", "count"), [("sd15", 16), ("sd21-base", 16), ("sd21", 16)])
def test_full_size_sd_tables(name, count):
    layers = unet_layers(empty_unet(name))
    assert len(layers) == count
    side = {"sd21": 96}.get(name, 64)  # 768 px / 8 for SD 2.1, else 512 px / 8
    assert [layer.resolution[0] for layer in layers] == [
        side, side, side // 2, side // 2, side // 4, side // 4, side // 8,
        *[side // 4] * 3, *[side // 2] * 3, *[side] * 3,
    ]  # fmt: skip
    heads = (
        [8] * 16 if name == "sd15" else [5, 5, 10, 10, 20, 20, 20, 20, 20, 20, 10, 10, 10, 5, 5, 5]
    )
    assert [layer.heads for layer in layers] == heads


def test_full_size_sdxl_table_has_70_blocks():
    layers = unet_layers(empty_unet("sdxl-base"))
    assert len(layers) == 70
    places = [layer.place for layer in layers]
    assert places == ["down"] * 24 + ["mid"] * 10 + ["up"] * 36
    sides = [layer.resolution[0] for layer in layers]  # 1024 px: 128x128 latents
    assert sides == [64] * 4 + [32] * 20 + [32] * 10 + [32] * 30 + [64] * 6
    assert [layer.heads for layer in layers] == [10] * 4 + [20] * 60 + [10] * 6
    assert layers[0].name == "down_blocks.1.attentions.0.transformer_blocks.0"
    assert layers[69].name == "up_blocks.1.attentions.2.transformer_blocks.1"
    assert {layer.cross_dim for layer in layers} == {2048}
    # the replica's config folder in the repo is itself a weightless model folder
    assert layer_table(HERE / "sdxl-base") == layers


def test_layer_table_of_the_tiny_sdxl_replica_matches_the_full_size_one(replica):
    tiny, full = layer_table(replica("sdxl-base")), unet_layers(empty_unet("sdxl-base"))
    assert [(t.name, t.resolution, t.heads) for t in tiny] == [
        (f.name, f.resolution, f.heads) for f in full
    ]
